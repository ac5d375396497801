/**
 * One workload, side by side, on KVM (the host DMA API in dma-iommu mode,
 * lazy flush) and on Xen in its three configurations, with the numbers that
 * differ by design. The workload goes through one vGPU's VgpuServices, as a
 * vendor plugin's would:
 *
 *   map:     translate 300 contiguous guest frames RW for the parent GPU
 *   release: release that translation
 *   bounce:  translate 8 frames for a parent whose DMA mask is 36 bits
 *   fault:   translate 300 frames with the host's first IOMMU map step failing
 *   balloon: 4 frames of balloon block 0 translated, the block ballooned out
 *
 * and reports, per platform: the address model (first device address, whether
 * the 300 addresses are contiguous), segments (merging), host references per
 * frame, locked_vm, IOTLB flushes and hypercalls of map and release, pages
 * bounced, how a single failed IOMMU op surfaces, and what the balloon-out
 * does. Every platform ends with nothing held.
 */
import { expect } from "chai";
import { IOMMU_READ, IOMMU_WRITE, isKernelError, type PlatformVm, type Translation, type Vgpu, type VgpuServices, type VgpuVendor } from "@vgpu-iommu/core";
import type { DmaIommuDomain } from "@vgpu-iommu/core";
import { PLATFORMS, type PlatformFactory, type PlatformId, type PlatformStack } from "../support/platforms.js";

const MiB = 1n << 20n;
const RW = IOMMU_READ | IOMMU_WRITE;
const OFFSET_248_GIB = 248n << 30n;

/** A vGPU that does nothing on its own: the test drives its services; dmaUnmap and close release what it holds. */
class ProbeVgpu implements Vgpu {
  readonly type = "probe";
  readonly held: { readonly t: Translation; readonly gfns: readonly number[] }[] = [];
  dmaUnmaps = 0;
  constructor(
    readonly name: string,
    readonly services: VgpuServices,
  ) {}
  async open(): Promise<void> {}
  async close(): Promise<void> {
    for (const h of this.held.splice(0)) this.services.release(h.t.handle);
  }
  read(): Uint8Array {
    return new Uint8Array(0);
  }
  write(): void {}
  async reset(): Promise<void> {}
  dmaUnmap(iova: bigint, length: bigint): void {
    this.dmaUnmaps++;
    const first = Number(iova >> 12n);
    const end = first + Number(length >> 12n);
    for (let i = this.held.length - 1; i >= 0; i--) {
      if (!this.held[i]!.gfns.some((g) => g >= first && g < end)) continue;
      this.services.release(this.held[i]!.t.handle);
      this.held.splice(i, 1);
    }
  }
  onGuestWrite(): void {}
  onMemslotRemoved(): void {}
  queryPlane(): undefined {
    return undefined;
  }
  getDmabuf(): void {}
  releaseDmabuf(): void {}
  map(frames: number[] | { start: number; npages: number }): Translation {
    const t = this.services.translate(frames, { prot: RW, device: this.services.parentDevice });
    this.held.push({ t, gfns: Array.isArray(frames) ? frames : Array.from({ length: frames.npages }, (_, i) => frames.start + i) });
    return t;
  }
  /** Releases the translation it made last. */
  releaseLast(): void {
    this.services.release(this.held.pop()!.t.handle);
  }
}

const probeVendor: VgpuVendor = {
  capabilities: { onePerVm: false, migration: false, ownRequesterId: false },
  listTypes: () => [{ name: "probe", description: "probe", resources: {} }],
  availableInstances: () => 1,
  create: (_type, name, services) => new ProbeVgpu(name, services),
  destroy: () => undefined,
};

interface World {
  readonly s: PlatformStack;
  readonly vm: PlatformVm;
  readonly v: ProbeVgpu;
}

async function world(p: PlatformFactory, dmaMaskBits?: number): Promise<World> {
  const s = p.create({ host: { ramBytes: 1n << 30n, seed: 3 }, ...(dmaMaskBits === undefined ? {} : { kvm: { dmaMaskBits }, xen: { dmaMaskBits } }) });
  const vm = await s.platform.createVm({ name: "vm0", ramBytes: 64n * MiB, balloon: { bytes: 8n * MiB, blockBytes: 2n * MiB } });
  const v = (await vm.addVgpu(probeVendor, "probe", "probe0")) as ProbeVgpu;
  return { s, vm, v };
}

