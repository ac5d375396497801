import { expect } from "chai";
import fc from "fast-check";
import { ERRNO } from "../errors/errno.js";
import { DMA_MAPPING_ERROR, DmaDirection, dmaBitMask } from "./dma-addr.js";
import { DmaIommuDomain } from "./dma-iommu.js";
import { Scatterlist } from "./scatterlist.js";
import { dmaMapPage, dmaMapSg, dmaMapSgtable, dmaSetMaskAndCoherent, dmaSetMaxSegSize, dmaSetSegBoundary, dmaUnmapPage, dmaUnmapSg, dmaUnmapSgtable } from "./dma-mapping.js";
import { DMA_NO_LEAKS, DmaEnv } from "./dma-env.test.util.js";

const BIDI = DmaDirection.BIDIRECTIONAL;
const TOP_48 = (1n << 48n) - 4096n;

describe("dma-api/dma-iommu: IOVA allocation and single mappings", () => {
  let env: DmaEnv;
  const iommu = (): DmaIommuDomain => env.iommu as DmaIommuDomain;

  afterEach(() => {
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
  });

  it("a 32-bit device gets 0xfffff000, 0xffffe000, ... plus the page offset, each mapped in the IOMMU", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    const { dev } = env;
    const [f0, f1, f2] = [env.frame(), env.frame(), env.block()];
    expect(dmaMapPage(dev, f0, 0, 4096, BIDI)).to.equal(0xfffff000n);
    expect(dmaMapPage(dev, f1, 0x10, 100, DmaDirection.TO_DEVICE)).to.equal(0xffffe010n);
    // 0x800 + 8 KiB spans 3 pages, rounded to 4 and 4-aligned below the cached node
    expect(dmaMapPage(dev, f2, 0x800, 8192, BIDI)).to.equal(0xffff8800n);
    env.check();
    const domain = iommu().domain;
    expect([domain.iovaToPfn(0xfffff), domain.iovaToPfn(0xffffe), domain.iovaToPfn(0xffff8), domain.iovaToPfn(0xffffa)]).to.deep.equal([f0, f1, f2, f2 + 2]);
    expect(domain.mappedPages).to.equal(5);
    expect(dev.liveMappings).to.equal(3);
    dmaUnmapPage(dev, 0xfffff000n, 4096, BIDI);
    dmaUnmapPage(dev, 0xffffe010n, 100, DmaDirection.TO_DEVICE);
    dmaUnmapPage(dev, 0xffff8800n, 8192, BIDI);
    env.check();
    expect(domain.mappedPages).to.equal(0);
    expect(iommu().iotlbFlushes).to.equal(3);
    expect(iommu().iovad.cachedIovas).to.equal(3); // back in the rcache, still allocated
  });

  it("the domain reserves the MSI window: allocations skip 0xfee00000-0xfeefffff", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    const iovad = iommu().iovad;
    expect(iovad.findIova(0xfee00)).to.deep.equal({ pfnLo: 0xfee00, pfnHi: 0xfeeff });
    expect(iovad.startPfn).to.equal(1);
    iovad.reserveIova(0xfef00, 0xfffff);
    expect(dmaMapPage(env.dev, env.frame(), 0, 4096, BIDI)).to.equal(0xfedff000n);
    dmaUnmapPage(env.dev, 0xfedff000n, 4096, BIDI);
    env.check();
  });

  it("a PCI device with a 64-bit mask tries below 4 GiB first, then the top of the aperture", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    const { dev } = env;
    expect(dmaSetMaskAndCoherent(dev, dmaBitMask(64))).to.equal(0);
    const f = env.frame();
    const sac = dmaMapPage(dev, f, 0, 4096, BIDI);
    expect(sac).to.equal(0xfffff000n);
    iommu().iovad.reserveIova(1, 0xffffe); // nothing left below 4 GiB
    const high = dmaMapPage(dev, f, 0, 4096, BIDI);
    expect(high).to.equal(TOP_48); // the VT-d aperture is 48 bits
    expect(iommu().iovad.max32AllocSize).to.equal(1); // the failed SAC attempt recorded its size
    expect(dmaMapPage(dev, f, 0, 4096, BIDI)).to.equal(TOP_48 - 4096n);
    env.check();
    for (const a of [sac, high, TOP_48 - 4096n]) dmaUnmapPage(dev, a, 4096, BIDI);
    expect(env.host.kernel.messages).to.deep.equal([]); // the per-call policy logs nothing
  });

  it("iommu.forcedac skips the 32-bit attempt; a non-PCI device never makes it", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true, forcedac: true }, device: { dmaMask: dmaBitMask(64) } });
    const a = dmaMapPage(env.dev, env.frame(), 0, 4096, BIDI);
    expect(a).to.equal(TOP_48);
    dmaUnmapPage(env.dev, a, 4096, BIDI);
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true }, device: { dmaMask: dmaBitMask(64), isPci: false } });
    const b = dmaMapPage(env.dev, env.frame(), 0x20, 64, BIDI);
    expect(b).to.equal(TOP_48 + 0x20n);
    dmaUnmapPage(env.dev, b, 64, BIDI);
  });

  it("bus_dma_limit and the aperture clamp the limit", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true, forcedac: true }, device: { dmaMask: dmaBitMask(64), busDmaLimit: dmaBitMask(40) } });
    const a = dmaMapPage(env.dev, env.frame(), 0, 4096, BIDI);
    expect(a).to.equal((1n << 40n) - 4096n);
    dmaUnmapPage(env.dev, a, 4096, BIDI);
  });

  it("sticky SAC (6.4+ pci_32bit_workaround): after one failure the device stops trying below 4 GiB", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true, sacPolicy: "sticky" }, device: { dmaMask: dmaBitMask(64) } });
    const iovad = iommu().iovad;
    iovad.reserveIova(1, 0xfffff);
    const f = env.frame();
    const a = dmaMapPage(env.dev, f, 0, 4096, BIDI);
    expect(a).to.equal(TOP_48);
    expect(env.dev.pci32bitWorkaround).to.equal(false);
    expect(env.host.kernel.messages).to.deep.equal(["0000:01:00.0: Using 48-bit DMA addresses"]);
    iovad.freeIova(0x80000); // room below 4 GiB again
    const b = dmaMapPage(env.dev, f, 0, 4096, BIDI);
    expect(b).to.equal(TOP_48 - 4096n);
    expect(env.host.kernel.messages).to.have.length(1);
    for (const x of [a, b]) dmaUnmapPage(env.dev, x, 4096, BIDI);
    env.check();
  });

  it("an iommu_map failure frees the IOVA (into the rcache) and returns DMA_MAPPING_ERROR", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    const f = env.frame();
    env.host.faults.failNth(1, ["iommu_map"]);
    expect(dmaMapPage(env.dev, f, 0, 4096, BIDI)).to.equal(DMA_MAPPING_ERROR);
    expect(env.host.faults.fired).to.equal("iommu_map");
    env.check();
    expect([iommu().domain.mappedPages, iommu().iovad.rangeCount, iommu().iovad.cachedIovas, env.dev.liveMappings]).to.deep.equal([0, 2, 1, 0]); // MSI window + the cached IOVA
    expect(dmaMapPage(env.dev, f, 0, 4096, BIDI)).to.equal(0xfffff000n); // the same IOVA, from the rcache
    expect(iommu().iovad.cachedIovas).to.equal(0);
    dmaUnmapPage(env.dev, 0xfffff000n, 4096, BIDI);
  });
});

