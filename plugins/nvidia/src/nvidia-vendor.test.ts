import { expect } from "chai";
import { container } from "tsyringe";
import { IVgpuVendor, KernelError, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, composeStack } from "@vgpu-iommu/core";
import { IScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { nvidiaPlugin, plugin, vfPlugin } from "./index.js";
import { NvidiaVendor } from "./nvidia-vendor.js";
import { NV_ADA_48G } from "./gpu-profile.js";
import { openBench, scrambled } from "./testing/harness.js";
import { FakeGuest, rejection } from "@vgpu-iommu/core/testing";
import type { NvidiaVgpu } from "./nvidia-vgpu.js";
import type { ScriptedManager } from "./manager.js";

const GiB = 1 << 30;

describe("nvidia vendor: types and lifecycle", () => {
  it("lists the GPU's types with what one instance takes", () => {
    const v = new NvidiaVendor();
    const types = v.listTypes();
    expect(types.map((t) => t.name)).to.deep.equal(["NV-1Q", "NV-2Q", "NV-4Q", "NV-8Q", "NV-12Q", "NV-24Q", "NV-48Q"]);
    expect(types[5]!.resources).to.deep.equal({ channels: 512, maxInstance: 2, fbBytes: 24 * GiB, fbSegments: 384 });
    expect(new NvidiaVendor({ mode: "vf" }).listTypes()[0]!.resources).to.deep.include({ vfs: 1, channels: 32, fbSegments: 16 });
    expect((() => {
      try {
        v.availableInstances("NV-3Q");
      } catch (e) {
        return (e as KernelError).reason;
      }
      return "";
    })()).to.equal("unknown-vgpu-type");
  });

  it("counts available instances down as vGPUs are created, and back up as they are destroyed", async () => {
    const b = await openBench({ type: "NV-12Q", count: 3 });
    expect(b.vendor.availableInstances("NV-12Q")).to.equal(1);
    expect(b.vendor.availableInstances("NV-24Q")).to.equal(0); // homogeneous
    expect(b.vgpus.map((v) => [v.allocation.chidStart, v.allocation.fbOffset / GiB])).to.deep.equal([
      [8, 0],
      [264, 12],
      [520, 24],
    ]);
    await b.teardown();
    expect(b.vendor.availableInstances("NV-12Q")).to.equal(4);
    expect(b.vendor.resources.counters.scrubbedBytes).to.equal(36 * GiB);
  });

  it("refuses to destroy an open vGPU (-EPERM) and one whose plugin does not exit (-EBUSY)", async () => {
    const b = await openBench();
    const [v] = b.vgpus;
    const e = await rejection(() => b.vendor.destroy(v!));
    expect([e.code, e.errno, e.reason]).to.deep.equal(["EPERM", 1, "vgpu-open"]);
    await v!.close();
    b.manager.exits = false;
    expect((await rejection(() => b.vendor.destroy(v!))).code).to.equal("EBUSY");
    b.manager.exits = true;
    const destroyed: unknown[] = [];
    b.vendor.on("destroyed", (d) => destroyed.push(d));
    b.vendor.destroy(v!);
    expect(destroyed).to.deep.equal([{ vgpu: "vgpu0", type: "NV-2Q", scrubbedBytes: 2 * GiB }]);
    expect((await rejection(() => b.vendor.destroy(v!))).reason).to.equal("unknown-vgpu");
    b.vgpus.length = 0;
  });

  it("fails open with -ETIMEDOUT when the plugin does not start the vGPU, -EIO when it fails; counts opens", async () => {
    const guest = new FakeGuest({ guestPages: 1024 });
    const vendor = new NvidiaVendor();
    const v = vendor.create("NV-1Q", "v", guest.servicesFor("v")) as NvidiaVgpu;
    const manager = vendor.manager as ScriptedManager;
    manager.answer("VM_START", "timeout");
    expect((await rejection(() => v.open())).code).to.equal("ETIMEDOUT");
    manager.answer("VM_START", "error");
    expect((await rejection(() => v.open())).code).to.equal("EIO");
    manager.answer("VM_START", "ok");
    await v.open();
    await v.open();
    expect(manager.posted.VM_START).to.equal(3);
    v.translateGfns([1], "GET_HOST_PFN");
    await v.close(); // usage 2 -> 1: nothing swept
    expect([v.isOpen, v.pins, manager.posted.VM_SHUTDOWN]).to.deep.equal([true, 1, 0]);
    await v.close();
    expect([v.isOpen, v.pins, manager.posted.VM_SHUTDOWN, guest.totalPins]).to.deep.equal([false, 0, 1, 0]);
    vendor.destroy(v);
  });

  it("emulates config space and forwards aligned 4-byte BAR0 accesses to the plugin", async () => {
    const b = await openBench();
    const [v] = b.vgpus;
    const id = new DataView(v!.read(VFIO_PCI_CONFIG_REGION_INDEX, 0n, 4).buffer);
    expect([id.getUint16(0, true), id.getUint16(2, true)]).to.deep.equal([0x10de, 0x2232]);
    v!.write(VFIO_PCI_BAR0_REGION_INDEX, 0x100n, Uint8Array.of(0x78, 0x56, 0x34, 0x12));
    expect(new DataView(v!.read(VFIO_PCI_BAR0_REGION_INDEX, 0x100n, 4).buffer).getUint32(0, true)).to.equal(0x12345678);
    expect(b.manager.posted.REGISTER_ACCESS).to.equal(2);
    expect((await rejection(() => v!.read(VFIO_PCI_BAR0_REGION_INDEX, 0x102n, 4))).reason).to.equal("bar0-access-size");
    b.manager.answer("REGISTER_ACCESS", "timeout");
    expect((await rejection(() => v!.read(VFIO_PCI_BAR0_REGION_INDEX, 0x100n, 4))).code).to.equal("ETIMEDOUT");
    expect(v!.queryPlane("primary")).to.equal(undefined);
    expect((await rejection(() => v!.getDmabuf(1))).reason).to.equal("dmabuf-plane-unsupported");
    await b.teardown();
  });
});

describe("nvidia vendor: VF mode (own requester ID)", () => {
  it("never pins: GET_IOVA answers the guest frame (IOVA = GPA), GET_HOST_PFN is -EOPNOTSUPP", async () => {
    const b = await openBench({ vendor: { mode: "vf" }, type: "NV-24Q", count: 2 });
    const [v, w] = b.vgpus;
    const [s] = b.services;
    expect(b.vendor.capabilities).to.deep.equal({ onePerVm: false, migration: true, ownRequesterId: true });
    expect([v!.allocation.gfid, w!.allocation.gfid]).to.deep.equal([1, 2]);
    expect([...v!.translateGfns(scrambled(100, 512), "GET_IOVA")]).to.deep.equal([...scrambled(100, 512)]);
    const e = await rejection(() => v!.translateGfns([1], "GET_HOST_PFN"));
    expect([e.code, e.errno]).to.deep.equal(["EOPNOTSUPP", 95]);
    v!.dmaUnmap(0n, 1n << 30n);
    await v!.reset("flr");
    expect(v!.dirtyPages!(0, 1024).bitmap.every((x) => x === 0)).to.equal(true);
    expect(Object.values(s!.counters).every((n) => n === 0), JSON.stringify(s!.counters)).to.equal(true);
    expect([v!.pins, v!.identityTranslations, v!.vfFlrs, b.guest.totalPins]).to.deep.equal([0, 1, 1, 0]);
    expect(b.vendor.resources.counters).to.deep.include({ vfsUsed: 2, fbSegmentsUsed: 768, chidsUsed: 1024 });
    await b.teardown();
    expect(b.vendor.resources.counters).to.deep.include({ vfsUsed: 0, fbSegmentsUsed: 0, chidsUsed: 0, scrubbedBytes: 48 * GiB });
  });

  it("fails creation with -ENOSPC when the VFs are exhausted, leaving nothing allocated", async () => {
    const vendor = new NvidiaVendor({ mode: "vf", profile: { ...NV_ADA_48G, totalVfs: 1 } });
    const guest = new FakeGuest({ guestPages: 16 });
    vendor.create("NV-1Q", "a", guest.servicesFor("a"));
    const e = await rejection(() => vendor.create("NV-1Q", "b", guest.servicesFor("b")));
    expect([e.code, e.reason]).to.deep.equal(["ENOSPC", "register-failed"]);
    expect(vendor.resources.counters).to.deep.include({ vfsUsed: 1, chidsUsed: 32, fbSegmentsUsed: 16 });
    expect(vendor.vgpus.map((v) => v.name)).to.deep.equal(["a"]);
  });
});

describe("nvidia plugin manifest", () => {
  it("provides IVgpuVendor through composeStack, a fresh GPU per stack", () => {
    expect([plugin.id, plugin.kind, plugin.requires.length]).to.deep.equal(["@vgpu-iommu/plugin-nvidia", "vendor", 0]);
    expect(plugin.provides).to.deep.equal([IVgpuVendor, IScenarioProvider]);
    const a = composeStack([plugin], container.createChildContainer()).resolve(IVgpuVendor);
    const b = composeStack([plugin], container.createChildContainer()).resolve(IVgpuVendor);
    expect(a).to.be.instanceOf(NvidiaVendor);
    expect(a).not.to.equal(b);
    expect(a.capabilities.ownRequesterId).to.equal(false);
    expect(composeStack([vfPlugin], container.createChildContainer()).resolve(IVgpuVendor).capabilities.ownRequesterId).to.equal(true);
    expect(vfPlugin.capabilities).to.deep.include({ mode: "vf", pinModes: [] });
    expect(nvidiaPlugin({ profile: { ...NV_ADA_48G, eccEnabled: true } }).capabilities).to.deep.include({ mode: "mdev", migration: true });
  });
});
