import { expect } from "chai";
import { ERRNO } from "../errors/errno.js";
import { DMA_MAPPING_ERROR, DmaDirection, dmaBitMask } from "./dma-addr.js";
import type { IntelIommu2016Domain } from "./intel-iommu-2016.js";
import { Scatterlist } from "./scatterlist.js";
import { dmaMapPage, dmaMapSg, dmaMapSgtable, dmaUnmapPage, dmaUnmapSg } from "./dma-mapping.js";
import { DMA_NO_LEAKS, DmaEnv } from "./dma-env.test.util.js";

const BIDI = DmaDirection.BIDIRECTIONAL;

describe("dma-api/intel-iommu-2016: the v4.x VT-d DMA ops", () => {
  let env: DmaEnv;
  const iommu = (): IntelIommu2016Domain => env.iommu as IntelIommu2016Domain;

  afterEach(() => {
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
  });

  it("intel_map_sg returns nents: one allocation, entries back to back, nothing merged", () => {
    env = new DmaEnv({ mode: "intel-2016", iommu: { strict: true } });
    const frames = [env.frame(), env.frame(), env.frame()];
    const sg = Scatterlist.fromPages(frames);
    expect(dmaMapSg(env.dev, sg, 3, BIDI)).to.equal(3);
    env.check();
    // 3 pages rounded to 4, 4-aligned: 0xffffc..0xfffff, the entries from its start
    expect([0, 1, 2].map((i) => [sg.dmaAddress(i), sg.dmaLength[i]])).to.deep.equal([
      [0xffffc000n, 4096],
      [0xffffd000n, 4096],
      [0xffffe000n, 4096],
    ]);
    expect(frames.map((_, k) => iommu().domain.iovaToPfn(0xffffc + k))).to.deep.equal(frames);
    expect(iommu().iovad.findIova(0xffffc)).to.deep.equal({ pfnLo: 0xffffc, pfnHi: 0xfffff });
    dmaUnmapSg(env.dev, sg, 3, BIDI);
    expect([iommu().domain.mappedPages, iommu().iotlbFlushes]).to.deep.equal([0, 1]);
    env.check();
  });

  it("entries keep their offsets and lengths; physically contiguous pages are not merged either", () => {
    env = new DmaEnv({ mode: "intel-2016", iommu: { strict: true } });
    const base = env.block();
    const sg = new Scatterlist(3).set(0, base, 0, 4096).set(1, base + 1, 0x100, 0x200).set(2, base + 2, 0, 8192);
    expect(dmaMapSg(env.dev, sg, 3, BIDI)).to.equal(3);
    expect([0, 1, 2].map((i) => [sg.dmaAddress(i), sg.dmaLength[i]])).to.deep.equal([
      [0xffffc000n, 4096],
      [0xffffd100n, 0x200],
      [0xffffe000n, 8192],
    ]);
    dmaUnmapSg(env.dev, sg, 3, BIDI);
    env.check();
  });

  it("intel_alloc_iova: every size rounded to a power of two; 32-bit first for any wide mask (no PCI check)", () => {
    env = new DmaEnv({ mode: "intel-2016", iommu: { strict: true }, device: { dmaMask: dmaBitMask(64), isPci: false } });
    const b = env.block();
    const a5 = dmaMapPage(env.dev, b, 0, 5 * 4096, BIDI);
    expect(a5).to.equal(0xffff8000n); // 8 pages, 8-aligned
    const a33 = dmaMapPage(env.dev, b, 0, 33 * 4096, BIDI);
    expect(a33).to.equal(0xfff80000n); // 64 pages, 64-aligned below 0xffff8
    expect(iommu().iovad.findIova(0xfff80)).to.deep.equal({ pfnLo: 0xfff80, pfnHi: 0xfffbf });
    dmaUnmapPage(env.dev, a5, 5 * 4096, BIDI);
    dmaUnmapPage(env.dev, a33, 33 * 4096, BIDI);
    env.check();
  });

  it("intel_iommu=forcedac allocates from the top of the domain", () => {
    env = new DmaEnv({ mode: "intel-2016", iommu: { strict: true, forcedac: true }, device: { dmaMask: dmaBitMask(64) } });
    const a = dmaMapPage(env.dev, env.frame(), 0x40, 16, BIDI);
    expect(a).to.equal((1n << 48n) - 4096n + 0x40n);
    dmaUnmapPage(env.dev, a, 16, BIDI);
  });

  it("identity / passthrough devices get dma_address = phys and map nothing", () => {
    env = new DmaEnv({ mode: "intel-2016", iommu: { strict: true }, device: { identity: true } });
    const frames = [env.frame(), env.frame()];
    const sg = new Scatterlist(2).set(0, frames[0]!, 0x10, 0x100).set(1, frames[1]!, 0, 4096);
    expect(dmaMapSg(env.dev, sg, 2, BIDI)).to.equal(2);
    expect([sg.dmaAddress(0), sg.dmaAddress(1)]).to.deep.equal([BigInt(frames[0]! * 4096 + 0x10), BigInt(frames[1]! * 4096)]);
    expect(dmaMapPage(env.dev, frames[0]!, 8, 8, BIDI)).to.equal(BigInt(frames[0]! * 4096 + 8));
    expect([iommu().domain.mappedPages, iommu().iovad.rangeCount]).to.deep.equal([0, 1]); // only the MSI window
    dmaUnmapSg(env.dev, sg, 2, BIDI);
    dmaUnmapPage(env.dev, BigInt(frames[0]! * 4096 + 8), 8, BIDI);
    env.check();
  });

  it("lazy mode defers the IOTLB flush and the IOVA free", () => {
    env = new DmaEnv({ mode: "intel-2016" });
    const sg = Scatterlist.fromPages([env.frame(), env.frame()]);
    expect(dmaMapSg(env.dev, sg, 2, BIDI)).to.equal(2);
    dmaUnmapSg(env.dev, sg, 2, BIDI);
    expect([iommu().iotlbFlushes, iommu().fq!.pending, iommu().domain.mappedPages]).to.deep.equal([0, 1, 0]);
    expect(iommu().flushTimeout()).to.equal(true);
    expect([iommu().iotlbFlushes, iommu().fq!.pending]).to.deep.equal([1, 0]);
    env.check();
  });

  it("failures: no IOVA gives 0 with dma_length 0 (no WARN, as in 2016); dma_map_sgtable turns the 0 into -EIO with one WARN_ON_ONCE", () => {
    env = new DmaEnv({ mode: "intel-2016", iommu: { strict: true } });
    iommu().iovad.reserveIova(1, 0xfffff);
    const sg = Scatterlist.fromPages([env.frame(), env.frame()]);
    sg.dmaLength[0] = 77;
    expect(dmaMapSg(env.dev, sg, 2, BIDI)).to.equal(0);
    expect(sg.dmaLength[0]).to.equal(0);
    expect(env.host.kernel.warnings).to.deep.equal([]);
    expect(env.host.kernel.messages).to.deep.equal(["Allocating 2-page iova for 0000:01:00.0 failed"]);
    expect(dmaMapSgtable(env.dev, sg, BIDI)).to.equal(-ERRNO.EIO);
    expect(dmaMapSgtable(env.dev, sg, BIDI)).to.equal(-ERRNO.EIO);
    expect(env.host.kernel.warnings.map((w) => w.site)).to.deep.equal(["__dma_map_sg_attrs"]);
    env.expectedWarnings = 1;
    expect(dmaMapPage(env.dev, env.frame(), 0, 4096, BIDI)).to.equal(DMA_MAPPING_ERROR);
    expect(env.dev.liveMappings).to.equal(0);
    env.check();
  });

  it("a mapping failure clears what was mapped and frees the IOVA", () => {
    env = new DmaEnv({ mode: "intel-2016", iommu: { strict: true } });
    const sg = Scatterlist.fromPages([env.frame(), env.frame(), env.frame()]);
    env.host.faults.failNth(3, ["iommu_map"]);
    expect(dmaMapSg(env.dev, sg, 3, BIDI)).to.equal(0);
    expect(env.host.faults.fired).to.equal("iommu_map");
    expect([iommu().domain.mappedPages, iommu().iovad.cachedIovas]).to.deep.equal([0, 1]);
    expect(dmaMapSg(env.dev, sg, 3, BIDI)).to.equal(3);
    expect(sg.dmaAddress(0)).to.equal(0xffffc000n); // the freed IOVA, from the rcache
    dmaUnmapSg(env.dev, sg, 3, BIDI);
    env.check();
  });
});
