/**
 * A device as the DMA API sees it (the DMA-relevant part of `struct device`):
 * the physical GPU whose DMA engine the vGPUs share.
 *
 * Model: the streaming and coherent masks (32 bits until the driver raises
 * them), `bus_dma_limit` (0 = none), `dma_parms` (max_segment_size 64 KiB and
 * segment_boundary_mask 0xFFFFFFFF, what the PCI core gives every pci_dev;
 * ULONG_MAX is what newer kernels assume without dma_parms), and which DMA
 * implementation serves it:
 * - `dma-iommu`: the IOMMU DMA domain of drivers/iommu/dma-iommu.c (shared by
 *   every device of the group), strict or lazy as that domain is;
 * - `intel-2016`: the v4.x VT-d DMA ops (intel_map_sg), optionally in
 *   identity / passthrough mode;
 * - `direct`: dma-direct (no IOMMU, or an identity domain): IOVA = PA, with a
 *   swiotlb pool to bounce through when one is attached (`forceSwiotlb`
 *   bounces everything, as swiotlb=force does).
 * The device also keeps what dma-debug would: its live single mappings and the
 * number of mapped scatterlists, so a mismatched unmap is caught.
 *
 * Invariants: masks are non-zero; `dmaLimit` = min_not_zero(dma_mask,
 * bus_dma_limit); `liveMappings` counts maps not yet unmapped.
 */
import type { KernelLog } from "../host/kernel-log.js";
import type { PhysicalMemory } from "../host/physical-memory.js";
import type { FaultInjector } from "../host/fault-injector.js";
import { PAGE_SIZE } from "../address/address.js";
import { dmaBitMask, minNotZero } from "./dma-addr.js";
import { DmaMappingTracker } from "./dma-debug.js";
import type { DmaIommuDomain } from "./dma-iommu.js";
import type { IntelIommu2016Domain } from "./intel-iommu-2016.js";
import type { SwiotlbPool } from "./swiotlb.js";

export type DmaMode = "dma-iommu" | "intel-2016" | "direct";

/** ULONG_MAX: the segment boundary newer kernels assume when a device has no dma_parms. */
export const ULONG_MAX = (1n << 64n) - 1n;
/** The dma_parms defaults (include/linux/dma-mapping.h; the PCI core sets the same). */
export const DEFAULT_MAX_SEGMENT_SIZE = 0x10000;
export const DEFAULT_SEGMENT_BOUNDARY_MASK = 0xffff_ffffn;

/** What the DMA API uses of the host: the log for WARNs, memory for bounces, fault injection. */
export interface DmaHost {
  readonly kernel: KernelLog;
  readonly phys: PhysicalMemory;
  readonly faults: FaultInjector;
}

export interface DmaDeviceOptions {
  readonly name: string;
  readonly mode: DmaMode;
  /** The DMA domain serving a `dma-iommu` or `intel-2016` device. */
  readonly iommu?: DmaIommuDomain | IntelIommu2016Domain;
  /** The swiotlb pool (io_tlb_default_mem); none means swiotlb is not active. */
  readonly swiotlb?: SwiotlbPool;
  /** dev_is_pci; true when omitted. */
  readonly isPci?: boolean;
  /** Streaming mask; DMA_BIT_MASK(32) when omitted. */
  readonly dmaMask?: bigint;
  /** Coherent mask; DMA_BIT_MASK(32) when omitted. */
  readonly coherentDmaMask?: bigint;
  /** bus_dma_limit; 0 (none) when omitted. */
  readonly busDmaLimit?: bigint;
  readonly maxSegmentSize?: number;
  readonly segmentBoundaryMask?: bigint;
  /** swiotlb=force for this device (is_swiotlb_force_bounce). */
  readonly forceSwiotlb?: boolean;
  /** dev_is_dma_coherent; true (x86) when omitted. */
  readonly coherent?: boolean;
  /** intel-2016 only: the device is in the identity (si_domain) or passthrough domain. */
  readonly identity?: boolean;
}

export class DmaDevice {
  readonly name: string;
  readonly mode: DmaMode;
  readonly iommu: DmaIommuDomain | IntelIommu2016Domain | undefined;
  readonly swiotlb: SwiotlbPool | undefined;
  readonly isPci: boolean;
  readonly forceSwiotlb: boolean;
  readonly coherent: boolean;
  readonly identity: boolean;
  /** dev->iommu->pci_32bit_workaround (6.4+): cleared after the first failed SAC attempt. */
  pci32bitWorkaround: boolean;
  /** dma-debug: live single mappings. */
  readonly singles = new DmaMappingTracker();
  /** dma-debug: scatterlists mapped and not yet unmapped. */
  liveScatterlists = 0;
  #dmaMask: bigint;
  #coherentDmaMask: bigint;
  #busDmaLimit: bigint;
  #maxSegmentSize: number;
  #segmentBoundaryMask: bigint;
  #dmaLimit = 0n;
  #dmaLimitNumber = 0;
  #dmaMaskBits = 0;
  #boundaryBytes = 0;
  #boundaryPages = 0;

