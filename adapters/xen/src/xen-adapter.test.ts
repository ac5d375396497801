import { expect } from "chai";
import type { DeviceHandle, GuestInvalidation } from "@vgpu-iommu/core";
import { XenAdapter, type XenAdapterOptions, type XenMapping } from "./xen-adapter.js";
import { GNTMAP_device_map, GNTST, gnttabMapGrantRef, gnttabUnmapGrantRef, type GnttabMapGrantRef } from "./grant-table.js";
import { caught, GPU, GPU2, MiB, leaksAfterShutdown, xenEnv, type XenEnv, type XenEnvOptions } from "./xen-env.test.util.js";

const OFFSET = 248 * 262144;
const vgpu = { name: "vgpu0" };
/** The top of the 2024 PV-IOMMU's 39-bit DFN space, in pages. */
const TOP = 2 ** 27;
const WIDE = { start: 0n, last: (1n << 64n) - 1n };

describe("XenAdapter", () => {
  let env: XenEnv;
  let adapter: XenAdapter;
  let warnings: number;
  afterEach(() => {
    adapter.dispose();
    expect(leaksAfterShutdown(env)).to.deep.equal({ framesInUse: 0, pins: 0, warnings, crashed: false });
  });

  const make = (envOpts: XenEnvOptions = {}, opts: XenAdapterOptions = {}, bits = 64): DeviceHandle => {
    warnings = 0;
    env = xenEnv({ ...envOpts, dom0: { memoryBytes: 32n * MiB, ...envOpts.dom0 } });
    adapter = new XenAdapter(env.xen, { swiotlbBytes: 4 << 20, ...opts });
    expect(adapter.attachVgpu(vgpu, env.guest.domid)).to.equal("vm1");
    return adapter.registerDevice({ name: "gpu", sbdf: GPU, dmaMaskBits: bits });
  };

  /** Pins guest frames [first, first + n) for the vGPU and returns their MFNs. */
  const pin = (first: number, n: number): Uint32Array => {
    const out = new Uint32Array(n);
    adapter.guestPins(vgpu).pin(Array.from({ length: n }, (_, i) => first + i), n, true, out);
    return out;
  };
  const unpin = (first: number, n: number): void => adapter.guestPins(vgpu).unpin(Array.from({ length: n }, (_, i) => first + i), n);

  const base = { mergesSegments: false, maxSegmentSize: 4096, segmentBoundaryMask: 0xffff_ffffn, maxPinPerCall: 512, isolationPerVgpu: false, supportsWriteTrack: true };

  describe("capabilities and the choice of mechanism", () => {
    it("PV Dom0 without PV-IOMMU: swiotlb-xen, MFN addresses, no flushes", () => {
      make();
      expect(adapter.mechanism).to.equal("swiotlb-xen");
      expect(adapter.fallbackReason).to.equal(undefined);
      expect(adapter.capabilities()).to.deep.equal({ ...base, addressModel: "identity-mfn", coreChoosesIova: false, dmaMaskBits: 64, iovaAperture: WIDE, maxOpsPerBatch: 16, flushModel: "explicit" });
    });

    it("PV Dom0 with the XenServer PV-IOMMU: BFNs fixed by the layout (the core does not choose), up to the end of the offset region, 128 ops a batch", () => {
      const gpu = make({ xen: { pvIommu: "xenserver" } });
      expect(adapter.mechanism).to.equal("pviommu-xenserver");
      // 1 GiB of host RAM at 248 GiB: the layout ends at 249 GiB, 38 address bits.
      const caps = { ...base, addressModel: "pviommu-bfn", coreChoosesIova: false, dmaMaskBits: 38, iovaAperture: { start: 0n, last: (249n << 30n) - 1n }, maxOpsPerBatch: 128, flushModel: "end-of-batch" };
      expect(adapter.capabilities()).to.deep.equal(caps);
      expect(adapter.capabilities(gpu)).to.deep.equal(caps);
      const narrow = adapter.registerDevice({ name: "gpu2", sbdf: GPU2, dmaMaskBits: 36 });
      expect(adapter.capabilities(narrow)).to.deep.equal({ ...caps, dmaMaskBits: 36 });
    });

    it("PVH Dom0 with the 2024 PV-IOMMU: the core chooses DFNs in 39 bits, 256 pages a call, a flush per call, a context per device", () => {
      make({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024" } });
      expect(adapter.mechanism).to.equal("pviommu-2024");
      const caps = { ...base, addressModel: "pviommu-bfn", coreChoosesIova: true, dmaMaskBits: 39, iovaAperture: { start: 0n, last: (1n << 39n) - 1n }, maxOpsPerBatch: 256, flushModel: "per-call" };
      expect(adapter.capabilities()).to.deep.equal(caps);
      const gpu2 = adapter.registerDevice({ name: "gpu2", sbdf: GPU2, dmaMaskBits: 32 });
      expect(adapter.capabilities(gpu2)).to.deep.equal({ ...caps, dmaMaskBits: 32 });
      expect(adapter.deviceContext(gpu2)).to.equal(2);
      expect(env.xen.iommu.device(GPU)!.ctxNo).to.equal(1);
      const e = caught(() => adapter.capabilities({ name: "nope" }));
      expect([e.code, e.reason]).to.deep.equal(["ENODEV", "device-not-registered"]);
    });

    it("the XenGT identity shortcut on a non-strict PV Dom0", () => {
      make({}, { mechanism: "identity-mfn" });
      expect(adapter.mechanism).to.equal("identity-mfn");
      expect(adapter.capabilities().addressModel).to.equal("identity-mfn");
    });

    it("grant-dma: grant references as addresses", () => {
      make({}, { mechanism: "grant-dma" });
      expect(adapter.capabilities()).to.deep.equal({ ...base, addressModel: "grant-dma", coreChoosesIova: false, dmaMaskBits: 64, iovaAperture: WIDE, maxOpsPerBatch: 1, flushModel: "explicit" });
    });

    it("falls back as Linux does and says why", () => {
      make({ xen: { pvIommu: "xenserver", cpuVendor: "amd" } });
      expect([adapter.mechanism, adapter.fallbackReason]).to.deep.equal(["swiotlb-xen", "query_caps: no map capability"]);
      adapter.dispose();
      env.xen.shutdown();
      make({ xen: { pvIommu: "2024" } });
      expect([adapter.mechanism, adapter.fallbackReason]).to.deep.equal(["swiotlb-xen", "the 2024 PV-IOMMU maps frames of the caller's physmap only; a PV Dom0 cannot name foreign frames"]);
      adapter.dispose();
      env.xen.shutdown();
      make({ dom0: { kind: "pvh" }, xen: { pvIommu: "xenserver" } });
      expect([adapter.mechanism, adapter.fallbackReason]).to.deep.equal(["pvh-direct", "PV-IOMMU query_capabilities: -38"]);
      expect(adapter.capabilities().addressModel).to.equal("host-dma-api");
    });

    it("refuses the identity shortcut off a non-strict PV Dom0, and swiotlb-xen on PVH", () => {
      make();
      for (const [o, m, reason] of [
        [{ xen: { dom0Iommu: { strict: true } } }, "identity-mfn", "xengt-identity-needs-nonstrict-pv-dom0"],
        [{ dom0: { kind: "pvh" as const, memoryBytes: 32n * MiB } }, "identity-mfn", "xengt-identity-needs-nonstrict-pv-dom0"],
        [{ dom0: { kind: "pvh" as const, memoryBytes: 32n * MiB } }, "swiotlb-xen", "swiotlb-xen-needs-pv-dom0"],
      ] as const) {
        const other = xenEnv(o);
        const e = caught(() => new XenAdapter(other.xen, { mechanism: m }));
        expect([e.code, e.reason]).to.deep.equal(["EINVAL", reason]);
        other.xen.shutdown();
        expect(other.host.phys.framesInUse).to.equal(0);
      }
    });
  });

  describe("bad input", () => {
    it("answers with the shared vocabulary and maps nothing", () => {
      const gpu = make();
      const mfns = pin(0x10, 4);
      expect(caught(() => adapter.mapForDevice({ name: "nope" }, mfns, 4, true)).code).to.equal("ENODEV");
      expect(caught(() => adapter.mapForDevice(gpu, mfns, 0, true)).code).to.equal("EINVAL");
      expect(caught(() => adapter.mapForDevice(gpu, mfns, 5, true)).code).to.equal("EINVAL");
      const e = caught(() => adapter.mapForDevice(gpu, Uint32Array.of(mfns[0]!, env.xen.frames.ramFrames), 2, true));
      expect([e.code, e.reason, e.fields.index]).to.deep.equal(["EINVAL", "not-a-ram-frame", 1]);
      expect(caught(() => adapter.guestPins({ name: "stranger" })).code).to.equal("ESRCH");
      expect(caught(() => adapter.attachVgpu({}, 999)).code).to.equal("ESRCH");
      expect(caught(() => adapter.attachVgpu({}, 0)).code).to.equal("ESRCH");
      expect(caught(() => adapter.registerDevice({ name: "x", sbdf: GPU2, dmaMaskBits: 70 })).code).to.equal("EINVAL");
      expect(adapter.stats.maps).to.equal(0);
      unpin(0x10, 4);
    });

    it("keeps devices and the adapter while mappings live (EBUSY) and WARNs on a second unmap", () => {
      const gpu = make();
      const mfns = pin(0x10, 2);
      const m = adapter.mapForDevice(gpu, mfns, 2, false);
      expect(caught(() => adapter.unregisterDevice(gpu)).code).to.equal("EBUSY");
      expect(caught(() => adapter.dispose()).code).to.equal("EBUSY");
      adapter.unmapForDevice(m);
      adapter.unmapForDevice(m);
      expect(env.host.kernel.warnings.map((w) => w.site)).to.deep.equal(["xen_unmap"]);
      warnings = 1;
      unpin(0x10, 2);
    });

    it("2024: refuses frames not foreign-mapped into Dom0", () => {
      const gpu = make({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024" } });
      const e = caught(() => adapter.mapForDevice(gpu, Uint32Array.of(env.guest.p2m!.mfn(3)), 1, true, TOP - 1));
      expect([e.code, e.reason]).to.deep.equal(["EINVAL", "frame-not-foreign-mapped"]);
    });
  });

  describe("pviommu-2024", () => {
    it("maps at the DFN the core gives, runs of consecutive Dom0 GFNs, at most 256 pages a call, one flush per call", () => {
      const gpu = make({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024" } });
      const mfns = pin(0x100, 300);
      const calls = env.xen.hypercalls("iommu_op");
      const flushes = env.xen.dom0Flushes;
      const m = adapter.mapForDevice(gpu, mfns, 300, true, TOP - 512) as XenMapping;
      expect(env.xen.hypercalls("iommu_op") - calls).to.equal(2);
      expect(env.xen.dom0Flushes - flushes).to.equal(2);
      expect(m.extra.dfnBase).to.equal(TOP - 512);
      expect([m.count, m.nents]).to.deep.equal([300, 300]);
      for (const i of [0, 255, 256, 299]) {
        expect(m.segAddr[i]).to.equal(BigInt(TOP - 512 + i) << 12n);
        expect(adapter.deviceReaches(gpu, m.segAddr[i]!, true)).to.equal(mfns[i]);
      }
      expect(env.host.phys.totalPins).to.equal(600);
      adapter.unmapForDevice(m);
      expect(env.xen.hypercalls("iommu_op") - calls).to.equal(4);
      expect(env.xen.dom0Flushes - flushes).to.equal(4);
      expect(adapter.deviceReaches(gpu, m.segAddr[0]!)).to.equal(-1);
      expect(env.host.phys.totalPins).to.equal(300);
      unpin(0x100, 300);
    });

    it("refuses a DFN range beyond a 32-bit device's mask (EFAULT) or no DFN (EINVAL) before any hypercall, and maps read-only at the last pages it reaches", () => {
      const gpu = make({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024" } }, {}, 32);
      const mfns = pin(0x10, 3);
      const calls = env.xen.hypercalls("iommu_op");
      const e = caught(() => adapter.mapForDevice(gpu, mfns, 3, false, 2 ** 20 - 2));
      expect([e.code, e.errno, e.reason, e.fields]).to.deep.equal(["EFAULT", 14, "dfn-outside-aperture", { dfn: 2 ** 20 - 2, npages: 3, lastDfn: 2 ** 20 - 1 }]);
      expect(caught(() => adapter.mapForDevice(gpu, mfns, 3, false, -1)).reason).to.equal("dfn-outside-aperture");
      const none = caught(() => adapter.mapForDevice(gpu, mfns, 3, false));
      expect([none.code, none.reason]).to.deep.equal(["EINVAL", "dfn-required"]);
      expect(env.xen.hypercalls("iommu_op")).to.equal(calls);
      expect(adapter.stats.maps).to.equal(0);
      const m = adapter.mapForDevice(gpu, mfns, 3, false, 2 ** 20 - 3) as XenMapping;
      expect(adapter.deviceReaches(gpu, m.segAddr[2]!, false)).to.equal(mfns[2]);
      expect(adapter.deviceReaches(gpu, m.segAddr[2]!, true)).to.equal(-1);
      adapter.unmapForDevice(m);
      unpin(0x10, 3);
    });

    it("a DFN already in use: Xen's -EADDRINUSE as the cause, the pages mapped before it unmapped again", () => {
      const gpu = make({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024" } });
      const held = pin(0x10, 4);
      const first = adapter.mapForDevice(gpu, held, 4, true, TOP - 4);
      const mfns = pin(0x40, 8);
      const refs = env.host.phys.totalPins;
      const calls = env.xen.hypercalls("iommu_op");
      const e = caught(() => adapter.mapForDevice(gpu, mfns, 8, true, TOP - 8));
      expect([e.code, e.errno, e.reason]).to.deep.equal(["EADDRINUSE", 98, "map-pages-failed"]);
      expect(e.fields).to.deep.equal({ done: 4, index: 4, frame: mfns[4], cause: { api: "pv-iommu", status: -98, name: "-EADDRINUSE" } });
      // One map_pages (4 mapped, then the DFN in use), one unmap_pages of those 4.
      expect(env.xen.hypercalls("iommu_op") - calls).to.equal(2);
      expect(env.host.phys.totalPins).to.equal(refs);
      for (let i = 0; i < 4; i++) expect(adapter.deviceReaches(gpu, BigInt(TOP - 8 + i) << 12n)).to.equal(-1);
      expect(adapter.deviceReaches(gpu, BigInt(TOP - 4) << 12n)).to.equal(held[0]);
      expect(adapter.stats).to.deep.include({ maps: 1, opFailures: 1 });
      adapter.unmapForDevice(first);
      unpin(0x10, 4);
      unpin(0x40, 8);
    });

    it("needs one call per page when the Dom0 GFNs are not consecutive", () => {
      const gpu = make({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024" } });
      const a = pin(0x10, 4);
      const b = pin(0x80, 4);
      const mixed = Uint32Array.of(a[0]!, b[0]!, a[1]!, b[1]!, a[2]!, a[3]!);
      const calls = env.xen.hypercalls("iommu_op");
      const m = adapter.mapForDevice(gpu, mixed, 6, true, TOP - 8);
      expect(env.xen.hypercalls("iommu_op") - calls).to.equal(5);
      adapter.unmapForDevice(m);
      unpin(0x10, 4);
      unpin(0x80, 4);
    });

    it("halves the chunk on -E2BIG and retries, when Xen enforces less than it reports", () => {
      const gpu = make({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024", pvIommuMaxPages: 64 } });
      const mfns = pin(0x100, 300);
      const calls = env.xen.hypercalls("iommu_op");
      const m = adapter.mapForDevice(gpu, mfns, 300, true, TOP - 512);
      expect(adapter.stats.e2bigRetries).to.equal(2);
      expect(env.xen.hypercalls("iommu_op") - calls).to.equal(2 + 5);
      expect(adapter.capabilities().maxOpsPerBatch).to.equal(64);
      adapter.unmapForDevice(m);
      expect(env.xen.hypercalls("iommu_op") - calls).to.equal(2 + 5 + 5);
      unpin(0x100, 300);
    });

    it("rolls a failed map back and reports the native status and the pages done", () => {
      const gpu = make({ dom0: { kind: "pvh" }, xen: { pvIommu: "2024" } });
      const mfns = pin(0x100, 300);
      env.host.faults.failNth(270, ["iommu_map"]);
      const flushes = env.xen.dom0Flushes;
      const e = caught(() => adapter.mapForDevice(gpu, mfns, 300, true, TOP - 512));
      expect([e.code, e.errno, e.reason]).to.deep.equal(["ENOMEM", 12, "map-pages-failed"]);
      expect(e.fields).to.deep.equal({ done: 269, index: 269, frame: mfns[269], cause: { api: "pv-iommu", status: -12, name: "-ENOMEM" } });
      expect(env.xen.dom0Flushes - flushes).to.equal(2 + 2);
      for (const i of [0, 268, 299]) expect(adapter.deviceReaches(gpu, BigInt(TOP - 512 + i) << 12n)).to.equal(-1);
      expect(env.host.phys.totalPins).to.equal(300);
      expect(adapter.stats).to.deep.include({ maps: 0, opFailures: 1 });
      const m = adapter.mapForDevice(gpu, mfns, 300, true, TOP - 512) as XenMapping;
      expect(adapter.deviceReaches(gpu, m.segAddr[299]!, true)).to.equal(mfns[299]);
      adapter.unmapForDevice(m);
      unpin(0x100, 300);
    });
  });

  describe("pviommu-xenserver", () => {
    it("maps the frames' foreign BFNs in 128-op batches while the region is built, then needs no hypercall", () => {
      const gpu = make({ xen: { pvIommu: "xenserver" } });
      const mfns = pin(0, 200);
      const calls = env.xen.hypercalls("iommu_op");
      const flushes = env.xen.dom0Flushes;
      const m = adapter.mapForDevice(gpu, mfns, 200, true);
      expect([env.xen.hypercalls("iommu_op") - calls, env.xen.dom0Flushes - flushes]).to.deep.equal([2, 2]);
      for (const i of [0, 199]) {
        expect(m.segAddr[i]).to.equal(BigInt(OFFSET + mfns[i]!) << 12n);
        expect(adapter.deviceReaches(gpu, m.segAddr[i]!, true)).to.equal(mfns[i]);
      }
      adapter.unmapForDevice(m);
      expect(env.xen.hypercalls("iommu_op") - calls).to.equal(2);
      expect(adapter.xenserver!.runSetup()).to.equal(true);
      const after = env.xen.hypercalls("iommu_op");
      const m2 = adapter.mapForDevice(gpu, mfns, 200, true);
      expect(env.xen.hypercalls("iommu_op")).to.equal(after);
      adapter.unmapForDevice(m2);
      unpin(0, 200);
    });

    it("turns a failed op of a batch into EIO with the native status and the frames done", () => {
      const gpu = make({ xen: { pvIommu: "xenserver" } });
      const mfns = pin(0, 200);
      env.host.faults.failNth(150, ["iommu_map"]);
      const e = caught(() => adapter.mapForDevice(gpu, mfns, 200, true));
      expect([e.code, e.reason]).to.deep.equal(["EIO", "foreign-bfn-map-failed"]);
      expect(e.fields).to.deep.include({ done: 199, index: 149, frame: mfns[149], cause: { api: "pv-iommu", status: -5, name: "-EIO" } });
      expect(adapter.stats.opFailures).to.equal(1);
      const m = adapter.mapForDevice(gpu, mfns, 200, true);
      adapter.unmapForDevice(m);
      unpin(0, 200);
    });

    it("bounces frames whose foreign BFN is beyond the device's mask, copying the data both ways", () => {
      const gpu = make({ xen: { pvIommu: "xenserver" } }, {}, 36);
      const mfns = pin(0x20, 2);
      env.guest.writeGuest(0x20000n, Uint8Array.of(5, 6));
      const m = adapter.mapForDevice(gpu, mfns, 2, true) as XenMapping;
      expect(m.bounced).to.equal(2);
      expect(adapter.stats.bounced).to.equal(2);
      const addr = m.segAddr[0]!;
      expect(addr < 1n << 36n).to.equal(true);
      const frame = adapter.deviceReaches(gpu, addr, true);
      expect(frame).to.be.greaterThan(0);
      expect(frame).to.not.equal(mfns[0]);
      const seen = new Uint8Array(2);
      env.host.phys.read(frame, Number(addr & 0xfffn), seen);
      expect([...seen]).to.deep.equal([5, 6]);
      env.host.phys.write(frame, Number(addr & 0xfffn), Uint8Array.of(7, 8));
      adapter.unmapForDevice(m);
      const back = new Uint8Array(2);
      env.guest.readGuest(0x20000n, back);
      expect([...back]).to.deep.equal([7, 8]);
      expect(adapter.swiotlb!.pool.used).to.equal(0);
      unpin(0x20, 2);
    });
  });

  describe("swiotlb-xen and the identity shortcut", () => {
    it("gives MFN addresses and nothing to flush or unmap", () => {
      const gpu = make();
      const mfns = pin(0, 8);
      const m = adapter.mapForDevice(gpu, mfns, 8, true);
      expect([...m.segAddr]).to.deep.equal([...mfns].map((f) => BigInt(f) << 12n));
      expect(adapter.deviceReaches(gpu, m.segAddr[7]!, true)).to.equal(mfns[7]);
      adapter.unmapForDevice(m);
      expect([env.xen.hypercalls("iommu_op"), env.xen.dom0Flushes]).to.deep.equal([0, 0]);
      unpin(0, 8);
    });

    for (const era of ["2016", "current"] as const) {
      it(`fails a map when the bounce pool is full: EIO with the native map_sg result (${era})`, () => {
        const gpu = make({ xen: { era } }, { swiotlbBytes: 2 << 20 }, 26);
        const mfns = pin(0, 600);
        const e = caught(() => adapter.mapForDevice(gpu, mfns, 600, true));
        expect(env.host.kernel.messages.filter((msg) => msg.includes("swiotlb buffer is full")).length).to.equal(1);
        expect([e.code, e.reason]).to.deep.equal(["EIO", "dma-mapping-error"]);
        expect(e.fields.cause).to.deep.equal(era === "2016" ? { api: "swiotlb", status: 0, name: "0 (dma_map_sg failed)" } : { api: "swiotlb", status: -5, name: "-EIO" });
        expect(adapter.swiotlb!.pool.used).to.equal(0);
        unpin(0, 600);
      });
    }

    it("identity: MFN addresses, no hypercall, no unmap work", () => {
      const gpu = make({}, { mechanism: "identity-mfn" });
      const mfns = pin(0, 4);
      const m = adapter.mapForDevice(gpu, mfns, 4, true);
      expect(m.segAddr[3]).to.equal(BigInt(mfns[3]!) << 12n);
      adapter.unmapForDevice(m);
      expect([adapter.identity!.maps, adapter.identity!.unmaps, env.xen.hypercalls("iommu_op")]).to.deep.equal([4, 4, 0]);
      unpin(0, 4);
    });
  });

  describe("grant-dma", () => {
    it("grants each frame to the backend, addresses bit 63 | ref << 12, and defers the end of access while the backend maps it", () => {
      const gpu = make({}, { mechanism: "grant-dma" });
      const mfns = pin(0x30, 2);
      const m = adapter.mapForDevice(gpu, mfns, 2, true) as XenMapping;
      const refs = [...m.extra.refs!];
      expect(refs).to.deep.equal([8, 9]);
      expect([...m.segAddr]).to.deep.equal([0x8000_0000_0000_8000n, 0x8000_0000_0000_9000n]);
      expect(adapter.deviceReaches(gpu, m.segAddr[1]!)).to.equal(mfns[1]);
      const op: GnttabMapGrantRef = { host_addr: 0n, flags: GNTMAP_device_map, ref: refs[0]!, dom: env.guest.domid };
      gnttabMapGrantRef(env.xen, env.dom0, [op], 1);
      expect([op.status, op.dev_bus_addr]).to.deep.equal([GNTST.okay, BigInt(mfns[0]!) << 12n]);
      adapter.unmapForDevice(m);
      expect(adapter.stats.deferredGrants).to.equal(1);
      expect(adapter.retryDeferredGrants()).to.equal(1);
      gnttabUnmapGrantRef(env.xen, env.dom0, [{ host_addr: 0n, dev_bus_addr: op.dev_bus_addr!, handle: op.handle! }], 1);
      expect(adapter.retryDeferredGrants()).to.equal(0);
      unpin(0x30, 2);
    });
  });

  it("forwards the guest's P2M changes to the core as invalidations, synchronously", () => {
    make();
    const seen: GuestInvalidation[] = [];
    const sub = adapter.onInvalidate((inv) => seen.push(inv));
    expect(env.guest.decreaseReservation(0x40, 3)).to.equal(3);
    expect(seen).to.deep.equal([{ vm: "vm1", firstGfn: 0x40, npages: 3, reason: "decrease_reservation" }]);
    sub.dispose();
    expect(adapter.listenerCount).to.equal(0);
  });
});
