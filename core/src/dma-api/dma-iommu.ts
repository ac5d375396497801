/**
 * The IOMMU-backed DMA domain of drivers/iommu/dma-iommu.c: the iommu_dma
 * cookie (an IovaDomain and, in lazy mode, a flush queue) of one
 * IommuDomain, and the DMA ops every device attached to it uses.
 *
 * Model (read at v5.4 and checked against 6.x where they differ):
 * - `allocIova` is iommu_dma_alloc_iova: sizes below 32 granules are rounded
 *   up to a power of two (v5.4 did it here, 5.17+ inside alloc_iova_fast; the
 *   result is the same); the limit is the DMA mask, clamped by bus_dma_limit
 *   and the aperture end; a PCI device whose limit is above 4 GiB first tries
 *   below 4 GiB without flushing the rcaches (the SAC trick), unless
 *   `forcedac`; `sacPolicy: 'sticky'` is 6.4+'s pci_32bit_workaround, cleared
 *   for the device after its first failed attempt.
 * - `mapPage`: align the physical address down to the granule, allocate,
 *   iommu_map, return iova + offset; DMA_MAPPING_ERROR when either fails (the
 *   IOVA is freed when iommu_map fails).
 * - `mapSg`: the in-place trick of iommu_dma_map_sg: each entry widened to
 *   whole granules, a segment that would cross the segment boundary pads the
 *   previous one up to it, ONE contiguous IOVA allocation, iommu_map_sg (one
 *   iommu_map per physically contiguous run; the padding maps the frames that
 *   follow the padded entry, as the kernel does), then __finalise_sg merges:
 *   entry k joins the open output segment only if a segment is open, k starts
 *   at offset 0 of its granule, the running address is not on a segment
 *   boundary, and cur_len + len <= max_segment_size; an entry ending before
 *   its granule's end closes the segment; trailing entries get
 *   DMA_MAPPING_ERROR / 0. Failures return -ENOMEM (IOVA space, iommu_map) with
 *   the list invalidated and the IOVA freed.
 * - `unmapSg` unmaps one IOVA range, from the first segment to the end of the
 *   last segment with a non-zero length.
 * - Unmap: strict mode syncs the IOTLB and frees the IOVA into the rcache at
 *   once; lazy mode queues it on the flush queue (reusable only after a
 *   batched flush). `iotlbFlushes` counts every IOTLB flush of the domain.
 * - The domain starts at pfn max(1, aperture start) and reserves the IOMMU's
 *   reserved regions except sw-msi (iova_reserve_iommu_regions); PCI host
 *   bridge windows are not modelled.
 *
 * Invariants: every live mapping's IOVA range is allocated in `iovad`; the
 * IOMMU domain maps exactly the granules of live mappings (and of lazily freed
 * ones until the next flush, whose page tables are already cleared).
 */
import type { ReservedRegion } from "../iommu/iommu-domain.js";
import { ERRNO } from "../errors/errno.js";
import { PAGE_SIZE } from "../address/address.js";
import { DMA_MAPPING_ERROR, dmaAddrOf, dmaBitMask, dmaHiOf, dmaLoOf, dmaOffsetOf, dmaPageOf, dmaPageOfHalves, minNotZero, type DmaDirection } from "./dma-addr.js";
import { IOVA_RANGE_CACHE_MAX_SIZE, fls, roundupPowOfTwo } from "./iova-domain.js";
import { IovaOps, type IovaOpsOptions } from "./iova-ops.js";
import type { DmaDevice } from "./dma-device.js";
import type { Scatterlist } from "./scatterlist.js";

const GRANULE = PAGE_SIZE;
const SHIFT = 12;
const DMA_BIT_MASK_32 = dmaBitMask(32);

export interface DmaIommuOptions extends IovaOpsOptions {
  /** 'per-call' (5.x-6.3: every map tries below 4 GiB first) or 'sticky' (6.4+ pci_32bit_workaround). */
  readonly sacPolicy?: "per-call" | "sticky";
  /** The group's reserved regions; each but sw-msi is reserved in the IOVA space. */
  readonly reservedRegions?: readonly ReservedRegion[];
}

export class DmaIommuDomain extends IovaOps {
  readonly kind = "dma-iommu" as const;
  readonly sacPolicy: "per-call" | "sticky";
  #scratch = new Float64Array(64);

  /** iommu_dma_init_domain (+ iommu_dma_init_fq in lazy mode). */
  constructor(options: DmaIommuOptions) {
    const pgsize = options.domain.pgsizeBitmap & -options.domain.pgsizeBitmap;
    if (pgsize !== BigInt(GRANULE)) throw new RangeError(`the DMA domain needs a 4 KiB smallest page size, the IOMMU offers ${pgsize}`);
    const startPfn = Math.max(1, Number(options.domain.hw.aperture.start >> BigInt(SHIFT)));
    const reserved = (options.reservedRegions ?? [])
      .filter((r) => r.type !== "sw-msi")
      .map((r) => [Number(r.start >> BigInt(SHIFT)), Number((r.start + r.length - 1n) >> BigInt(SHIFT))] as const);
    super(options, GRANULE, startPfn, reserved);
    this.sacPolicy = options.sacPolicy ?? "per-call";
  }

