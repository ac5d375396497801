/**
 * The Xen platform through the platform port, with a probe vendor that uses
 * its services directly: pin rules (the KVM platform's), dmaRw without pins,
 * write tracking by the ioreq server, balloon-out reaching the core and the
 * vGPU (and ending write protection in the block, visibly), one-per-VM, and
 * teardown with nothing left, in the three stack configurations.
 */
import { expect } from "chai";
import { container } from "tsyringe";
import { createHost, IHost, IHypervisorAdapter, IPluginSettings, IVgpuPlatform, IOMMU_READ, IOMMU_WRITE, isKernelError, type KernelError, type PlatformVm, type ResetKind, type Translation, type Vgpu, type VgpuServices, type VgpuVendor } from "@vgpu-iommu/core";
import { createXenStack, parsePciAddress, XEN_STACK_CONFIGS, type XenStack } from "./xen-stack.js";
import { P2mType } from "./p2m.js";
import { plugin } from "./plugin.js";
import type { XenPlatform, XenPlatformVm } from "./xen-platform.js";
import type { XenWriteTrackerEvents } from "./write-tracker.js";

const MiB = 1n << 20n;
const RW = IOMMU_READ | IOMMU_WRITE;

/** A vGPU that calls its services as the test says and keeps what it holds. */
class ProbeVgpu implements Vgpu {
  readonly writes: [bigint, number[]][] = [];
  readonly unmaps: [bigint, bigint][] = [];
  /** onMemslotRemoved calls: [firstGfn, npages]. */
  readonly removed: [number, number][] = [];
  readonly translations: { t: Translation; gfns: number[] }[] = [];
  /** Contiguous pins held: [gfn, npage]. */
  readonly pinned: [number, number][] = [];
  revokedReleases = 0;
  throwOnWrite = false;
  /** dmaUnmap records the call and keeps everything (a vendor that ignores it). */
  keepOnUnmap = false;
  constructor(
    readonly name: string,
    readonly type: string,
    readonly services: VgpuServices,
  ) {}
  async open(): Promise<void> {}
  async close(): Promise<void> {
    this.#drop(() => true);
  }
  read(): Uint8Array {
    return new Uint8Array(0);
  }
  write(): void {}
  async reset(_kind: ResetKind): Promise<void> {}
  dmaUnmap(iova: bigint, length: bigint): void {
    this.unmaps.push([iova, length]);
    if (this.keepOnUnmap) return;
    const first = Number(iova >> 12n);
    const end = first + Number(length >> 12n);
    this.#drop((g) => g >= first && g < end);
  }
  onGuestWrite(gpa: bigint, data: Uint8Array): void {
    if (this.throwOnWrite) throw new Error("bad shadow entry");
    this.writes.push([gpa, [...data]]);
  }
  onMemslotRemoved(firstGfn: number, npages: number): void {
    this.removed.push([firstGfn, npages]);
  }
  queryPlane(): undefined {
    return undefined;
  }
  getDmabuf(): void {}
  releaseDmabuf(): void {}
  map(gfns: number[]): Translation {
    const t = this.services.translate(gfns, { prot: RW, device: this.services.parentDevice });
    this.translations.push({ t, gfns });
    return t;
  }
  pin(gfn: number, n: number): Uint32Array {
    const out = new Uint32Array(n);
    this.services.pinPages(gfn, n, RW, out);
    this.pinned.push([gfn, n]);
    return out;
  }
  #drop(inRange: (gfn: number) => boolean): void {
    for (let i = this.pinned.length - 1; i >= 0; i--) {
      const [gfn, n] = this.pinned[i]!;
      if (!inRange(gfn)) continue;
      this.services.unpinPages(gfn, n);
      this.pinned.splice(i, 1);
    }
    for (let i = this.translations.length - 1; i >= 0; i--) {
      const { t, gfns } = this.translations[i]!;
      if (!gfns.some(inRange)) continue;
      try {
        this.services.release(t.handle);
      } catch (e) {
        if (!isKernelError(e) || e.reason !== "translate-unknown-handle") throw e;
        this.revokedReleases++;
      }
      this.translations.splice(i, 1);
    }
  }
}

class ProbeVendor implements VgpuVendor {
  readonly vgpus: ProbeVgpu[] = [];
  destroyed = 0;
  constructor(readonly capabilities = { onePerVm: false, migration: false, ownRequesterId: false }) {}
  listTypes() {
    return [{ name: "probe", description: "probe", resources: {} }];
  }
  availableInstances(): number {
    return 8;
  }
  create(type: string, name: string, services: VgpuServices): Vgpu {
    const v = new ProbeVgpu(name, type, services);
    this.vgpus.push(v);
    return v;
  }
  destroy(): void {
    this.destroyed++;
  }
}