  constructor(
    readonly host: DmaHost,
    options: DmaDeviceOptions,
  ) {
    this.name = options.name;
    this.mode = options.mode;
    this.iommu = options.iommu;
    if (options.mode === "direct" ? options.iommu !== undefined : options.iommu?.kind !== options.mode) {
      throw new TypeError(`device ${options.name}: mode ${options.mode} needs ${options.mode === "direct" ? "no IOMMU domain" : `a ${options.mode} domain`}`);
    }
    this.swiotlb = options.swiotlb;
    this.isPci = options.isPci ?? true;
    this.forceSwiotlb = options.forceSwiotlb ?? false;
    this.coherent = options.coherent ?? true;
    this.identity = options.identity ?? false;
    this.#dmaMask = options.dmaMask ?? dmaBitMask(32);
    this.#coherentDmaMask = options.coherentDmaMask ?? dmaBitMask(32);
    this.#busDmaLimit = options.busDmaLimit ?? 0n;
    this.#maxSegmentSize = options.maxSegmentSize ?? DEFAULT_MAX_SEGMENT_SIZE;
    this.#segmentBoundaryMask = options.segmentBoundaryMask ?? DEFAULT_SEGMENT_BOUNDARY_MASK;
    this.pci32bitWorkaround = this.isPci;
    this.#updateLimit();
    this.#updateBoundary();
  }

  get dmaMask(): bigint {
    return this.#dmaMask;
  }

  /** Significant bits of the DMA mask (64 for DMA_BIT_MASK(64)). */
  get dmaMaskBits(): number {
    return this.#dmaMaskBits;
  }

  get coherentDmaMask(): bigint {
    return this.#coherentDmaMask;
  }

  get busDmaLimit(): bigint {
    return this.#busDmaLimit;
  }

  /** dma_get_max_seg_size. */
  get maxSegmentSize(): number {
    return this.#maxSegmentSize;
  }

  /** dma_get_seg_boundary. */
  get segmentBoundaryMask(): bigint {
    return this.#segmentBoundaryMask;
  }

  /** min_not_zero(*dma_mask, bus_dma_limit): the highest address the device reaches. */
  get dmaLimit(): bigint {
    return this.#dmaLimit;
  }

  /** `dmaLimit` as a number, for comparisons with physical addresses (< 2^53). */
  get dmaLimitNumber(): number {
    return this.#dmaLimitNumber;
  }

  /** segment_boundary_mask + 1, as a number (2^64 for ULONG_MAX). */
  get segmentBoundaryBytes(): number {
    return this.#boundaryBytes;
  }

  /** The boundary in 4 KiB pages (at least 1). */
  get segmentBoundaryPages(): number {
    return this.#boundaryPages;
  }

  /** Lazy (flush queue) or strict IOTLB invalidation of the device's DMA domain; undefined in direct mode. */
  get strict(): boolean | undefined {
    return this.iommu?.strict;
  }

  /** Live maps: single mappings plus mapped scatterlists. */
  get liveMappings(): number {
    return this.singles.count + this.liveScatterlists;
  }

  /** @internal Used by dma_set_mask and friends after dma_supported said yes. */
  setMasks(dmaMask: bigint | undefined, coherentDmaMask: bigint | undefined): void {
    if (dmaMask !== undefined) this.#dmaMask = dmaMask;
    if (coherentDmaMask !== undefined) this.#coherentDmaMask = coherentDmaMask;
    this.#updateLimit();
  }

  /** dma_set_max_seg_size. */
  setMaxSegmentSize(size: number): void {
    if (!(Number.isInteger(size) && size > 0 && size <= 0xffff_ffff)) throw new RangeError(`max segment size ${size} is not an unsigned int`);
    this.#maxSegmentSize = size;
  }

  /** dma_set_seg_boundary: `mask` must be 2^n - 1. */
  setSegmentBoundary(mask: bigint): void {
    if (mask <= 0n || mask > ULONG_MAX || ((mask + 1n) & mask) !== 0n) throw new RangeError(`segment boundary mask ${mask} is not 2^n - 1`);
    this.#segmentBoundaryMask = mask;
    this.#updateBoundary();
  }

  /** bus_dma_limit (set by the platform, e.g. a bridge with fewer address lines). */
  setBusDmaLimit(limit: bigint): void {
    this.#busDmaLimit = limit;
    this.#updateLimit();
  }

  #updateLimit(): void {
    this.#dmaMaskBits = this.#dmaMask.toString(2).length;
    this.#dmaLimit = minNotZero(this.#dmaMask, this.#busDmaLimit);
    this.#dmaLimitNumber = Number(this.#dmaLimit);
  }

  #updateBoundary(): void {
    this.#boundaryBytes = Number(this.#segmentBoundaryMask + 1n);
    this.#boundaryPages = Math.max(1, Math.floor(this.#boundaryBytes / PAGE_SIZE));
  }
}

/** dma_capable(dev, addr, size, true): the whole buffer lies at or below the device's limit. */
export const dmaCapable = (dev: DmaDevice, addr: number, size: number): boolean => addr + size - 1 <= dev.dmaLimitNumber;
