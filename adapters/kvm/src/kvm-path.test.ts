import { expect } from "chai";
import { thrown } from "@vgpu-iommu/core/testing";
import { IOMMU_READ, IOMMU_WRITE, type DirtyReport, type TranslationHandle, type Vgpu, type VgpuServices, type VgpuVendor } from "@vgpu-iommu/core";
import { createKvmStack, type KvmStack } from "./kvm-stack.js";

/** A vendor-like caller: maps guest frames for its parent GPU, and drops them when told to. */
class MapperVendor implements VgpuVendor {
  readonly capabilities = { onePerVm: true, migration: false, ownRequesterId: false };
  readonly vgpus: MapperVgpu[] = [];
  listTypes() {
    return [{ name: "mapper", description: "maps frames for its parent", resources: {} }];
  }
  availableInstances(): number {
    return 8;
  }
  create(type: string, name: string, services: VgpuServices): MapperVgpu {
    const v = new MapperVgpu(name, type, services);
    this.vgpus.push(v);
    return v;
  }
  destroy(): void {}
}

class MapperVgpu implements Vgpu {
  readonly handles: { first: number; npages: number; handle: TranslationHandle; dma: bigint[] }[] = [];
  readonly unmapCalls: [bigint, bigint][] = [];
  constructor(
    readonly name: string,
    readonly type: string,
    readonly services: VgpuServices,
  ) {}
  map(first: number, npages: number): bigint[] {
    const t = this.services.translate({ start: first, npages }, { prot: IOMMU_READ | IOMMU_WRITE, device: this.services.parentDevice });
    const dma = [...t.dmaAddrs!];
    this.handles.push({ first, npages, handle: t.handle, dma });
    return dma;
  }
  async open(): Promise<void> {}
  async close(): Promise<void> {
    for (const h of this.handles.splice(0)) this.services.release(h.handle);
  }
  read(): Uint8Array {
    return new Uint8Array(0);
  }
  write(): void {}
  async reset(): Promise<void> {}
  dmaUnmap(iova: bigint, length: bigint): void {
    this.unmapCalls.push([iova, length]);
    const first = Number(iova >> 12n);
    const end = first + Number(length >> 12n);
    for (let i = this.handles.length - 1; i >= 0; i--) {
      const h = this.handles[i]!;
      if (h.first < end && first < h.first + h.npages) {
        this.services.release(h.handle);
        this.handles.splice(i, 1);
      }
    }
  }
  onGuestWrite(): void {}
  onMemslotRemoved(): void {}
  queryPlane() {
    return undefined;
  }
  getDmabuf(): void {}
  releaseDmabuf(): void {}
}

