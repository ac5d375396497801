/**
 * End to end through core's TranslateApi, in three Xen configurations, with
 * the same workload, so the differences an integrator sees are exact numbers:
 * A. PV Dom0, non-strict, no PV-IOMMU (XenGT identity): dma = MFN << 12, no
 *    hypercall to map or unmap, no flush;
 * B. PV Dom0 with the XenServer PV-IOMMU: dma = (248 GiB + MFN << 12), foreign
 *    BFNs mapped 128 ops a hypercall with one flush each, per-op statuses;
 * C. PVH Dom0 with the 2024 PV-IOMMU: DFNs the core chooses top-down
 *    (size-aligned) in the device's context, map_pages of at most 256 pages
 *    with a flush per call.
 * None merges segments: 300 frames are 300 segments everywhere.
 */
import { expect } from "chai";
import { container } from "tsyringe";
import { DeviceAddressSpaces, IHypervisorAdapter, IOMMU_READ, IOMMU_WRITE, TranslateApi, type DeviceHandle, type Translation } from "@vgpu-iommu/core";
import { IOMMU_OP_readable, IOMMUOP_map_pages, IOMMUOP_unmap_pages } from "./pv-iommu-2024.js";
import { XenAdapter, type XenAdapterOptions } from "./xen-adapter.js";
import { caught, GPU, GPU2, MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv, type XenEnvOptions } from "./xen-env.test.util.js";

const RW = IOMMU_READ | IOMMU_WRITE;
const OFFSET_BYTES = 248n << 30n;
const vgpu = { name: "vgpu0" };

interface Stack {
  readonly env: XenEnv;
  readonly adapter: XenAdapter;
  readonly api: TranslateApi;
  readonly spaces: DeviceAddressSpaces;
  readonly gpu: DeviceHandle;
}

function stack(envOpts: XenEnvOptions, opts: XenAdapterOptions = {}): Stack {
  const env = xenEnv({ ...envOpts, dom0: { memoryBytes: 32n * MiB, ...envOpts.dom0 } });
  const adapter = new XenAdapter(env.xen, { swiotlbBytes: 4 << 20, ...opts });
  const spaces = new DeviceAddressSpaces();
  const vm = container.createChildContainer();
  vm.register(IHypervisorAdapter, { useValue: adapter });
  vm.register(DeviceAddressSpaces, { useValue: spaces });
  const api = vm.resolve(TranslateApi);
  api.attach(adapter.attachVgpu(vgpu, env.guest.domid), vgpu);
  const gpu = adapter.registerDevice({ name: "0000:01:00.0", sbdf: GPU });
  return { env, adapter, api, spaces, gpu };
}

function finish(s: Stack): void {
  expect(s.api.liveCount()).to.equal(0);
  expect(s.spaces.placedRanges(s.gpu)).to.deep.equal([]);
  s.api.dispose();
  expect(s.adapter.listenerCount).to.equal(0);
  s.adapter.dispose();
  expect(leaksAfterShutdown(s.env)).to.deep.equal(NO_XEN_LEAKS);
}

/** Hypercall entries and flushes made by `fn`. */
function cost(s: Stack, fn: () => void): { hypercalls: number; iommuOps: number; flushes: number } {
  const h = s.env.xen.hypercalls();
  const i = s.env.xen.hypercalls("iommu_op");
  const f = s.env.xen.dom0Flushes;
  fn();
  return { hypercalls: s.env.xen.hypercalls() - h, iommuOps: s.env.xen.hypercalls("iommu_op") - i, flushes: s.env.xen.dom0Flushes - f };
}