function caught(fn: () => unknown): KernelError {
  try {
    fn();
  } catch (e) {
    if (isKernelError(e)) return e;
    throw e;
  }
  throw new Error("expected a KernelError");
}

async function world(config: (typeof XEN_STACK_CONFIGS)[number]): Promise<{ s: XenStack; vendor: ProbeVendor; vm: PlatformVm; v: ProbeVgpu }> {
  const s = createXenStack({ config, host: { ramBytes: 1n << 30n, seed: 3 }, dom0MemoryBytes: 32n * MiB, swiotlbBytes: 4 << 20 });
  const vendor = new ProbeVendor();
  const vm = await s.platform.createVm({ name: "vm0", ramBytes: 64n * MiB, balloon: { bytes: 8n * MiB, blockBytes: 2n * MiB } });
  const v = (await vm.addVgpu(vendor, "probe", "probe0")) as ProbeVgpu;
  return { s, vendor, vm, v };
}

async function expectClean(s: XenStack, vm: PlatformVm): Promise<void> {
  await vm.shutdown();
  expect([s.host.phys.totalPins, s.liveMappings(), vm.translate.liveCount(), s.platform.stats.pinsSweptAtShutdown]).to.deep.equal([0, 0, 0, 0]);
  expect(s.host.kernel.warnings).to.deep.equal([]);
  s.adapter.dispose();
  s.xen.shutdown();
  expect(s.host.phys.framesInUse).to.equal(0);
}

