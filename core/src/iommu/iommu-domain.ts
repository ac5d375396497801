/**
 * A simulated IOMMU paging domain (an iommu_domain of the IOMMU API).
 *
 * Model: a sparse page table from IOVA page to host frame, kept in 64K-page
 * typed-array chunks (0 = not mapped), so a terabyte of mappings costs 4 bytes
 * a page and no JavaScript object per page. Page-size support is declared
 * (`pgsizeBitmap`) but the table always records 4 KiB granules; a large page is
 * its run of granules. `iotlbSyncs` counts IOTLB flushes.
 *
 * Invariant: mappedPages = number of non-zero entries.
 */
import type { FaultInjector } from "../host/fault-injector.js";
import type { Range } from "../address/range.js";
import { ERRNO } from "../errors/errno.js";

const CHUNK_SHIFT = 16;
const CHUNK_PAGES = 1 << CHUNK_SHIFT;
const CHUNK_MASK = CHUNK_PAGES - 1;

export type ReservedRegionType = "direct" | "direct-relaxable" | "reserved" | "msi" | "sw-msi";

export interface ReservedRegion {
  readonly start: bigint;
  readonly length: bigint;
  readonly type: ReservedRegionType;
}

/** What an IOMMU driver offers the domains it allocates. */
export interface IommuHardware {
  /** Identity of the driver's ops: domains can be shared only between groups of the same driver. */
  readonly driver: string;
  readonly aperture: Range;
  readonly pgsizeBitmap: bigint;
  /** Interrupt remapping / MSI isolation. */
  readonly msiIsolation: boolean;
  readonly enforceCacheCoherency: boolean;
}

/** Runs taken out of a domain and not yet unpinned: what vfio_unmap_unpin collects between IOTLB syncs. */
export class UnmappedRuns {
  readonly iova: Float64Array;
  readonly pfn: Float64Array;
  readonly len: Float64Array;
  count = 0;

  constructor(capacity: number) {
    this.iova = new Float64Array(capacity);
    this.pfn = new Float64Array(capacity);
    this.len = new Float64Array(capacity);
  }

  get full(): boolean {
    return this.count === this.iova.length;
  }
}

let nextDomainId = 1;

export class IommuDomain {
  readonly id = nextDomainId++;
  mappedPages = 0;
  iotlbSyncs = 0;
  readonly #chunks = new Map<number, Uint32Array>();
  /** First IOVA page of the chunk last looked up (-CHUNK_PAGES: none), and that chunk. */
  #lastBase = -CHUNK_PAGES;
  #lastChunk: Uint32Array | undefined;

  /** The aperture in pages, so the map path compares small numbers. */
  readonly #firstPage: number;
  readonly #lastPage: number;

  constructor(
    readonly hw: IommuHardware,
    private readonly faults: FaultInjector,
  ) {
    this.#firstPage = Number((hw.aperture.start + 0xfffn) >> 12n);
    this.#lastPage = Number((hw.aperture.last + 1n) >> 12n) - 1;
  }