describe("dma-api/dma-iommu: strict vs lazy invalidation", () => {
  let env: DmaEnv;
  const iommu = (): DmaIommuDomain => env.iommu as DmaIommuDomain;

  afterEach(() => {
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
  });

  it("strict: one IOTLB flush per unmap, and the IOVA is reused at once", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    const f = env.frame();
    for (let i = 0; i < 3; i++) {
      expect(dmaMapPage(env.dev, f, 0, 4096, BIDI)).to.equal(0xfffff000n);
      dmaUnmapPage(env.dev, 0xfffff000n, 4096, BIDI);
      env.check();
    }
    expect(iommu().iotlbFlushes).to.equal(3);
    expect(iommu().fq).to.equal(undefined);
    expect(env.dev.strict).to.equal(true);
  });

  it("lazy: freed IOVAs wait in the flush queue; the timer's batched flush makes them reusable", () => {
    env = new DmaEnv({ mode: "dma-iommu" });
    const fq = iommu().fq!;
    const f = env.frame();
    expect(dmaMapPage(env.dev, f, 0, 4096, BIDI)).to.equal(0xfffff000n);
    dmaUnmapPage(env.dev, 0xfffff000n, 4096, BIDI);
    expect([iommu().iotlbFlushes, fq.pending, iommu().domain.mappedPages, fq.timerArmed]).to.deep.equal([0, 1, 0, true]);
    expect(dmaMapPage(env.dev, f, 0, 4096, BIDI)).to.equal(0xffffe000n); // not the queued one
    env.check();
    expect(iommu().flushTimeout()).to.equal(true);
    expect([iommu().iotlbFlushes, fq.pending, fq.timerArmed]).to.deep.equal([1, 0, false]);
    expect(iommu().flushTimeout()).to.equal(false); // not armed
    expect(dmaMapPage(env.dev, f, 0, 4096, BIDI)).to.equal(0xfffff000n); // reusable now, from the rcache
    dmaUnmapPage(env.dev, 0xfffff000n, 4096, BIDI);
    dmaUnmapPage(env.dev, 0xffffe000n, 4096, BIDI);
    expect([iommu().iotlbFlushes, fq.pending]).to.deep.equal([1, 2]);
    env.check();
  });

  it("lazy: a full per-CPU queue (255 entries) forces one flush on the next unmap", () => {
    env = new DmaEnv({ mode: "dma-iommu" });
    const fq = iommu().fq!;
    const f = env.frame();
    const addrs: bigint[] = [];
    for (let i = 0; i < 256; i++) addrs.push(dmaMapPage(env.dev, f, 0, 4096, BIDI));
    for (let i = 0; i < 255; i++) dmaUnmapPage(env.dev, addrs[i]!, 4096, BIDI);
    expect([iommu().iotlbFlushes, fq.pending]).to.deep.equal([0, 255]);
    dmaUnmapPage(env.dev, addrs[255]!, 4096, BIDI);
    expect([iommu().iotlbFlushes, fq.pending, iommu().iovad.cachedIovas]).to.deep.equal([1, 1, 255]);
    env.check();
  });

  it("lazy: another CPU's queue is only emptied by its own next unmap or the timer", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { cpus: 2 } });
    const fq = iommu().fq!;
    const f = env.frame();
    const a = dmaMapPage(env.dev, f, 0, 4096, BIDI);
    iommu().cpu = 1;
    const b = dmaMapPage(env.dev, f, 0, 4096, BIDI);
    dmaUnmapPage(env.dev, b, 4096, BIDI);
    iommu().cpu = 0;
    const addrs: bigint[] = [];
    for (let i = 0; i < 256; i++) addrs.push(dmaMapPage(env.dev, f, 0, 4096, BIDI));
    for (const x of addrs) dmaUnmapPage(env.dev, x, 4096, BIDI);
    expect([iommu().iotlbFlushes, fq.pending]).to.deep.equal([1, 2]); // cpu 1's entry is flushed but still queued
    dmaUnmapPage(env.dev, a, 4096, BIDI);
    expect(fq.pending).to.equal(3);
    iommu().flushTimeout();
    expect([iommu().iotlbFlushes, fq.pending]).to.deep.equal([2, 0]);
    env.check();
  });
});

