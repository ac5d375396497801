import { expect } from "chai";
import { container } from "tsyringe";
import { IVgpuVendor, KernelError, composeStack, loadPlugin } from "@vgpu-iommu/core";
import { IScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { FakeVgpuServices, thrown } from "@vgpu-iommu/core/testing";
import { GVT_TYPES, GvtVendor } from "./gvt-vendor.js";
import { plugin, gvtPlugin } from "./plugin.js";

const svc = (): FakeVgpuServices => new FakeVgpuServices({ guestPages: 0x1000 });

describe("gvt: vendor, types and resources", () => {
  it("lists the four GVTg_V5 types with their low GM, high GM and fences", () => {
    const v = new GvtVendor();
    expect(v.listTypes().map((t) => [t.name, t.resources["lowGmBytes"]! / 2 ** 20, t.resources["highGmBytes"]! / 2 ** 20, t.resources["fences"]])).to.deep.equal([
      ["GVTg_V5_8", 64, 384, 4],
      ["GVTg_V5_4", 128, 512, 4],
      ["GVTg_V5_2", 256, 1024, 4],
      ["GVTg_V5_1", 512, 2048, 4],
    ]);
    expect(v.capabilities).to.deep.equal({ onePerVm: true, migration: false, ownRequesterId: false });
  });

  it("availableInstances is the minimum over aperture, hidden GM and fences; create reserves, destroy frees", () => {
    const v = new GvtVendor();
    expect(GVT_TYPES.map((t) => v.availableInstances(t.name))).to.deep.equal([8, 4, 2, 1]);
    const a = v.create("GVTg_V5_2", "a", svc());
    // 256 of 512 MiB aperture, 1024 of 3072 MiB hidden, 4 of 32 fences gone.
    expect(GVT_TYPES.map((t) => v.availableInstances(t.name))).to.deep.equal([4, 2, 1, 0]);
    expect(thrown(() => v.create("GVTg_V5_1", "b", svc())).code).to.equal("ENOSPC");
    const b = v.create("GVTg_V5_4", "b", svc());
    expect(GVT_TYPES.map((t) => v.availableInstances(t.name))).to.deep.equal([2, 1, 0, 0]);
    expect(a.aperture.start + a.aperture.npages).to.equal(b.aperture.start, "first fit, after the host's 128 MiB");
    expect(a.aperture.start).to.equal((128 << 20) / 4096);
    v.destroy(a);
    expect(GVT_TYPES.map((t) => v.availableInstances(t.name))).to.deep.equal([6, 3, 1, 0]);
    v.destroy(b);
    expect(GVT_TYPES.map((t) => v.availableInstances(t.name))).to.deep.equal([8, 4, 2, 1]);
    expect(thrown(() => v.availableInstances("GVTg_V9_9")).code).to.equal("EINVAL");
  });

  it("at most 8 vGPUs per GPU, numbered 1..8", () => {
    const v = new GvtVendor({ apertureBytes: 1024 << 20, hostHiddenBytes: 0, fences: 64 });
    const made = Array.from({ length: 8 }, (_, i) => v.create("GVTg_V5_8", `g${i}`, svc()));
    expect(made.map((g) => g.id)).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(v.availableInstances("GVTg_V5_8")).to.equal(0);
    expect(thrown(() => v.create("GVTg_V5_8", "g8", svc())).code).to.equal("ENOSPC");
    v.destroy(made[3]!);
    expect(v.create("GVTg_V5_8", "again", svc()).id).to.equal(4);
  });

  it("destroying an open vGPU is refused with a WARN and -EBUSY", async () => {
    const v = new GvtVendor();
    const warned: string[] = [];
    v.on("warned", (e) => warned.push(e.site));
    const s = svc();
    const g = v.create("GVTg_V5_8", "busy", s);
    await g.open();
    expect(thrown(() => v.destroy(g)).code).to.equal("EBUSY");
    expect(v.warnings).to.equal(1);
    expect(warned).to.deep.equal(["intel_vgpu_remove"]);
    expect(v.vgpuCount).to.equal(1);
    let e: unknown;
    await g.open().catch((x: unknown) => (e = x));
    expect((e as KernelError).code).to.equal("EEXIST");
    await g.close();
    v.destroy(g);
    expect(v.vgpuCount).to.equal(0);
    expect(thrown(() => v.destroy(g)).code).to.equal("EINVAL");
  });

  it("vGPUs on one GPU get disjoint partitions; writes into another's slice are ignored", async () => {
    const v = new GvtVendor();
    const sa = new FakeVgpuServices({ guestPages: 0x1000, vm: "vmA", vgpu: "a" });
    const sb = new FakeVgpuServices({ guestPages: 0x1000, vm: "vmB", vgpu: "b", parent: sa.parent });
    const a = v.create("GVTg_V5_4", "a", sa);
    const b = v.create("GVTg_V5_4", "b", sb);
    await a.open();
    await b.open();
    const w = (g: typeof a, index: number, gfn: number): void => {
      const d = new Uint8Array(8);
      new DataView(d.buffer).setUint32(0, gfn * 4096 + 1, true);
      g.write(0, BigInt((8 << 20) + index * 8), d);
    };
    w(a, a.ggtt.apStart, 0x10);
    w(b, b.ggtt.apStart, 0x10);
    w(a, b.ggtt.apStart + 1, 0x11); // a writes into b's slice
    expect(a.ggtt.counters.ignored).to.equal(1);
    expect(sa.pinnedFrames).to.equal(1);
    expect(sb.pinnedFrames).to.equal(1);
    // One IOVA space on the parent: each vGPU's shadow holds only its own addresses.
    expect(a.checkIsolation()).to.deep.equal([]);
    expect(b.checkIsolation()).to.deep.equal([]);
    expect(a.ggtt.hostEntry(a.ggtt.apStart)).to.not.equal(b.ggtt.hostEntry(b.ggtt.apStart));
    await a.close();
    await b.close();
    expect(sa.leaks().pinRefs + sb.leaks().pinRefs).to.equal(0);
  });

  it("the plugin manifest provides IVgpuVendor; composeStack and loadPlugin resolve one GvtVendor", async () => {
    expect(plugin).to.include({ id: "@vgpu-iommu/plugin-gvt", kind: "vendor" });
    expect(plugin.provides).to.deep.equal([IVgpuVendor, IScenarioProvider]);
    expect(plugin.requires).to.deep.equal([]);
    const c = composeStack([plugin], container.createChildContainer());
    const vendor = c.resolve(IVgpuVendor);
    expect(vendor).to.be.instanceOf(GvtVendor);
    expect(c.resolve(IVgpuVendor)).to.equal(vendor);
    const loaded = await loadPlugin("@vgpu-iommu/plugin-gvt");
    expect(loaded.id).to.equal(plugin.id);
    const small = composeStack([gvtPlugin({ maxVgpus: 2 })], container.createChildContainer()).resolve(IVgpuVendor);
    expect(small.availableInstances("GVTg_V5_8")).to.equal(2);
  });
});