/** IOTLB flushes of the parent's DMA domain (KVM) or of Dom0's IOMMU contexts (Xen). */
const flushes = (s: PlatformStack): number => s.xen?.xen.dom0Flushes ?? (s.kvm!.parent.iommu as DmaIommuDomain).iotlbFlushes;
const hypercalls = (s: PlatformStack): number => s.xen?.xen.hypercalls() ?? 0;
const bounced = (s: PlatformStack): number => s.xen?.adapter.stats.bounced ?? 0;

function cost(s: PlatformStack, fn: () => void): { flushes: number; hypercalls: number } {
  const f = flushes(s);
  const h = hypercalls(s);
  fn();
  return { flushes: flushes(s) - f, hypercalls: hypercalls(s) - h };
}

async function finish(w: World): Promise<void> {
  await w.vm.shutdown();
  expect([w.s.host.phys.totalPins, w.s.parentMappings(), w.vm.translate.liveCount(), w.s.sweptAtShutdown(), w.s.host.kernel.warnings.length]).to.deep.equal([0, 0, 0, 0, 0]);
}

interface Row {
  addressModel: string;
  firstAddress: string;
  contiguous: boolean;
  segments: number;
  hostRefsPerFrame: number;
  lockedVm: number;
  map: { flushes: number; hypercalls: number };
  release: { flushes: number; hypercalls: number };
  bouncedOf8At36Bits: number;
  failedIommuOp: string;
  balloonOut: { dmaUnmaps: number; pinsLeft: number; bytes: string };
}

async function measure(p: PlatformFactory): Promise<Row> {
  const w = await world(p);
  const { s, v, vm } = w;
  let t!: Translation;
  const map = cost(s, () => (t = v.map({ start: 0x100, npages: 300 })));
  const first = t.dmaAddrs![0]!;
  const mfn = BigInt(t.pfns[0]!) << 12n;
  const addressModel =
    first === mfn ? "MFN << 12" : first === OFFSET_248_GIB + mfn ? "248 GiB + MFN << 12" : s.xen !== undefined ? "DFN, allocated top-down below 2^39" : "IOVA, allocated top-down below 4 GiB";
  const row: Partial<Row> = {
    addressModel,
    firstAddress: `0x${(first === mfn || first === OFFSET_248_GIB + mfn ? first - mfn : first).toString(16)}${first === mfn || first === OFFSET_248_GIB + mfn ? " + MFN << 12" : ""}`,
    contiguous: t.dmaAddrs![299]! - first === 299n * 4096n,
    segments: t.segments!.count,
    hostRefsPerFrame: s.host.phys.totalPins / 300,
    lockedVm: vm.vmm.mm.lockedVm,
    map,
  };
  row.release = cost(s, () => v.releaseLast());
  // A single failed IOMMU map step while mapping 300 frames.
  s.host.faults.failNth(1, ["iommu_map"]);
  try {
    v.map({ start: 0x1000, npages: 300 });
    row.failedIommuOp = "no IOMMU op: mapped";
    v.releaseLast();
  } catch (e) {
    if (!isKernelError(e)) throw e;
    row.failedIommuOp = `${e.code} ${e.reason}${e.fields.done === undefined ? "" : ` (done ${String(e.fields.done)})`}`;
  }
  s.host.faults.disarm();
  expect([s.pinnedFrames(), s.parentMappings()]).to.deep.equal([0, 0]);
  // Balloon-out of a block the vGPU maps 4 frames of: the vGPU releases them in dmaUnmap.
  const base = Number(vm.balloonBase! >> 12n);
  v.map([base, base + 1, base + 2, base + 3]);
  const bytes = await vm.balloonOut(0, 1);
  row.balloonOut = { dmaUnmaps: v.dmaUnmaps, pinsLeft: s.pinnedFrames(), bytes: String(bytes) };
  await finish(w);
  // A parent whose DMA mask stops at 36 bits.
  const narrow = await world(p, 36);
  const t8 = narrow.v.map({ start: 0x200, npages: 8 });
  row.bouncedOf8At36Bits = bounced(narrow.s);
  for (const a of t8.dmaAddrs!) expect(a < 1n << 36n).to.equal(true);
  await finish(narrow);
  return row as Row;
}