describe("XenPlatform", () => {
  for (const config of XEN_STACK_CONFIGS) {
    describe(`(${config})`, () => {
      it("pins like the KVM platform: <= 512 a call (-E2BIG), all or nothing, one reference per frame however often pinned", async () => {
        const { s, vm, v } = await world(config);
        const svc = v.services;
        expect(caught(() => svc.pinPages(0x100, 513, RW, new Uint32Array(513))).code).to.equal("E2BIG");
        expect(caught(() => svc.pinPagesArray([1, 2], 513, RW, new Uint32Array(513))).code).to.equal("E2BIG");
        const out = v.pin(0x100, 4);
        expect(svc.pinPagesArray([0x100, 0x100, 0x200], 3, RW, new Uint32Array(3))).to.equal(3);
        expect(s.host.phys.totalPins).to.equal(5);
        expect(s.adapter.pinTable(1)!.count[0x100]).to.equal(3);
        // A frame in the MMIO hole (no P2M entry): -EINVAL, and the frames before it are not left pinned.
        const hole = caught(() => svc.pinPagesArray([0x300, 0x301, 0xfffc0], 3, RW, new Uint32Array(3)));
        expect([hole.code, hole.fields.index]).to.deep.equal(["EINVAL", 2]);
        expect(s.host.phys.totalPins).to.equal(5);
        expect(svc.unpinPagesArray([0x100, 0x100, 0x200], 3)).to.equal(3);
        expect(out[0]).to.equal(s.adapter.pinTable(1)!.mfn[0x100]);
        await expectClean(s, vm);
        expect(s.platform.stats.pinsSweptAtShutdown).to.equal(0);
      });

      it("dmaRw copies through the P2M and leaves no pin; outside guest RAM it is -EINVAL", async () => {
        const { s, vm, v } = await world(config);
        v.services.dmaRw(0x5ffcn, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), true);
        const back = new Uint8Array(8);
        expect(vm.guestRead(0x5ffcn, back)).to.equal(0);
        expect([...back]).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8]);
        expect(s.host.phys.totalPins).to.equal(0);
        expect(caught(() => v.services.dmaRw(0xfffc0000n, new Uint8Array(4), false)).code).to.equal("EINVAL");
        await expectClean(s, vm);
      });

      it("protect: guest writes reach onGuestWrite after they landed; reads do not trap; a throwing vGPU crashes the guest", async () => {
        const { s, vm, v } = await world(config);
        const guest = s.xen.domain(1)!;
        expect(v.services.protect(0x20)).to.equal(0);
        expect(v.services.protect(0x20)).to.equal(0);
        expect(v.services.protect(0x80000)).to.equal(-22);
        expect(guest.p2m!.type(0x20)).to.equal(P2mType.ioreq_server);
        expect(vm.guestWrite(0x20008n, Uint8Array.of(9, 8))).to.equal(0);
        expect(vm.guestWrite(0x21000n, Uint8Array.of(7))).to.equal(0);
        expect(v.writes).to.deep.equal([[0x20008n, [9, 8]]]);
        expect(v.services.unprotect(0x20)).to.equal(0);
        expect(guest.p2m!.type(0x20)).to.equal(P2mType.ram_rw);
        expect(vm.guestWrite(0x20008n, Uint8Array.of(1))).to.equal(0);
        expect(v.writes).to.have.length(1);
        v.services.protect(0x30);
        v.throwOnWrite = true;
        expect(vm.guestWrite(0x30000n, Uint8Array.of(1))).to.equal(-5);
        expect(guest.state).to.equal("crashed");
        expect(v.services.injectIrq(1)).to.equal(false);
        expect(caught(() => v.pin(0x40, 1)).code).to.equal("ESRCH");
        await expectClean(s, vm);
      });

      it("balloonOut: the vGPU's dmaUnmap runs once per block, then the P2M change revokes what it kept; balloonIn repopulates", async () => {
        const { s, vm, v } = await world(config);
        const base = Number(vm.balloonBase! >> 12n);
        expect(vm.balloonBase).to.equal(1n << 32n);
        v.map([base, base + 1]);
        v.map([0x100]);
        v.pin(base + 2, 2);
        // The 2024 PV-IOMMU's context takes its own reference on each frame it maps.
        const iommuRefs = config === "pvh-2024" ? 1 : 0;
        expect([s.host.phys.totalPins, s.adapter.pinTable(1)!.pinnedFrames, s.liveMappings(), vm.translate.liveCount()]).to.deep.equal([5 + 3 * iommuRefs, 5, 2, 2]);
        expect(await vm.balloonOut(0, 1)).to.equal(2n * MiB);
        expect(v.unmaps).to.deep.equal([[vm.balloonBase!, 2n * MiB]]);
        expect([s.host.phys.totalPins, s.liveMappings(), vm.translate.liveCount()]).to.deep.equal([1 + iommuRefs, 1, 1]);
        expect(s.platform.stats).to.deep.equal({ dmaUnmapCalls: 1, pinsLeftAfterDmaUnmap: 0, revokedByP2mChange: 0, pinsSweptAtShutdown: 0 });
        // A vGPU that ignores dmaUnmap: no retry; the P2M change makes the core revoke its translation.
        v.keepOnUnmap = true;
        v.map([base + 512, base + 513]);
        expect(await vm.balloonOut(1, 1)).to.equal(2n * MiB);
        expect(s.platform.stats).to.deep.equal({ dmaUnmapCalls: 2, pinsLeftAfterDmaUnmap: 2, revokedByP2mChange: 1, pinsSweptAtShutdown: 0 });
        expect([s.host.phys.totalPins, s.liveMappings(), vm.translate.liveCount()]).to.deep.equal([1 + iommuRefs, 1, 1]);
        v.keepOnUnmap = false;
        v.dmaUnmap(vm.balloonBase! + 2n * MiB, 2n * MiB);
        expect(v.revokedReleases).to.equal(1);
        expect(await vm.balloonOut(0, 1)).to.equal(-22);
        expect(caught(() => v.pin(base, 1)).code).to.equal("EINVAL");
        expect(await vm.balloonIn(0, 1)).to.equal(0);
        v.pin(base, 1);
        expect(s.host.phys.totalPins).to.equal(2 + iommuRefs);
        await expectClean(s, vm);
      });

      it("balloonOut ends the write protection of the block's frames: each vGPU that protected one is told once, protectionDropped names them", async () => {
        const { s, vm, v, vendor } = await world(config);
        const w = (await vm.addVgpu(vendor, "probe", "probe1")) as ProbeVgpu;
        const tracker = (vm as XenPlatformVm).tracker;
        const guest = s.xen.domain(1)!;
        const events: Parameters<XenWriteTrackerEvents["protectionDropped"]>[0][] = [];
        const sub = tracker.on("protectionDropped", (e) => events.push(e));
        const base = Number(vm.balloonBase! >> 12n);
        for (const gfn of [base + 1, base + 3, base + 600, 0x20]) expect(v.services.protect(gfn)).to.equal(0);
        for (const gfn of [base + 3, base + 5]) expect(w.services.protect(gfn)).to.equal(0);
        expect(tracker.trackedCount).to.equal(5);

        expect(await vm.balloonOut(0, 1)).to.equal(2n * MiB);
        expect(events).to.deep.equal([{ domid: 1, firstGfn: base, npages: 512, reason: "decrease_reservation", frames: [base + 1, base + 3, base + 5], vgpus: ["probe0", "probe1"] }]);
        expect([v.removed, w.removed]).to.deep.equal([[[base, 512]], [[base, 512]]]);
        expect([tracker.trackedCount, tracker.protectedBy("probe0"), tracker.protectedBy("probe1")]).to.deep.equal([2, 2, 0]);
        // Outside the block nothing changed: a guest write to 0x20 is still the vGPU's.
        expect(vm.guestWrite(0x20000n, Uint8Array.of(4))).to.equal(0);
        expect(v.writes).to.deep.equal([[0x20000n, [4]]]);
        // The frames come back plain: no type, no write reaches a vGPU; unprotecting a dropped frame is a no-op.
        expect(await vm.balloonIn(0, 1)).to.equal(0);
        expect(guest.p2m!.type(base + 1)).to.equal(P2mType.ram_rw);
        expect(vm.guestWrite(BigInt(base + 3) << 12n, Uint8Array.of(5))).to.equal(0);
        expect([v.writes.length, w.writes.length]).to.deep.equal([1, 0]);
        expect(v.services.unprotect(base + 1)).to.equal(0);

        // Only the vGPU that protected a frame of the block is told.
        expect(await vm.balloonOut(1, 1)).to.equal(2n * MiB);
        expect(events.slice(1)).to.deep.equal([{ domid: 1, firstGfn: base + 512, npages: 512, reason: "decrease_reservation", frames: [base + 600], vgpus: ["probe0"] }]);
        expect([v.removed.length, w.removed.length]).to.deep.equal([2, 1]);
        // A block with no protected frame: nobody is told, no event.
        expect(await vm.balloonOut(2, 1)).to.equal(2n * MiB);
        expect([events.length, v.removed.length, w.removed.length]).to.deep.equal([2, 2, 1]);
        sub.dispose();
        await expectClean(s, vm);
        expect(tracker.listenerCount()).to.equal(0);
      });

      it("one vGPU per VM for a onePerVm vendor (-EEXIST); removeVgpu closes and destroys; shutdown sweeps leaked pins", async () => {
        const { s, vm, v, vendor } = await world(config);
        const gvtLike = new ProbeVendor({ onePerVm: true, migration: false, ownRequesterId: false });
        let refused: unknown;
        await vm.addVgpu(gvtLike, "probe", "second").catch((e: unknown) => (refused = e));
        expect(refused).to.have.property("code", "EEXIST");
        const other = (await vm.addVgpu(vendor, "probe", "probe1")) as ProbeVgpu;
        other.map([0x400]);
        await vm.removeVgpu(other);
        expect([vendor.destroyed, s.host.phys.totalPins]).to.deep.equal([1, 0]);
        v.services.pinPages(0x500, 3, RW, new Uint32Array(3));
        v.pinned.length = 0; // the vGPU forgets them: a leak the device model's exit sweeps
        await vm.shutdown();
        expect(s.platform.stats.pinsSweptAtShutdown).to.equal(3);
        expect(s.host.phys.totalPins).to.equal(0);
        s.adapter.dispose();
        s.xen.shutdown();
        expect(s.host.phys.framesInUse).to.equal(0);
      });
    });
  }

  it("refuses an unknown configuration, parses PCI addresses, and registers as a plugin resolving the platform on the stack's host", () => {
    expect(parsePciAddress("0000:00:02.0")).to.deep.equal({ seg: 0, bus: 0, devfn: 16 });
    expect(caught(() => parsePciAddress("00:02.0")).reason).to.equal("bad-pci-address");
    expect(plugin.id).to.equal("@vgpu-iommu/adapter-xen");
    expect(plugin.provides.map((t) => t.description)).to.deep.equal(["IVgpuPlatform", "IHypervisorAdapter", "IScenarioProvider"]);
    expect(plugin.requires.map((t) => t.description)).to.deep.equal(["IHost", "IPluginSettings"]);
    const c = container.createChildContainer();
    c.register(IHost, { useValue: createHost({ ramBytes: 1n << 30n, seed: 1 }) });
    c.register(IPluginSettings, { useValue: { "@vgpu-iommu/adapter-xen": { config: "pv-xenserver", swiotlbBytes: 4 << 20, parentName: "0000:00:02.0" } } });
    plugin.register(c);
    const platform = c.resolve(IVgpuPlatform) as XenPlatform;
    expect([platform.adapter.mechanism, platform.parentDevice.name, platform.host === c.resolve(IHost)]).to.deep.equal(["pviommu-xenserver", "0000:00:02.0", true]);
    expect(c.resolve(IHypervisorAdapter)).to.equal(platform.adapter);
    expect(c.resolve(IVgpuPlatform)).to.equal(platform);
    expect(caught(() => createXenStack({ config: "pv-nothing" as "pv-identity" })).reason).to.equal("xen-config-unknown");
  });
});
