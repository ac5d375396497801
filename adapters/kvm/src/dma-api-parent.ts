/**
 * A parent GPU as the KVM adapter maps for it: the host DMA API on that
 * device, in the `pci_map_sg` style. Frames become a scatterlist of page-sized
 * entries; `dma_map_sg` returns the segment count (merged in dma-iommu mode,
 * one per entry in the 2016 intel-iommu and direct modes) or 0, which is the
 * only failure it reports; unmapping gives the original entry count back. A
 * single frame is mapped with `dma_map_page` (DMA_MAPPING_ERROR its failure),
 * the call a per-page vendor such as KVMGT makes.
 */
import {
  DMA_MAPPING_ERROR,
  DmaDirection,
  KernelError,
  PAGE_SIZE,
  Scatterlist,
  dmaMapPage,
  dmaMapSg,
  dmaUnmapPage,
  dmaUnmapSg,
  f64Array,
  u64WithHalves,
  type DeviceHandle,
  type DeviceMapping,
  type DmaDevice,
} from "@vgpu-iommu/core";
import type { ParentDeviceMapper } from "./kvm-adapter.js";

/** A list mapped with dma_map_sg, kept for dma_unmap_sg with its original nents. */
interface SgMapping extends DeviceMapping {
  readonly sg: Scatterlist;
  readonly dir: DmaDirection;
}

/** One frame mapped with dma_map_page, unmapped with dma_unmap_page at its address. */
interface PageMapping extends DeviceMapping {
  readonly sg: undefined;
  readonly addr: bigint;
  readonly dir: DmaDirection;
}

export class DmaApiParent implements ParentDeviceMapper {
  readonly handle: DeviceHandle;

  constructor(readonly dev: DmaDevice) {
    this.handle = { name: dev.name };
  }

  get mergesSegments(): boolean {
    return this.dev.mode === "dma-iommu";
  }

  get maxSegmentSize(): number {
    return this.dev.maxSegmentSize;
  }

  get segmentBoundaryMask(): bigint {
    return this.dev.segmentBoundaryMask;
  }

  get dmaMaskBits(): number {
    return this.dev.dmaMaskBits;
  }

  get lazyFlush(): boolean {
    return this.dev.strict === false;
  }

  /** A single frame goes through dma_map_page, as KVMGT's gvt_dma_map_page does; a list through dma_map_sg. */
  mapFrames(frames: Uint32Array, n: number, write: boolean): DeviceMapping {
    const dir = write ? DmaDirection.BIDIRECTIONAL : DmaDirection.TO_DEVICE;
    if (n === 1) {
      const addr = dmaMapPage(this.dev, frames[0]!, 0, PAGE_SIZE, dir);
      if (addr === DMA_MAPPING_ERROR) throw new KernelError("ENOMEM", "dma-mapping-error", { device: this.dev.name, nents: 1 });
      const mapping: PageMapping = { device: this.handle, nents: 1, count: 1, segAddr: BigUint64Array.of(addr), segLength: Float64Array.of(PAGE_SIZE), sg: undefined, addr, dir };
      return mapping;
    }
    const sg = Scatterlist.fromPages(frames, n);
    const count = dmaMapSg(this.dev, sg, n, dir);
    if (count === 0) throw new KernelError("ENOMEM", "dma-mapping-error", { device: this.dev.name, nents: n });
    // The addresses are copied as their u32 halves: no BigInt per segment.
    const { u64: segAddr, halves } = u64WithHalves(count);
    const segLength = f64Array(count);
    for (let s = 0; s < count; s++) {
      halves[2 * s] = sg.dmaAddrLo[s]!;
      halves[2 * s + 1] = sg.dmaAddrHi[s]!;
      segLength[s] = sg.dmaLength[s]!;
    }
    const mapping: SgMapping = { device: this.handle, nents: n, count, segAddr, segLength, sg, dir };
    return mapping;
  }

  unmap(mapping: DeviceMapping): void {
    const m = mapping as SgMapping | PageMapping;
    if (m.sg === undefined) dmaUnmapPage(this.dev, m.addr, PAGE_SIZE, m.dir);
    else dmaUnmapSg(this.dev, m.sg, m.nents, m.dir);
  }
}