  /**
   * iommu_dma_alloc_iova: `bytes` (granule-aligned) of IOVA at or below
   * `dmaLimit`; returns the first IOVA page, or 0 on failure.
   */
  allocIova(dev: DmaDevice, bytes: number, dmaLimit: bigint): number {
    let iovaLen = bytes / GRANULE;
    if (iovaLen < 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)) iovaLen = roundupPowOfTwo(iovaLen);
    let limit = minNotZero(dmaLimit, dev.busDmaLimit);
    const apertureEnd = this.domain.hw.aperture.last;
    if (apertureEnd < limit) limit = apertureEnd;
    if (limit > DMA_BIT_MASK_32 && dev.isPci && !this.forcedac && (this.sacPolicy === "per-call" || dev.pci32bitWorkaround)) {
      const pfn = this.iovad.allocIovaFast(iovaLen, Number(DMA_BIT_MASK_32 >> BigInt(SHIFT)), false);
      if (pfn !== 0) return pfn;
      if (this.sacPolicy === "sticky") {
        dev.pci32bitWorkaround = false;
        this.log.prWarn(`${dev.name}: Using ${fls(Number(limit >> 32n)) + 32}-bit DMA addresses`);
      }
    }
    return this.iovad.allocIovaFast(iovaLen, Number(limit >> BigInt(SHIFT)), true);
  }

  /** iommu_dma_free_iova without a gather: straight back to the rcache. */
  freeIova(pfn: number, pages: number): void {
    this.iovad.freeIovaFast(pfn, pages);
  }

  /** iommu_dma_map_page: `size` bytes at `offset` into frame `pfn` (and the frames after it). */
  mapPage(dev: DmaDevice, pfn: number, offset: number, size: number, _dir: DmaDirection): bigint {
    const pages = Math.ceil((offset + size) / GRANULE);
    const iova = this.allocIova(dev, pages * GRANULE, dev.dmaMask);
    if (iova === 0) return DMA_MAPPING_ERROR;
    if (this.domain.map(iova, pfn, pages) < 0) {
      this.freeIova(iova, pages);
      return DMA_MAPPING_ERROR;
    }
    return dmaAddrOf(iova, offset);
  }

  /** iommu_dma_unmap_page. */
  unmapPage(_dev: DmaDevice, addr: bigint, size: number, _dir: DmaDirection): void {
    const off = dmaOffsetOf(addr);
    this.#unmap(dmaPageOf(addr), Math.ceil((off + size) / GRANULE));
  }

  /** iommu_dma_map_sg: the segment count, or a negative errno (-ENOMEM). */
  mapSg(dev: DmaDevice, sg: Scatterlist, nents: number, _dir: DmaDirection): number {
    if (this.#scratch.length < nents) this.#scratch = new Float64Array(Math.max(nents, this.#scratch.length * 2));
    const iovaLens = this.#scratch;
    const boundary = dev.segmentBoundaryBytes;
    let iovaLen = 0;
    let prev = -1;
    // The common list, whole pages that cannot reach a segment boundary, needs no per-entry arithmetic.
    let wholePages = nents * GRANULE <= boundary;
    for (let i = 0; wholePages && i < nents; i++) wholePages = sg.offset[i] === 0 && sg.length[i] === GRANULE;
    if (wholePages) {
      iovaLens.fill(GRANULE, 0, nents);
      iovaLen = nents * GRANULE;
    }
    for (let i = 0; !wholePages && i < nents; i++) {
      const off = sg.offset[i]! & (GRANULE - 1);
      const rem = iovaLen % boundary;
      const pad = rem === 0 ? 0 : boundary - rem; // (mask - iova_len + 1) & mask
      const sLength = Math.ceil((sg.length[i]! + off) / GRANULE) * GRANULE;
      iovaLens[i] = sLength;
      if (pad !== 0 && pad < sLength - 1) {
        iovaLens[prev] = iovaLens[prev]! + pad;
        iovaLen += pad;
      }
      iovaLen += sLength;
      prev = i;
    }
    if (iovaLen === 0) return this.#finalise(dev, sg, nents, 0);
    const iova = this.allocIova(dev, iovaLen, dev.dmaMask);
    if (iova === 0) {
      sg.invalidate(nents);
      return -ERRNO.ENOMEM;
    }
    // iommu_map_sg: one iommu_map per physically contiguous run.
    let mapped = 0;
    let runStart = 0;
    let runLen = 0;
    let ret = 0;
    for (let i = 0; i < nents; i++) {
      const pfn = sg.page[i]!;
      if (runLen !== 0 && pfn !== runStart + runLen) {
        ret = runLen === 1 ? this.domain.mapOne(iova + mapped, runStart) : this.domain.map(iova + mapped, runStart, runLen);
        if (ret !== 0) break;
        mapped += runLen;
        runLen = 0;
      }
      const pages = wholePages ? 1 : iovaLens[i]! / GRANULE;
      if (runLen !== 0) runLen += pages;
      else {
        runStart = pfn;
        runLen = pages;
      }
    }
    if (ret === 0 && runLen !== 0) {
      ret = this.domain.map(iova + mapped, runStart, runLen);
      if (ret === 0) mapped += runLen;
    }
    if (ret !== 0) {
      if (mapped !== 0) {
        this.domain.unmap(iova, mapped);
        this.domain.iotlbSync();
      }
      this.freeIova(iova, iovaLen / GRANULE);
      sg.invalidate(nents);
      return ret === -ERRNO.ENOMEM || ret === -ERRNO.EREMOTEIO ? ret : -ERRNO.EINVAL;
    }
    return wholePages && dev.maxSegmentSize >= GRANULE ? this.#finaliseWholePages(dev, sg, nents, iova) : this.#finalise(dev, sg, nents, iova);
  }

  /**
   * __finalise_sg for a list of whole pages (offset 0, a granule each): every
   * entry starts on a granule and ends on its end, so a segment runs until the
   * next segment boundary or until max_segment_size is full; it is written
   * once per segment. Needs max_segment_size >= a granule (below that the
   * kernel's unsigned arithmetic lets entries join, which only #finalise models).
   */
  #finaliseWholePages(dev: DmaDevice, sg: Scatterlist, nents: number, iova: number): number {
    const boundaryPages = dev.segmentBoundaryPages;
    const perSegment = Math.floor(dev.maxSegmentSize / GRANULE);
    let cur = 0;
    for (let i = 0, page = iova; i < nents; cur++) {
      const pages = Math.min(nents - i, perSegment, boundaryPages - (page % boundaryPages));
      sg.dmaAddrHi[cur] = dmaHiOf(page);
      sg.dmaAddrLo[cur] = dmaLoOf(page, 0);
      sg.dmaLength[cur] = pages * GRANULE;
      i += pages;
      page += pages;
    }
    sg.dmaAddrHi.fill(0xffff_ffff, cur, nents);
    sg.dmaAddrLo.fill(0xffff_ffff, cur, nents);
    sg.dmaLength.fill(0, cur, nents);
    return cur;
  }

  /** iommu_dma_unmap_sg: one IOVA range, first segment to the end of the last non-empty one. */
  unmapSg(_dev: DmaDevice, sg: Scatterlist, nents: number, _dir: DmaDirection): void {
    if (sg.dmaLength[0] === 0) return;
    let last = 0;
    for (let i = 1; i < nents; i++) {
      if (sg.dmaLength[i] === 0) break;
      last = i;
    }
    const startPage = sg.dmaPage(0);
    const endByte = sg.dmaOffset(last) + sg.dmaLength[last]!;
    const endPage = dmaPageOfHalves(sg.dmaAddrHi[last]!, sg.dmaAddrLo[last]!) + Math.floor(endByte / GRANULE);
    this.#unmap(startPage, endPage - startPage + (endByte % GRANULE === 0 ? 0 : 1));
  }

  /** __iommu_dma_unmap. */
  #unmap(pfn: number, pages: number): void {
    const unmapped = this.domain.unmap(pfn, pages);
    this.log.warnOn(unmapped !== pages, "__iommu_dma_unmap", "WARN_ON(unmapped != size)", { iova: pfn * GRANULE, pages, unmapped });
    this.releaseIova(pfn, pages);
  }

  /** __finalise_sg: writes the merged segments; returns how many. */
  #finalise(dev: DmaDevice, sg: Scatterlist, nents: number, iova: number): number {
    const iovaLens = this.#scratch;
    const boundaryPages = dev.segmentBoundaryPages;
    const maxLen = dev.maxSegmentSize;
    let page = iova;
    let cur = 0;
    let curLen = 0;
    let count = 0;
    for (let i = 0; i < nents; i++) {
      const sIovaOff = sg.offset[i]! & (GRANULE - 1);
      const sLength = sg.length[i]!;
      const sIovaLen = iovaLens[i]!;
      sg.dmaAddrHi[i] = 0xffff_ffff;
      sg.dmaAddrLo[i] = 0xffff_ffff;
      sg.dmaLength[i] = 0;
      const onBoundary = page % boundaryPages === 0;
      // max_len - cur_len is unsigned int arithmetic: an entry longer than max_len lets the next one join, as in the kernel
      if (curLen !== 0 && sIovaOff === 0 && !onBoundary && (maxLen - curLen) >>> 0 >= sLength) {
        curLen += sLength;
      } else {
        if (i > 0) cur++;
        curLen = sLength;
        count++;
        sg.dmaAddrHi[cur] = dmaHiOf(page);
        sg.dmaAddrLo[cur] = dmaLoOf(page, sIovaOff);
      }
      sg.dmaLength[cur] = curLen;
      page += sIovaLen / GRANULE;
      if (sLength + sIovaOff < sIovaLen) curLen = 0;
    }
    return count;
  }
}