const EXPECTED: Readonly<Record<PlatformId, Row>> = {
  // dma-iommu merges the 300 pages into segments of at most 64 KiB (the parent's max segment size), and defers
  // the unmap's IOTLB flush to its flush queue.
  kvm: {
    addressModel: "IOVA, allocated top-down below 4 GiB",
    firstAddress: "0xffe00000",
    contiguous: true,
    segments: 19,
    hostRefsPerFrame: 1,
    lockedVm: 300,
    map: { flushes: 0, hypercalls: 0 },
    release: { flushes: 0, hypercalls: 0 },
    bouncedOf8At36Bits: 0,
    failedIommuOp: "ENOMEM dma-mapping-error",
    balloonOut: { dmaUnmaps: 1, pinsLeft: 0, bytes: "2097152" },
  },
  "pv-identity": {
    addressModel: "MFN << 12",
    firstAddress: "0x0 + MFN << 12",
    contiguous: false,
    segments: 300,
    hostRefsPerFrame: 1,
    lockedVm: 0,
    map: { flushes: 0, hypercalls: 19 },
    release: { flushes: 0, hypercalls: 0 },
    bouncedOf8At36Bits: 0,
    failedIommuOp: "no IOMMU op: mapped",
    balloonOut: { dmaUnmaps: 1, pinsLeft: 0, bytes: "2097152" },
  },
  "pv-xenserver": {
    addressModel: "248 GiB + MFN << 12",
    firstAddress: "0x3e00000000 + MFN << 12",
    contiguous: false,
    segments: 300,
    hostRefsPerFrame: 1,
    lockedVm: 0,
    map: { flushes: 3, hypercalls: 19 + 3 },
    release: { flushes: 0, hypercalls: 0 },
    bouncedOf8At36Bits: 8,
    failedIommuOp: "EIO foreign-bfn-map-failed (done 299)",
    balloonOut: { dmaUnmaps: 1, pinsLeft: 0, bytes: "2097152" },
  },
  "pvh-2024": {
    addressModel: "DFN, allocated top-down below 2^39",
    firstAddress: "0x7fffe00000",
    contiguous: true,
    segments: 300,
    hostRefsPerFrame: 2,
    lockedVm: 0,
    map: { flushes: 2, hypercalls: 300 + 2 },
    release: { flushes: 2, hypercalls: 2 + 300 },
    bouncedOf8At36Bits: 0,
    failedIommuOp: "ENOMEM map-pages-failed (done 0)",
    balloonOut: { dmaUnmaps: 1, pinsLeft: 0, bytes: "2097152" },
  },
};

describe("the same workload on KVM and on Xen, side by side", () => {
  const rows: Partial<Record<PlatformId, Row>> = {};
  for (const p of PLATFORMS) {
    it(`${p.label}: ${EXPECTED[p.id].addressModel}, ${EXPECTED[p.id].segments} segment(s) for 300 frames`, async () => {
      rows[p.id] = await measure(p);
      expect(rows[p.id]).to.deep.equal(EXPECTED[p.id]);
    });
  }

  it("the table: what differs, by platform", () => {
    expect(rows).to.deep.equal(EXPECTED);
    const keys = Object.keys(EXPECTED.kvm) as (keyof Row)[];
    const differs = keys.filter((k) => new Set(PLATFORMS.map((p) => JSON.stringify(EXPECTED[p.id][k]))).size > 1);
    expect(differs).to.deep.equal(["addressModel", "firstAddress", "contiguous", "segments", "hostRefsPerFrame", "lockedVm", "map", "release", "bouncedOf8At36Bits", "failedIommuOp"]);
  });
});