  /** A map outside the aperture fails as the IOMMU driver's address-width check does (-EFAULT). */
  #outside(iovaPage: number, npages: number): boolean {
    return iovaPage < this.#firstPage || iovaPage + npages - 1 > this.#lastPage;
  }

  get pgsizeBitmap(): bigint {
    return this.hw.pgsizeBitmap;
  }

  /** iommu_map of a physically contiguous run: 0 or a negative errno, nothing mapped on failure. */
  map(iovaPage: number, pfn: number, npages: number): number {
    if (this.#outside(iovaPage, npages)) return -ERRNO.EFAULT;
    if (this.faults.shouldFail("iommu_map")) return -ERRNO.ENOMEM;
    for (let i = 0; i < npages; ) {
      const page = iovaPage + i;
      const chunk = this.#chunk(page, true)!;
      const at = page & CHUNK_MASK;
      const n = Math.min(npages - i, CHUNK_PAGES - at);
      const f = pfn + i - at;
      for (let k = at; k < at + n; k++) chunk[k] = f + k;
      i += n;
    }
    this.mappedPages += npages;
    return 0;
  }

  /** Writes each frame of `frames[from..from+npages)` at consecutive IOVA pages. */
  mapFrames(iovaPage: number, frames: Uint32Array, from: number, npages: number): number {
    if (this.#outside(iovaPage, npages)) return -ERRNO.EFAULT;
    if (this.faults.shouldFail("iommu_map")) return -ERRNO.ENOMEM;
    for (let i = 0; i < npages; ) {
      const page = iovaPage + i;
      const chunk = this.#chunk(page, true)!;
      const at = page & CHUNK_MASK;
      const n = Math.min(npages - i, CHUNK_PAGES - at);
      chunk.set(frames.subarray(from + i, from + i + n), at);
      i += n;
    }
    this.mappedPages += npages;
    return 0;
  }

  /** iommu_unmap: clears [iovaPage, iovaPage + npages) and returns how many were mapped. */
  unmap(iovaPage: number, npages: number): number {
    let cleared = 0;
    for (let i = 0; i < npages; ) {
      const page = iovaPage + i;
      const at = page & CHUNK_MASK;
      const n = Math.min(npages - i, CHUNK_PAGES - at);
      const chunk = this.#chunk(page, false);
      if (chunk !== undefined) {
        for (let k = at; k < at + n; k++) {
          if (chunk[k] !== 0) {
            chunk[k] = 0;
            cleared++;
          }
        }
      }
      i += n;
    }
    this.mappedPages -= cleared;
    return cleared;
  }

  /** iommu_iova_to_phys, as a frame: 0 when not mapped. */
  iovaToPfn(iovaPage: number): number {
    const chunk = this.#chunk(iovaPage, false);
    return chunk === undefined ? 0 : chunk[iovaPage & CHUNK_MASK]!;
  }

  /** Length of the physically contiguous mapped run starting at `iovaPage`, at most `max`. */
  contiguousRun(iovaPage: number, first: number, max: number): number {
    let n = 1;
    while (n < max) {
      const page = iovaPage + n;
      const chunk = this.#chunk(page, false);
      if (chunk === undefined) break;
      const at = page & CHUNK_MASK;
      const end = at + Math.min(max - n, CHUNK_PAGES - at);
      const f = first + n - at;
      let k = at;
      while (k < end && chunk[k] === f + k) k++;
      n += k - at;
      if (k < end) break;
    }
    return n;
  }

  /**
   * The unmap walk of vfio_unmap_unpin, one step: from `iovaPage`, not past
   * `end`, takes each physically contiguous mapped run in turn (as
   * iovaToPfn + contiguousRun + unmap would), clears it and appends it to
   * `runs`. Stops at an unmapped page, at `end`, or when `runs` is full;
   * returns the page it stopped at.
   */
  unmapRuns(iovaPage: number, end: number, runs: UnmappedRuns): number {
    const iovas = runs.iova;
    const pfns = runs.pfn;
    const lens = runs.len;
    const capacity = iovas.length;
    let count = runs.count;
    let page = iovaPage;
    let cleared = 0;
    let chunk = this.#chunk(page, false);
    let at = page & CHUNK_MASK;
    while (page < end && count < capacity && chunk !== undefined) {
      const pfn = chunk[at]!;
      if (pfn === 0) break;
      const start = page;
      let len = 0;
      // The run: consecutive frames from `pfn`, across chunk boundaries, cleared as they are read.
      for (;;) {
        chunk[at] = 0;
        len++;
        page++;
        at = (at + 1) & CHUNK_MASK;
        if (page >= end) break;
        if (at === 0) {
          chunk = this.#chunk(page, false);
          if (chunk === undefined) break;
        }
        if (chunk[at] !== pfn + len) break;
      }
      cleared += len;
      iovas[count] = start;
      pfns[count] = pfn;
      lens[count] = len;
      count++;
    }
    runs.count = count;
    this.mappedPages -= cleared;
    return page;
  }

  iotlbSync(): void {
    this.iotlbSyncs++;
  }

  #chunk(page: number, create: boolean): Uint32Array | undefined {
    const base = this.#lastBase;
    if (page >= base && page < base + CHUNK_PAGES) return this.#lastChunk;
    const key = Math.floor(page / CHUNK_PAGES);
    let chunk = this.#chunks.get(key);
    if (chunk === undefined) {
      if (!create) return undefined;
      chunk = new Uint32Array(CHUNK_PAGES);
      this.#chunks.set(key, chunk);
    }
    this.#lastBase = key * CHUNK_PAGES;
    this.#lastChunk = chunk;
    return chunk;
  }
}
