/**
 * A parent GPU as the KVM adapter maps for it: the host DMA API on that
 * device, in the `pci_map_sg` style. Frames become a scatterlist of page-sized
 * entries; `dma_map_sg` returns the segment count (merged in dma-iommu mode,
 * one per entry in the 2016 intel-iommu and direct modes) or 0, which is the
 * only failure it reports; unmapping gives the original entry count back.
 */
import {
  DmaDirection,
  KernelError,
  Scatterlist,
  dmaMapSg,
  dmaUnmapSg,
  type DeviceHandle,
  type DeviceMapping,
  type DmaDevice,
} from "@vgpu-iommu/core";
import type { ParentDeviceMapper } from "./kvm-adapter.js";

interface SgMapping extends DeviceMapping {
  readonly sg: Scatterlist;
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
    return this.dev.dmaMask.toString(2).length;
  }

  get lazyFlush(): boolean {
    return this.dev.strict === false;
  }

  mapFrames(frames: Uint32Array, n: number, write: boolean): DeviceMapping {
    const sg = Scatterlist.fromPages(frames, n);
    const dir = write ? DmaDirection.BIDIRECTIONAL : DmaDirection.TO_DEVICE;
    const count = dmaMapSg(this.dev, sg, n, dir);
    if (count === 0) throw new KernelError("ENOMEM", "dma-mapping-error", { device: this.dev.name, nents: n });
    const segAddr = new BigUint64Array(count);
    const segLength = new Float64Array(count);
    for (let s = 0; s < count; s++) {
      segAddr[s] = sg.dmaAddress(s);
      segLength[s] = sg.dmaLength[s]!;
    }
    const mapping: SgMapping = { device: this.handle, nents: n, count, segAddr, segLength, sg, dir };
    return mapping;
  }

  unmap(mapping: DeviceMapping): void {
    const m = mapping as SgMapping;
    dmaUnmapSg(this.dev, m.sg, m.nents, m.dir);
  }
}