/** The workload: T1 = 300 frames RW, T2 = 3 frames R sharing two with T1, a balloon-out inside T1, then release T2. */
function workload(s: Stack): Record<string, unknown> {
  let t1!: Translation;
  let t2!: Translation;
  const c1 = cost(s, () => (t1 = s.api.mapForDevice(vgpu, { start: 0x100, npages: 300 }, RW, s.gpu)));
  const refsAfterT1 = s.env.host.phys.totalPins;
  const c2 = cost(s, () => (t2 = s.api.mapForDevice(vgpu, [0x100, 0x101, 0x3000], IOMMU_READ, s.gpu)));
  const refsAfterT2 = s.env.host.phys.totalPins;
  for (let i = 0; i < 300; i++) expect(s.adapter.deviceReaches(s.gpu, t1.dmaAddrs![i]!, true)).to.equal(t1.pfns[i]);
  expect(s.api.checkIsolation(vgpu, s.gpu, t1.dmaAddrs!)).to.deep.equal([]);
  const c3 = cost(s, () => s.env.guest.decreaseReservation(0x180, 1));
  expect(s.api.liveCount(vgpu)).to.equal(1);
  expect(() => s.api.release(t1.handle)).to.throw().with.property("reason", "translate-unknown-handle");
  const c4 = cost(s, () => s.api.release(t2.handle));
  return {
    segments: t1.segments!.count,
    firstDma: t1.dmaAddrs![0]!,
    firstPfnAddr: BigInt(t1.pfns[0]!) << 12n,
    contiguous: t1.dmaAddrs![299]! - t1.dmaAddrs![0]! === 299n * 4096n,
    t1: c1,
    t2: c2,
    balloonOut: c3,
    releaseT2: c4,
    refsAfterT1,
    refsAfterT2,
    refsAtEnd: s.env.host.phys.totalPins,
  };
}

