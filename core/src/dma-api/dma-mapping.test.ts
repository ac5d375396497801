import { expect } from "chai";
import { ERRNO } from "../errors/errno.js";
import { HostCrashedError } from "../errors/kernel-error.js";
import { DMA_MAPPING_ERROR, DmaDirection, dmaBitMask } from "./dma-addr.js";
import type { DmaIommuDomain } from "./dma-iommu.js";
import { DmaDevice } from "./dma-device.js";
import { Scatterlist } from "./scatterlist.js";
import {
  dmaGetMask,
  dmaMapPage,
  dmaMapSg,
  dmaMapSgtable,
  dmaMappingError,
  dmaSetCoherentMask,
  dmaSetMask,
  dmaSetMaskAndCoherent,
  dmaUnmapPage,
  dmaUnmapSg,
  dmaUnmapSgtable,
} from "./dma-mapping.js";
import { DMA_NO_LEAKS, DmaEnv } from "./dma-env.test.util.js";

const BIDI = DmaDirection.BIDIRECTIONAL;
const TO = DmaDirection.TO_DEVICE;

describe("dma-api/dma-mapping: the API front", () => {
  let env: DmaEnv;
  const iommu = (): DmaIommuDomain => env.iommu as DmaIommuDomain;

  afterEach(() => {
    if (env.host.kernel.crashed) return; // the BUG_ON case asserts its own state
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
  });

  it("DMA_MAPPING_ERROR is (dma_addr_t)~0 and dma_mapping_error recognises it", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    expect(DMA_MAPPING_ERROR).to.equal(2n ** 64n - 1n);
    expect(dmaMappingError(env.dev, DMA_MAPPING_ERROR)).to.equal(true);
    expect(dmaMappingError(env.dev, 0xfffff000n)).to.equal(false);
  });

  it("dma_unmap_page with a different size, direction or an unknown address WARNs and unmaps nothing", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    const a = dmaMapPage(env.dev, env.frame(), 0, 4096, BIDI);
    expect(a).to.equal(0xfffff000n);
    dmaUnmapPage(env.dev, a, 2048, BIDI);
    dmaUnmapPage(env.dev, a, 4096, TO);
    dmaUnmapPage(env.dev, 0xffffe000n, 4096, BIDI);
    dmaUnmapPage(env.dev, DMA_MAPPING_ERROR, 4096, BIDI);
    expect(env.host.kernel.warnings.map((w) => w.message)).to.deep.equal([
      "0000:01:00.0: DMA-API: device driver frees DMA memory with different size [device address=0xfffff000] [map size=4096 bytes] [unmap size=2048 bytes]",
      "0000:01:00.0: DMA-API: device driver frees DMA memory with different direction [device address=0xfffff000] [size=4096 bytes] [mapped with DMA_BIDIRECTIONAL] [unmapped with DMA_TO_DEVICE]",
      "0000:01:00.0: DMA-API: device driver tries to free DMA memory it has not allocated [device address=0xffffe000] [size=4096 bytes]",
      "0000:01:00.0: DMA-API: device driver tries to free an invalid DMA memory address",
    ]);
    env.expectedWarnings = 4;
    expect([env.dev.liveMappings, iommu().domain.mappedPages, iommu().iotlbFlushes]).to.deep.equal([1, 1, 0]);
    env.check();
    dmaUnmapPage(env.dev, a, 4096, BIDI);
    expect([env.dev.liveMappings, iommu().domain.mappedPages, iommu().iotlbFlushes]).to.deep.equal([0, 0, 1]);
  });

  it("dma_unmap_sg needs the ORIGINAL nents: the returned count WARNs and unmaps nothing", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    const sg = Scatterlist.fromPages([env.frame(), env.frame(), env.frame(), env.frame()]);
    const count = dmaMapSg(env.dev, sg, 4, BIDI);
    expect(count).to.equal(1);
    dmaUnmapSg(env.dev, sg, count, BIDI);
    expect(env.host.kernel.warnings.map((w) => w.message)).to.deep.equal(["0000:01:00.0: DMA-API: device driver frees DMA sg list with different entry count [map count=4] [unmap count=1]"]);
    expect([env.dev.liveMappings, iommu().domain.mappedPages]).to.deep.equal([1, 4]);
    dmaUnmapSg(env.dev, sg, 4, TO);
    sg.length[3] = 2048;
    dmaUnmapSg(env.dev, sg, 4, BIDI);
    sg.length[3] = 4096;
    const other = new DmaDevice(env.host, { name: "0000:02:00.0", mode: "dma-iommu", iommu: env.iommu });
    dmaUnmapSg(other, sg, 4, BIDI);
    expect(env.host.kernel.warnings.slice(1).map((w) => w.message)).to.deep.equal([
      "0000:01:00.0: DMA-API: device driver frees DMA memory with different direction [device address=0xffffc000] [size=16384 bytes] [mapped with DMA_BIDIRECTIONAL] [unmapped with DMA_TO_DEVICE]",
      "0000:01:00.0: DMA-API: device driver frees DMA memory with different size [device address=0xffffc000] [map size=16384 bytes] [unmap size=14336 bytes]",
      "0000:02:00.0: DMA-API: device driver tries to free DMA memory it has not allocated [device address=0xffffc000] [size=4096 bytes]",
    ]);
    env.expectedWarnings = 4;
    expect([env.dev.liveMappings, iommu().domain.mappedPages, iommu().iotlbFlushes]).to.deep.equal([1, 4, 0]);
    dmaUnmapSg(env.dev, sg, 4, BIDI);
    expect([env.dev.liveMappings, iommu().domain.mappedPages, iommu().iotlbFlushes, sg.mappedBy]).to.deep.equal([0, 0, 1, undefined]);
    env.check();
  });

  it("a scatterlist cannot be mapped twice: WARN, dma_map_sg 0, dma_map_sgtable -EINVAL", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    const sg = Scatterlist.fromPages([env.frame()]);
    expect(dmaMapSgtable(env.dev, sg, BIDI)).to.equal(0);
    expect(dmaMapSg(env.dev, sg, 1, BIDI)).to.equal(0);
    expect(dmaMapSgtable(env.dev, sg, BIDI)).to.equal(-ERRNO.EINVAL);
    expect(env.host.kernel.warnings.map((w) => w.site)).to.deep.equal(["debug_dma_map_sg", "debug_dma_map_sg"]);
    env.expectedWarnings = 2;
    expect([sg.nents, env.dev.liveMappings, iommu().domain.mappedPages]).to.deep.equal([1, 1, 1]);
    dmaUnmapSgtable(env.dev, sg, BIDI);
    env.check();
  });

  it("dma_map_sgtable errnos: -ENOMEM (no IOVA), -EIO (direct overflow), -EINVAL (already mapped); dma_map_sg is never negative", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    iommu().iovad.reserveIova(1, 0xfffff);
    const sg = Scatterlist.fromPages([env.frame()]);
    expect(dmaMapSgtable(env.dev, sg, BIDI)).to.equal(-ERRNO.ENOMEM);
    expect(dmaMapSg(env.dev, sg, 1, BIDI)).to.equal(0);
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
    env = new DmaEnv({ mode: "direct" });
    const high = Scatterlist.fromPages([env.frame(0x10_0000)]);
    expect(dmaMapSgtable(env.dev, high, BIDI)).to.equal(-ERRNO.EIO);
    expect(dmaMapSg(env.dev, high, 1, BIDI)).to.equal(0);
    env.expectedWarnings = 1; // the dma-direct overflow WARN_ONCE
    const low = Scatterlist.fromPages([env.frame()]);
    expect(dmaMapSgtable(env.dev, low, BIDI)).to.equal(0);
    expect(dmaMapSgtable(env.dev, low, BIDI)).to.equal(-ERRNO.EINVAL);
    env.expectedWarnings = 2;
    dmaUnmapSgtable(env.dev, low, BIDI);
    env.check();
  });

  it("dma_set_mask: -EIO for a mask dma-direct cannot serve, any mask under dma-iommu", () => {
    env = new DmaEnv({ mode: "direct" });
    expect(dmaGetMask(env.dev)).to.equal(dmaBitMask(32));
    expect(dmaSetMask(env.dev, dmaBitMask(16))).to.equal(-ERRNO.EIO);
    expect(dmaGetMask(env.dev)).to.equal(dmaBitMask(32));
    expect(dmaSetMaskAndCoherent(env.dev, dmaBitMask(24))).to.equal(0);
    expect([env.dev.dmaMask, env.dev.coherentDmaMask]).to.deep.equal([dmaBitMask(24), dmaBitMask(24)]);
    expect(dmaSetCoherentMask(env.dev, dmaBitMask(20))).to.equal(-ERRNO.EIO);
    expect(dmaSetMask(env.dev, (1n << 70n) - 1n)).to.equal(0); // truncated to dma_addr_t
    expect(env.dev.dmaMask).to.equal(dmaBitMask(64));
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
    env = new DmaEnv({ mode: "dma-iommu" });
    expect(dmaSetMask(env.dev, dmaBitMask(16))).to.equal(0);
    expect(env.dev.dmaLimit).to.equal(dmaBitMask(16));
  });

  it("an invalid direction is a BUG_ON: the host crashes and every later call fails", () => {
    env = new DmaEnv({ mode: "dma-iommu", iommu: { strict: true } });
    const f = env.frame();
    expect(() => dmaMapPage(env.dev, f, 0, 4096, DmaDirection.NONE)).to.throw(HostCrashedError);
    expect(env.host.kernel.crashed).to.equal(true);
    expect(env.host.kernel.bug?.site).to.equal("dma_map_page_attrs");
    expect(() => dmaMapPage(env.dev, f, 0, 4096, BIDI)).to.throw(HostCrashedError);
    expect([env.dev.liveMappings, iommu().domain.mappedPages]).to.deep.equal([0, 0]);
  });

  it("a device's mode must match its DMA domain", () => {
    env = new DmaEnv({ mode: "direct" });
    expect(() => new DmaDevice(env.host, { name: "x", mode: "dma-iommu" })).to.throw(TypeError, /needs a dma-iommu domain/);
  });
});