describe("dma-api/dma-iommu: dma_map_sg and __finalise_sg", () => {
  let env: DmaEnv;
  const iommu = (): DmaIommuDomain => env.iommu as DmaIommuDomain;

  beforeEach(() => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
  });

  afterEach(() => {
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
  });

  it("scattered page-aligned pages become ONE segment from one IOVA allocation; trailing entries get DMA_MAPPING_ERROR / 0", () => {
    const frames = [env.block(), env.block(), env.block(), env.block()];
    const sg = Scatterlist.fromPages(frames);
    expect(dmaMapSg(env.dev, sg, 4, BIDI)).to.equal(1);
    env.check();
    expect([sg.dmaAddress(0), sg.dmaLength[0]]).to.deep.equal([0xffffc000n, 16384]);
    for (let i = 1; i < 4; i++) expect([sg.isMappingError(i), sg.dmaAddress(i), sg.dmaLength[i]]).to.deep.equal([true, DMA_MAPPING_ERROR, 0]);
    expect(iommu().iovad.rangeCount).to.equal(2); // the MSI window and one allocation
    for (let k = 0; k < 4; k++) expect(iommu().domain.iovaToPfn(0xffffc + k)).to.equal(frames[k]);
    dmaUnmapSg(env.dev, sg, 4, BIDI);
    expect([iommu().domain.mappedPages, iommu().iotlbFlushes, env.dev.liveMappings]).to.deep.equal([0, 1, 0]);
  });

  it("rule: an entry that does not start at offset 0 of its granule starts a new segment", () => {
    const sg = new Scatterlist(2).set(0, env.frame(), 0, 4096).set(1, env.frame(), 0x200, 0xe00);
    expect(dmaMapSg(env.dev, sg, 2, BIDI)).to.equal(2);
    expect([sg.dmaAddress(0), sg.dmaLength[0], sg.dmaAddress(1), sg.dmaLength[1]]).to.deep.equal([0xffffe000n, 4096, 0xfffff200n, 0xe00]);
    dmaUnmapSg(env.dev, sg, 2, BIDI);
    env.check();
  });

  it("rule: an entry ending before its granule's end closes the segment", () => {
    const sg = new Scatterlist(3).set(0, env.frame(), 0, 4096).set(1, env.frame(), 0, 0x800).set(2, env.frame(), 0, 4096);
    expect(dmaMapSg(env.dev, sg, 3, BIDI)).to.equal(2);
    // entries 0 and 1 join (1 starts at offset 0); entry 1 ends short, so entry 2 opens a new segment
    expect([sg.dmaAddress(0), sg.dmaLength[0], sg.dmaAddress(1), sg.dmaLength[1], sg.dmaLength[2]]).to.deep.equal([0xffffc000n, 0x1800, 0xffffe000n, 4096, 0]);
    expect(sg.isMappingError(2)).to.equal(true);
    dmaUnmapSg(env.dev, sg, 3, BIDI);
    expect(iommu().domain.mappedPages).to.equal(0);
    env.check();
  });

  it("rule: no join when the running address is on a segment boundary", () => {
    expect(dmaSetSegBoundary(env.dev, 0x3fffn)).to.equal(0);
    const sg = Scatterlist.fromPages(Array.from({ length: 8 }, () => env.frame()));
    expect(dmaMapSg(env.dev, sg, 8, BIDI)).to.equal(2);
    expect([sg.dmaAddress(0), sg.dmaLength[0], sg.dmaAddress(1), sg.dmaLength[1]]).to.deep.equal([0xffff8000n, 0x4000, 0xffffc000n, 0x4000]);
    dmaUnmapSg(env.dev, sg, 8, BIDI);
    env.check();
  });

  it("rule: a segment never grows past max_segment_size (64 KiB by default)", () => {
    const frames = Array.from({ length: 32 }, () => env.frame());
    const sg = Scatterlist.fromPages(frames);
    expect(dmaMapSg(env.dev, sg, 32, BIDI)).to.equal(2);
    expect([sg.dmaAddress(0), sg.dmaLength[0], sg.dmaAddress(1), sg.dmaLength[1]]).to.deep.equal([0xfffe0000n, 0x10000, 0xffff0000n, 0x10000]);
    dmaUnmapSg(env.dev, sg, 32, BIDI);
    expect(dmaSetMaxSegSize(env.dev, 1 << 20)).to.equal(0);
    const big = Scatterlist.fromPages(frames);
    expect(dmaMapSg(env.dev, big, 32, BIDI)).to.equal(1);
    expect([big.dmaAddress(0), big.dmaLength[0]]).to.deep.equal([0xfffe0000n, 0x20000]);
    dmaUnmapSg(env.dev, big, 32, BIDI);
    env.check();
  });

  it("whole-page lists: segments are exactly __finalise_sg's entry-by-entry result for any boundary and max_segment_size", () => {
    // The kernel's loop over whole-page entries, written out: join unless on a boundary or full (unsigned arithmetic).
    const oracle = (iovaPage: number, n: number, boundaryPages: number, maxLen: number): [number, number][] => {
      const out: [number, number][] = [];
      let curLen = 0;
      for (let i = 0, page = iovaPage; i < n; i++, page++) {
        if (curLen !== 0 && page % boundaryPages !== 0 && (maxLen - curLen) >>> 0 >= 4096) curLen += 4096;
        else out.push([page, (curLen = 4096)]);
        out[out.length - 1]![1] = curLen;
      }
      return out;
    };
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 96 }), fc.integer({ min: 12, max: 20 }), fc.integer({ min: 1024, max: 200_000 }), (n, boundaryShift, maxLen) => {
        dmaSetSegBoundary(env.dev, (1n << BigInt(boundaryShift)) - 1n);
        dmaSetMaxSegSize(env.dev, maxLen);
        const sg = Scatterlist.fromPages(Array.from({ length: n }, () => env.frame()));
        const count = dmaMapSg(env.dev, sg, n, BIDI);
        const got = Array.from({ length: count }, (_, k) => [sg.dmaPage(k), sg.dmaLength[k]!]);
        expect(got).to.deep.equal(oracle(sg.dmaPage(0), n, 1 << (boundaryShift - 12), maxLen));
        for (let k = count; k < n; k++) expect([sg.isMappingError(k), sg.dmaLength[k]]).to.deep.equal([true, 0]);
        dmaUnmapSg(env.dev, sg, n, BIDI);
        env.check();
      }),
      { numRuns: 60, seed: 7 },
    );
  });

  it("layout: an entry that would cross the boundary pads the previous one up to it (the padding maps the frames after it)", () => {
    dmaSetSegBoundary(env.dev, 0x1fffn);
    const [b0, b1] = [env.block(), env.block()];
    const sg = new Scatterlist(2).set(0, b0, 0, 4096).set(1, b1, 0, 8192);
    expect(dmaMapSg(env.dev, sg, 2, BIDI)).to.equal(2);
    expect([sg.dmaAddress(0), sg.dmaLength[0], sg.dmaAddress(1), sg.dmaLength[1]]).to.deep.equal([0xffffc000n, 4096, 0xffffe000n, 8192]);
    const d = iommu().domain;
    expect([d.iovaToPfn(0xffffc), d.iovaToPfn(0xffffd), d.iovaToPfn(0xffffe), d.iovaToPfn(0xfffff), d.mappedPages]).to.deep.equal([b0, b0 + 1, b1, b1 + 1, 4]);
    dmaUnmapSg(env.dev, sg, 2, BIDI);
    env.check();
  });

  it("iommu_map_sg makes one iommu_map per physically contiguous run; a failure unmaps, frees the IOVA, returns 0", () => {
    const base = env.block();
    const contiguous = new Scatterlist(4).set(0, base, 0, 4096).set(1, base + 1, 0, 4096).set(2, base + 2, 0, 8192).set(3, base + 4, 0, 4096);
    env.host.faults.failNth(2, ["iommu_map"]);
    expect(dmaMapSg(env.dev, contiguous, 4, BIDI)).to.equal(1);
    expect(env.host.faults.fired).to.equal(undefined); // a single iommu_map call
    env.host.faults.disarm();
    dmaUnmapSg(env.dev, contiguous, 4, BIDI);
    const flushesBefore = iommu().iotlbFlushes;
    const runs = new Scatterlist(3).set(0, env.block(), 0, 4096).set(1, env.block(), 0, 4096).set(2, env.block(), 0, 4096);
    env.host.faults.failNth(2, ["iommu_map"]);
    expect(dmaMapSg(env.dev, runs, 3, BIDI)).to.equal(0);
    expect(env.host.faults.fired).to.equal("iommu_map");
    expect([runs.isMappingError(0), runs.dmaLength[0], iommu().domain.mappedPages, env.dev.liveMappings]).to.deep.equal([true, 0, 0, 0]);
    expect(iommu().iotlbFlushes).to.equal(flushesBefore + 1); // iommu_unmap of the first run
    env.check();
    env.host.faults.failNth(1, ["iommu_map"]);
    expect(dmaMapSgtable(env.dev, runs, BIDI)).to.equal(-ERRNO.ENOMEM);
    expect(runs.nents).to.equal(0);
  });

  it("an exhausted IOVA space: dma_map_sg returns 0, dma_map_sgtable -ENOMEM; success sets sgt.nents", () => {
    const sg = Scatterlist.fromPages([env.frame(), env.frame()]);
    iommu().iovad.reserveIova(1, 0xfffff);
    expect(dmaMapSg(env.dev, sg, 2, BIDI)).to.equal(0);
    expect(dmaMapSgtable(env.dev, sg, BIDI)).to.equal(-ERRNO.ENOMEM);
    expect(sg.isMappingError(0)).to.equal(true);
    iommu().iovad.freeIova(0xfffff); // the reserved [0xfef00, 0xfffff] above the MSI window
    expect(dmaMapSgtable(env.dev, sg, BIDI)).to.equal(0);
    expect([sg.nents, sg.dmaAddress(0), sg.dmaLength[0]]).to.deep.equal([1, 0xffffe000n, 8192]);
    dmaUnmapSgtable(env.dev, sg, BIDI);
    env.check();
  });
});