describe("end to end through core's TranslateApi", () => {
  it("A. PV Dom0, non-strict, no PV-IOMMU: identity MFN addresses, no unmap work", () => {
    const s = stack({}, { mechanism: "identity-mfn" });
    const w = workload(s);
    expect(w).to.deep.equal({
      segments: 300,
      firstDma: w.firstPfnAddr,
      firstPfnAddr: w.firstPfnAddr,
      contiguous: false,
      t1: { hypercalls: 19, iommuOps: 0, flushes: 0 },
      t2: { hypercalls: 1, iommuOps: 0, flushes: 0 },
      balloonOut: { hypercalls: 0, iommuOps: 0, flushes: 0 },
      releaseT2: { hypercalls: 0, iommuOps: 0, flushes: 0 },
      refsAfterT1: 300,
      refsAfterT2: 301,
      refsAtEnd: 0,
    });
    expect([s.adapter.identity!.maps, s.adapter.identity!.unmaps]).to.deep.equal([303, 303]);
    expect(s.adapter.stats).to.deep.equal({ maps: 2, unmaps: 2, bounced: 0, opFailures: 0, e2bigRetries: 0, deferredGrants: 0 });
    finish(s);
  });

  it("B. PV Dom0 with the XenServer PV-IOMMU: 248 GiB + MFN, per-op statuses, one flush per 128-op batch", () => {
    const s = stack({ xen: { pvIommu: "xenserver" } });
    expect(s.adapter.xenserver!.bootBatches).to.equal(144);
    expect([s.env.xen.hypercalls("iommu_op"), s.env.xen.dom0Flushes]).to.deep.equal([145, 144]);
    const w = workload(s);
    expect(w).to.deep.equal({
      segments: 300,
      firstDma: OFFSET_BYTES + (w.firstPfnAddr as bigint),
      firstPfnAddr: w.firstPfnAddr,
      contiguous: false,
      t1: { hypercalls: 19 + 3, iommuOps: 3, flushes: 3 },
      t2: { hypercalls: 1 + 1, iommuOps: 1, flushes: 1 },
      balloonOut: { hypercalls: 0, iommuOps: 0, flushes: 0 },
      releaseT2: { hypercalls: 0, iommuOps: 0, flushes: 0 },
      refsAfterT1: 300,
      refsAfterT2: 301,
      refsAtEnd: 0,
    });
    expect(s.adapter.xenserver!.alreadyMapped).to.equal(2);

    // A failed op inside a batch: the hypercall returns 0, the op's status is -EIO, the translation fails whole.
    s.env.host.faults.failNth(40, ["iommu_map"]);
    const e = caught(() => s.api.mapForDevice(vgpu, { start: 0x1000, npages: 100 }, RW, s.gpu));
    expect([e.code, e.reason]).to.deep.equal(["EIO", "foreign-bfn-map-failed"]);
    expect(e.fields).to.deep.include({ done: 99, index: 39, cause: { api: "pv-iommu", status: -5, name: "-EIO" } });
    expect(s.env.host.phys.totalPins).to.equal(0);
    expect(s.api.liveCount()).to.equal(0);

    // A device whose mask stops below the offset region: every frame bounces through Dom0's low pool.
    const narrow = s.adapter.registerDevice({ name: "0000:02:00.0", sbdf: GPU2, dmaMaskBits: 36 });
    const t = s.api.mapForDevice(vgpu, { start: 0x2000, npages: 4 }, RW, narrow);
    expect(t.segments!.count).to.equal(4);
    expect(s.adapter.stats.bounced).to.equal(4);
    for (const a of t.dmaAddrs!) expect(a < 1n << 36n).to.equal(true);
    s.api.release(t.handle);
    expect(s.adapter.swiotlb!.pool.used).to.equal(0);
    finish(s);
  });

  it("C. PVH Dom0 with the 2024 PV-IOMMU: DFNs chosen top-down, map_pages of at most 256 pages, a flush per call", () => {
    const s = stack({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024" } });
    expect(s.env.xen.hypercalls("iommu_op")).to.equal(3);
    const w = workload(s);
    expect(w).to.deep.equal({
      segments: 300,
      firstDma: BigInt(2 ** 27 - 512) << 12n,
      firstPfnAddr: w.firstPfnAddr,
      contiguous: true,
      t1: { hypercalls: 300 + 2, iommuOps: 2, flushes: 2 },
      t2: { hypercalls: 1 + 2, iommuOps: 2, flushes: 2 },
      balloonOut: { hypercalls: 2 + 298, iommuOps: 2, flushes: 2 },
      releaseT2: { hypercalls: 1 + 3, iommuOps: 1, flushes: 1 },
      refsAfterT1: 600,
      refsAfterT2: 604,
      refsAtEnd: 0,
    });
    finish(s);
  });
});

describe("end to end: the core's DFN meets one Xen already has (2024 PV-IOMMU)", () => {
  it("Xen's -EADDRINUSE reaches the vendor with the native status and the pages done; the core frees its placement at once", () => {
    const s = stack({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024" } });
    const top = 2 ** 27;
    // Something else in Dom0 maps its own frame at the device's top DFN, behind the core's back.
    const pv = s.env.xen.pvIommu2024!;
    const ctx_no = s.adapter.deviceContext(s.gpu);
    expect(pv.iommuOp(s.env.dom0, { subop_id: IOMMUOP_map_pages, ctx_no, flags: IOMMU_OP_readable, map_pages: { gfn: 0x10, dfn: top - 1, nr_pages: 1, mapped: 0 } })).to.equal(0);
    const e = caught(() => s.api.mapForDevice(vgpu, { start: 0x100, npages: 2 }, RW, s.gpu));
    expect([e.code, e.errno, e.reason]).to.deep.equal(["EADDRINUSE", 98, "map-pages-failed"]);
    expect(e.fields).to.deep.include({ done: 1, index: 1, cause: { api: "pv-iommu", status: -98, name: "-EADDRINUSE" } });
    expect(s.spaces.placedRanges(s.gpu)).to.deep.equal([]);
    expect([s.api.liveCount(), s.env.host.phys.totalPins, s.adapter.liveMappings(s.gpu)]).to.deep.equal([0, 1, 0]);
    expect(s.adapter.deviceReaches(s.gpu, BigInt(top - 2) << 12n)).to.equal(-1);
    expect(pv.iommuOp(s.env.dom0, { subop_id: IOMMUOP_unmap_pages, ctx_no, flags: 0, unmap_pages: { dfn: top - 1, nr_pages: 1, unmapped: 0 } })).to.equal(0);
    const t = s.api.mapForDevice(vgpu, { start: 0x100, npages: 2 }, RW, s.gpu);
    expect(t.dmaAddrs![0]).to.equal(BigInt(top - 2) << 12n);
    expect(s.spaces.placedRanges(s.gpu)).to.deep.equal([{ pfnLo: top - 2, pfnHi: top - 1 }]);
    s.api.release(t.handle);
    finish(s);
  });
});
