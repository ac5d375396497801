/**
 * The 2016-era VT-d DMA ops (intel_map_page / intel_map_sg / intel_unmap of
 * drivers/iommu/intel-iommu.c, v4.x): what a KVM vGPU driver of the 2016
 * thread met on the parent GPU.
 *
 * Model:
 * - intel_alloc_iova: the mask is clamped to the domain's address width (the
 *   aperture), the page count rounded up to a power of two (any size), and,
 *   unless `forcedac` (intel_iommu=forcedac), a mask wider than 32 bits first
 *   tries below 4 GiB (no PCI check), then the full mask; each try is
 *   alloc_iova_fast, which in 4.x always retried once after flushing the
 *   per-CPU caches. The allocator itself is the current IovaDomain.
 * - intel_map_sg: ONE allocation for the sum of the entries' page-aligned
 *   lengths; the entries are mapped back to back and keep their own
 *   addresses and lengths: nothing is merged, the return value is `nelems`
 *   and the addresses are contiguous. Allocation failure sets the first
 *   entry's dma_length to 0 and returns 0; a mapping failure clears the range,
 *   frees the IOVA and returns 0.
 * - Identity / passthrough devices (iommu_no_mapping) get dma_address = phys
 *   and nothing is mapped or bounced.
 * - intel_unmap: the page tables are cleared at once; strict mode flushes the
 *   IOTLB (flush_iotlb_psi) and frees the IOVA, lazy mode defers both to the
 *   flush queue (the deferred_flush tables before 4.14, queue_iova after).
 * - The domain reserves its reserved regions (the IOAPIC/MSI window) as
 *   dmar_init_reserved_ranges did; PCI MMIO windows are not modelled.
 * - The 2016 op returned 0 on a failed map_page (checked by
 *   intel_mapping_error); the DMA API front here reports DMA_MAPPING_ERROR.
 *
 * Invariants: as dma-iommu's; a mapped scatterlist's addresses are
 * contiguous, entry i + 1 starting at the page after entry i's last.
 */
import type { ReservedRegion } from "../iommu/iommu-domain.js";
import { PAGE_SIZE } from "../address/address.js";
import { DMA_MAPPING_ERROR, dmaAddrOf, dmaBitMask, dmaHiOf, dmaLoOf, dmaOffsetOf, dmaPageOf, hex, type DmaDirection } from "./dma-addr.js";
import { roundupPowOfTwo } from "./iova-domain.js";
import { IovaOps, type IovaOpsOptions } from "./iova-ops.js";
import type { DmaDevice } from "./dma-device.js";
import type { Scatterlist } from "./scatterlist.js";

const DMA_BIT_MASK_32 = dmaBitMask(32);
/** IOVA_START_PFN. */
const IOVA_START_PFN = 1;

export interface IntelIommu2016Options extends IovaOpsOptions {
  readonly reservedRegions?: readonly ReservedRegion[];
}

/** aligned_nrpages(host_addr, size). */
const alignedNrpages = (offset: number, size: number): number => Math.ceil(((offset & (PAGE_SIZE - 1)) + size) / PAGE_SIZE);

export class IntelIommu2016Domain extends IovaOps {
  readonly kind = "intel-2016" as const;

  constructor(options: IntelIommu2016Options) {
    super(
      options,
      PAGE_SIZE,
      IOVA_START_PFN,
      (options.reservedRegions ?? []).map((r) => [Number(r.start >> 12n), Number((r.start + r.length - 1n) >> 12n)] as const),
    );
  }

  /** intel_alloc_iova: the first IOVA page of `nrpages` (rounded to a power of two), or 0. */
  allocIova(dev: DmaDevice, nrpages: number, dmaMask: bigint): number {
    const width = this.domain.hw.aperture.last;
    const mask = width < dmaMask ? width : dmaMask;
    nrpages = roundupPowOfTwo(nrpages);
    if (!this.forcedac && mask > DMA_BIT_MASK_32) {
      const pfn = this.iovad.allocIovaFast(nrpages, Number(DMA_BIT_MASK_32 >> 12n), true);
      if (pfn !== 0) return pfn;
    }
    const pfn = this.iovad.allocIovaFast(nrpages, Number(mask >> 12n), true);
    if (pfn === 0) this.log.prWarn(`Allocating ${nrpages}-page iova for ${dev.name} failed`);
    return pfn;
  }

  /** intel_map_page (__intel_map_single). */
  mapPage(dev: DmaDevice, pfn: number, offset: number, size: number, dir: DmaDirection): bigint {
    if (dev.identity) return dmaAddrOf(pfn, offset);
    const pages = alignedNrpages(offset, size);
    const iova = this.allocIova(dev, pages, dev.dmaMask);
    if (iova !== 0 && this.domain.map(iova, pfn, pages) === 0) return dmaAddrOf(iova, offset);
    if (iova !== 0) this.iovad.freeIovaFast(iova, pages);
    this.log.prWarn(`Device ${dev.name} request: ${hex(size)}@${hex(pfn * PAGE_SIZE + offset)} dir ${dir} --- failed`);
    return DMA_MAPPING_ERROR;
  }

  /** intel_unmap_page. */
  unmapPage(dev: DmaDevice, addr: bigint, size: number, _dir: DmaDirection): void {
    if (dev.identity) return;
    this.#unmap(dmaPageOf(addr), alignedNrpages(dmaOffsetOf(addr), size));
  }

  /** intel_map_sg: `nents` on success (never merged), 0 on failure. */
  mapSg(dev: DmaDevice, sg: Scatterlist, nents: number, _dir: DmaDirection): number {
    if (dev.identity) {
      // intel_nontranslate_map_sg
      for (let i = 0; i < nents; i++) {
        sg.dmaAddrHi[i] = dmaHiOf(sg.page[i]!);
        sg.dmaAddrLo[i] = dmaLoOf(sg.page[i]!, sg.offset[i]!);
        sg.dmaLength[i] = sg.length[i]!;
      }
      return nents;
    }
    let size = 0;
    for (let i = 0; i < nents; i++) size += alignedNrpages(sg.offset[i]!, sg.length[i]!);
    const iova = this.allocIova(dev, size, dev.dmaMask);
    if (iova === 0) {
      sg.dmaLength[0] = 0;
      return 0;
    }
    // domain_sg_mapping
    let page = iova;
    for (let i = 0; i < nents; i++) {
      const pages = alignedNrpages(sg.offset[i]!, sg.length[i]!);
      if (this.domain.map(page, sg.page[i]!, pages) !== 0) {
        // dma_pte_free_pagetable clears the range, then the IOVA is freed
        this.domain.unmap(iova, size);
        this.iovad.freeIovaFast(iova, size);
        return 0;
      }
      sg.dmaAddrHi[i] = dmaHiOf(page);
      sg.dmaAddrLo[i] = dmaLoOf(page, sg.offset[i]!);
      sg.dmaLength[i] = sg.length[i]!;
      page += pages;
    }
    return nents;
  }

  /** intel_unmap_sg: one range from the first entry's page, sum of the entries' pages. */
  unmapSg(dev: DmaDevice, sg: Scatterlist, nents: number, _dir: DmaDirection): void {
    if (dev.identity) return;
    let nrpages = 0;
    for (let i = 0; i < nents; i++) nrpages += alignedNrpages(sg.dmaOffset(i), sg.dmaLength[i]!);
    this.#unmap(sg.dmaPage(0), nrpages);
  }

  /** intel_unmap (4.14). */
  #unmap(pfn: number, nrpages: number): void {
    this.domain.unmap(pfn, nrpages);
    this.releaseIova(pfn, nrpages);
  }
}