describe("KVM path: listener, vendor mapping for its parent, balloon, invalidation", () => {
  let stack: KvmStack;
  beforeEach(() => {
    stack = createKvmStack({ host: { ramBytes: 4n << 30n, seed: 11 } });
  });

  it("releases exactly the translations of the ballooned block, and everything at shutdown", async () => {
    const { host, parent, platform } = stack;
    const vm = await platform.createVm({ name: "vm0", ramBytes: 64n << 20n, memlockBytes: 1n << 30n, balloon: { bytes: 8n << 20n, blockBytes: 2n << 20n } });
    const vendor = new MapperVendor();
    const vgpu = (await vm.addVgpu(vendor, "mapper", "vgpu0")) as MapperVgpu;
    // The listener mapped each RAM section (and each balloon block) at iova = GPA.
    const iommu = host.backends[0]!;
    const mappings = [...iommu.dmas.values()].map((d) => [d.iovaPage, d.npages]);
    const base = Number(vm.balloonBase! >> 12n);
    expect(mappings).to.deep.equal([
      [0, 16384],
      [0xfffc0, 64],
      [base, 512],
      [base + 512, 512],
      [base + 1024, 512],
      [base + 1536, 512],
    ]);
    expect(host.phys.totalPins).to.equal(0);
    // A vendor-like caller maps frames of low RAM and of balloon blocks 0 and 1 for its parent GPU.
    const low = vgpu.map(0x100, 4);
    const inBlock0 = vgpu.map(base + 10, 2);
    const inBlock1 = vgpu.map(base + 600, 1);
    // dma-iommu, 39-bit PCI device: below 4 GiB first, top-down, size-aligned; merged into one segment per call.
    expect(low).to.deep.equal([0xffffc000n, 0xffffd000n, 0xffffe000n, 0xfffff000n]);
    expect(inBlock0).to.deep.equal([0xffffa000n, 0xffffb000n]);
    expect(inBlock1).to.deep.equal([0xffff9000n]);
    expect(vm.vmm.mm.lockedVm).to.equal(7);
    expect(host.phys.totalPins).to.equal(7);
    expect(parent.liveMappings).to.equal(3);
    // The guest balloons block 0 out: UNMAP_DMA of its mapping, dma_unmap with the whole mapping, release.
    expect(await vm.balloonOut(0, 1)).to.equal(2n << 20n);
    expect(vgpu.unmapCalls).to.deep.equal([[vm.balloonBase!, 2n << 20n]]);
    expect(vgpu.handles.map((h) => h.first)).to.deep.equal([0x100, base + 600]);
    expect(vm.vmm.mm.lockedVm).to.equal(5);
    expect(host.phys.totalPins).to.equal(5);
    expect(parent.liveMappings).to.equal(2);
    expect(vgpu.services.checkIsolation([...low, ...inBlock0])).to.deep.equal([
      { addr: 0xffffa000n, kind: "unmapped" },
      { addr: 0xffffb000n, kind: "unmapped" },
    ]);
    host.assertInvariants();
    await vm.shutdown();
    expect(host.phys.totalPins).to.equal(0);
    expect(parent.liveMappings).to.equal(0);
    expect(host.phys.framesInUse).to.equal(0);
    expect(host.kernel.warnings).to.deep.equal([]);
  });

  it("rejects bad translate input with the documented errno and changes nothing", async () => {
    const { host, parent, platform } = stack;
    const vm = await platform.createVm({ name: "vm1", ramBytes: 64n << 20n });
    const vendor = new MapperVendor();
    const vgpu = (await vm.addVgpu(vendor, "mapper", "vgpu1")) as MapperVgpu;
    const s = vgpu.services;
    const held = s.translate({ start: 0x10, npages: 2 }, { prot: IOMMU_READ, device: s.parentDevice });
    const before = { pins: host.phys.totalPins, locked: vm.vmm.mm.lockedVm, mappings: parent.liveMappings, live: vm.translate.liveCount() };
    const failure = (fn: () => unknown): [string, number] => {
      const e = thrown(fn);
      return [e.code, e.errno];
    };
    const rw = IOMMU_READ | IOMMU_WRITE;
    // The PCI hole (3-4 GiB) is in no memslot and no VFIO mapping.
    expect(failure(() => s.translate({ start: 0xd0000, npages: 1 }, { prot: rw, device: s.parentDevice }))).to.deep.equal(["EINVAL", 22]);
    // The BIOS ROM is mapped READ only: a writable translation is beyond the mapping's prot.
    expect(failure(() => s.translate({ start: 0xfffc0, npages: 1 }, { prot: rw, device: s.parentDevice }))).to.deep.equal(["EPERM", 1]);
    expect(failure(() => s.translate({ start: 0x100, npages: 513 }, { prot: rw }))).to.deep.equal(["E2BIG", 7]);
    expect(failure(() => s.translate({ start: 0x100, npages: 1 }, { prot: rw, device: { name: "0000:42:00.0" } }))).to.deep.equal(["ENODEV", 19]);
    expect(failure(() => s.release({ id: 987654 }))).to.deep.equal(["EINVAL", 22]);
    expect({ pins: host.phys.totalPins, locked: vm.vmm.mm.lockedVm, mappings: parent.liveMappings, live: vm.translate.liveCount() }).to.deep.equal(before);
    s.release(held.handle);
    expect(failure(() => s.release(held.handle))).to.deep.equal(["EINVAL", 22]);
    await vm.shutdown();
    expect(host.phys.totalPins).to.equal(0);
    expect(host.kernel.warnings).to.deep.equal([]);
  });

  it("maps a single frame with dma_map_page and a list with dma_map_sg, and unmaps each the way it was mapped", async () => {
    const { host, parent, platform } = stack;
    const vm = await platform.createVm({ name: "vm2", ramBytes: 64n << 20n });
    const vgpu = (await vm.addVgpu(new MapperVendor(), "mapper", "vgpu2")) as MapperVgpu;
    const s = vgpu.services;
    const one = s.translate({ start: 0x300, npages: 1 }, { prot: IOMMU_READ | IOMMU_WRITE, device: s.parentDevice });
    const list = s.translate([0x400, 0x401], { prot: IOMMU_READ, device: s.parentDevice });
    expect({ singles: parent.singles.count, lists: parent.liveScatterlists }).to.deep.equal({ singles: 1, lists: 1 });
    expect([...one.dmaAddrs!]).to.deep.equal([0xfffff000n]);
    expect(one.segments).to.deep.equal({ count: 1, addr: BigUint64Array.of(0xfffff000n), length: Float64Array.of(4096) });
    // Two granules, size-aligned: the pair at 0xffffe holds the single page, so 0xffffc.
    expect([...list.dmaAddrs!]).to.deep.equal([0xffffc000n, 0xffffd000n]);
    expect(parent.iommu!.domain.iovaToPfn(0xfffff)).to.equal(one.pfns[0]);
    s.release(one.handle);
    expect({ singles: parent.singles.count, lists: parent.liveScatterlists }).to.deep.equal({ singles: 0, lists: 1 });
    s.release(list.handle);
    expect({ singles: parent.singles.count, lists: parent.liveScatterlists, mapped: parent.iommu!.domain.mappedPages }).to.deep.equal({ singles: 0, lists: 0, mapped: 0 });
    await vm.shutdown();
    expect(host.phys.totalPins).to.equal(0);
    expect(host.kernel.warnings).to.deep.equal([]);
  });

  it("the VM's dirty log is type1's bitmap on its container, read per mapped run: pins in every pass, a dma_rw write once", async () => {
    const vm = await stack.platform.createVm({ name: "vm2", ramBytes: 64n << 20n, balloon: { bytes: 8n << 20n, blockBytes: 2n << 20n } });
    const log = vm.dirtyLog!;
    // No vGPU yet, so no container to log in.
    expect([await log.start(), await log.read()]).to.deep.equal([-19, -19]);
    const vgpu = (await vm.addVgpu(new MapperVendor(), "mapper", "vgpu2")) as MapperVgpu;
    const base = Number(vm.balloonBase! >> 12n);
    vgpu.map(0x100, 4);
    expect(await log.start()).to.equal(0);
    vgpu.map(base + 600, 1);
    vgpu.services.dmaRw(0x200n << 12n, new Uint8Array(8), true);
    const dirty = (reports: readonly DirtyReport[] | number) =>
      typeof reports === "number" ? reports : reports.map((r) => [r.firstGfn, r.npages, [...Array(r.npages).keys()].filter((i) => (r.bitmap[i >> 3]! >> (i & 7)) & 1).map((i) => r.firstGfn + i)]);
    // Low RAM, the BIOS ROM, and the four balloon blocks as one run of whole mappings.
    expect(dirty(await log.read())).to.deep.equal([
      [0, 0x4000, [0x100, 0x101, 0x102, 0x103, 0x200]],
      [0xfffc0, 0x40, []],
      [base, 0x800, [base + 600]],
    ]);
    expect(dirty(await log.read())).to.deep.equal([
      [0, 0x4000, [0x100, 0x101, 0x102, 0x103]],
      [0xfffc0, 0x40, []],
      [base, 0x800, [base + 600]],
    ]);
    // Block 1 goes: its mapping (and the pin in it) with it; the run splits around the hole.
    expect(await vm.balloonOut(1, 1)).to.equal(2n << 20n);
    expect(dirty(await log.read())).to.deep.equal([
      [0, 0x4000, [0x100, 0x101, 0x102, 0x103]],
      [0xfffc0, 0x40, []],
      [base, 0x200, []],
      [base + 0x400, 0x400, []],
    ]);
    expect(await log.stop()).to.equal(0);
    expect(await log.read()).to.equal(-22);
    await vm.shutdown();
    expect(stack.host.phys.totalPins).to.equal(0);
    expect(stack.host.kernel.warnings).to.deep.equal([]);
  });

  it("maps for the parent in each DMA mode: merged in dma-iommu, one segment per frame in intel-2016 and direct", async () => {
    const segments: Record<string, number> = {};
    for (const dmaMode of ["dma-iommu", "intel-2016", "direct"] as const) {
      const s2 = createKvmStack({ host: { ramBytes: 2n << 30n, seed: 3 }, dmaMode });
      const vm = await s2.platform.createVm({ name: "m", ramBytes: 64n << 20n });
      const vgpu = (await vm.addVgpu(new MapperVendor(), "mapper", "v")) as MapperVgpu;
      const t = vgpu.services.translate({ start: 0x200, npages: 32 }, { prot: IOMMU_READ, device: vgpu.services.parentDevice });
      segments[dmaMode] = t.segments!.count;
      if (dmaMode === "direct") expect([...t.dmaAddrs!]).to.deep.equal([...t.pfns].map((p) => BigInt(p) << 12n));
      else expect(t.dmaAddrs![1]! - t.dmaAddrs![0]!).to.equal(4096n);
      vgpu.services.release(t.handle);
      await vm.shutdown();
      expect(s2.parent.liveMappings).to.equal(0);
      expect(s2.host.phys.totalPins).to.equal(0);
    }
    expect(segments).to.deep.equal({ "dma-iommu": 2, "intel-2016": 32, direct: 32 });
    expect(createKvmStack({ dmaMode: "intel-2016" }).adapter.capabilities().mergesSegments).to.equal(false);
  });
});
