/**
 * A simulated IOMMU paging domain (an iommu_domain of the IOMMU API).
 *
 * Model: a sparse page table from IOVA page to host frame, kept in 64K-page
 * typed-array chunks (0 = not mapped), so a terabyte of mappings costs 4 bytes
 * a page and no JavaScript object per page. When the hardware has 2 MiB pages
 * (`pgsizeBitmap`), a map of an aligned 2 MiB run to an aligned 2 MiB block is
 * one large entry (the block's first frame) in a second table, as an IOMMU
 * driver would use a superpage; a partial unmap or map over it splits it back
 * into granules first. `iotlbSyncs` counts IOTLB flushes.
 *
 * Invariants: mappedPages = non-zero granules + 512 per large entry; a window
 * with a large entry has no non-zero granule.
 */
import type { FaultInjector } from "../host/fault-injector.js";
import type { Range } from "../address/range.js";
import { ERRNO } from "../errors/errno.js";

const CHUNK_SHIFT = 16;
const CHUNK_PAGES = 1 << CHUNK_SHIFT;
const CHUNK_MASK = CHUNK_PAGES - 1;
/** A 2 MiB window, in pages, and how many windows one chunk of the large-entry table covers. */
const LARGE_PAGES = 512;
const LARGE_MASK = LARGE_PAGES - 1;
const LARGE_CHUNK_WINDOWS = 1 << 16;
const SZ_2M = 0x200000n;

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
  /** Frames and run lengths are u32, as in the page table. */
  readonly pfn: Uint32Array;
  readonly len: Uint32Array;
  count = 0;

  constructor(capacity: number) {
    this.iova = new Float64Array(capacity);
    this.pfn = new Uint32Array(capacity);
    this.len = new Uint32Array(capacity);
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

  /** Large entries, by 2 MiB window: the first frame of the block, 0 = none. Used only when the hardware has 2 MiB pages. */
  readonly #largeChunks = new Map<number, Uint32Array>();
  readonly #largeOk: boolean;
  /** Live large entries; while 0, no lookup needs the large table. */
  #largeCount = 0;
  #lastLargeBase = -LARGE_CHUNK_WINDOWS;
  #lastLargeChunk: Uint32Array | undefined;

  constructor(
    readonly hw: IommuHardware,
    private readonly faults: FaultInjector,
  ) {
    this.#firstPage = Number((hw.aperture.start + 0xfffn) >> 12n);
    this.#lastPage = Number((hw.aperture.last + 1n) >> 12n) - 1;
    this.#largeOk = (hw.pgsizeBitmap & SZ_2M) !== 0n;
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
    if (this.#largeCount !== 0) this.#splitAll(iovaPage, npages);
    for (let i = 0; i < npages; ) {
      const page = iovaPage + i;
      if (this.#largeOk && (page & LARGE_MASK) === 0 && ((pfn + i) & LARGE_MASK) === 0 && npages - i >= LARGE_PAGES && this.#granulesClear(page)) {
        // A superpage; no large entry is there (#splitAll turned any into granules).
        this.#largeSlot(page, true)![this.#largeAt(page)] = pfn + i;
        this.#largeCount++;
        i += LARGE_PAGES;
        continue;
      }
      const chunk = this.#chunk(page, true)!;
      const at = page & CHUNK_MASK;
      // Up to the next window where a large entry could start, at most to the chunk's end.
      const n = Math.min(npages - i, CHUNK_PAGES - at, this.#largeOk ? LARGE_PAGES - (page & LARGE_MASK) : CHUNK_PAGES);
      const f = pfn + i - at;
      const stop = at + n;
      let k = at;
      for (; k + 4 <= stop; k += 4) {
        chunk[k] = f + k;
        chunk[k + 1] = f + k + 1;
        chunk[k + 2] = f + k + 2;
        chunk[k + 3] = f + k + 3;
      }
      for (; k < stop; k++) chunk[k] = f + k;
      i += n;
    }
    this.mappedPages += npages;
    return 0;
  }

  /** iommu_map of a single granule: the same checks and fault site as map(), without the run machinery. */
  mapOne(iovaPage: number, pfn: number): number {
    if (this.#outside(iovaPage, 1)) return -ERRNO.EFAULT;
    if (this.faults.shouldFail("iommu_map")) return -ERRNO.ENOMEM;
    if (this.#largeCount !== 0) this.#splitAll(iovaPage, 1);
    this.#chunk(iovaPage, true)![iovaPage & CHUNK_MASK] = pfn;
    this.mappedPages++;
    return 0;
  }

  /** Writes each frame of `frames[from..from+npages)` at consecutive IOVA pages. */
  mapFrames(iovaPage: number, frames: Uint32Array, from: number, npages: number): number {
    if (this.#outside(iovaPage, npages)) return -ERRNO.EFAULT;
    if (this.faults.shouldFail("iommu_map")) return -ERRNO.ENOMEM;
    if (this.#largeCount !== 0) this.#splitAll(iovaPage, npages);
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
    let cleared = this.#largeCount === 0 ? 0 : this.#unmapLarge(iovaPage, npages);
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
    if (this.#largeCount !== 0) {
      const large = this.#largeSlot(iovaPage, false);
      const base = large === undefined ? 0 : large[this.#largeAt(iovaPage)]!;
      if (base !== 0) return base + (iovaPage & LARGE_MASK);
    }
    const chunk = this.#chunk(iovaPage, false);
    return chunk === undefined ? 0 : chunk[iovaPage & CHUNK_MASK]!;
  }

  /** Length of the physically contiguous mapped run starting at `iovaPage`, at most `max`. */
  contiguousRun(iovaPage: number, first: number, max: number): number {
    let n = 1;
    if (this.#largeCount !== 0) {
      while (n < max && this.iovaToPfn(iovaPage + n) === first + n) n++;
      return n;
    }
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
    if (this.#largeCount !== 0) return this.#unmapRunsLarge(iovaPage, end, runs);
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

  /** unmapRuns() when large entries exist: the same walk, a whole large entry at a time where the range covers it. */
  #unmapRunsLarge(iovaPage: number, end: number, runs: UnmappedRuns): number {
    this.#splitLarge(iovaPage, end - iovaPage);
    let page = iovaPage;
    let count = runs.count;
    const capacity = runs.iova.length;
    while (page < end && count < capacity) {
      const pfn = this.iovaToPfn(page);
      if (pfn === 0) break;
      const start = page;
      let len = 0;
      for (;;) {
        // Take the rest of a large entry at once, else one granule.
        const large = this.#largeSlot(page, false);
        const at = this.#largeAt(page);
        if (large !== undefined && large[at] !== 0) {
          large[at] = 0;
          this.#largeCount--;
          len += LARGE_PAGES;
          page += LARGE_PAGES;
          this.mappedPages -= LARGE_PAGES;
        } else {
          this.#chunk(page, false)![page & CHUNK_MASK] = 0;
          len++;
          page++;
          this.mappedPages--;
        }
        if (page >= end || this.iovaToPfn(page) !== pfn + len) break;
      }
      runs.iova[count] = start;
      runs.pfn[count] = pfn;
      runs.len[count] = len;
      count++;
    }
    runs.count = count;
    return page;
  }

  /** Clears the large entries wholly inside [iovaPage, iovaPage + npages), after splitting those it covers in part; returns the pages cleared (mappedPages is the caller's). */
  #unmapLarge(iovaPage: number, npages: number): number {
    this.#splitLarge(iovaPage, npages);
    let cleared = 0;
    const end = iovaPage + npages;
    for (let w = Math.ceil(iovaPage / LARGE_PAGES) * LARGE_PAGES; w + LARGE_PAGES <= end && this.#largeCount !== 0; w += LARGE_PAGES) {
      const large = this.#largeSlot(w, false);
      if (large === undefined) {
        w = (Math.floor(w / (LARGE_PAGES * LARGE_CHUNK_WINDOWS)) + 1) * LARGE_PAGES * LARGE_CHUNK_WINDOWS - LARGE_PAGES;
        continue;
      }
      const at = this.#largeAt(w);
      if (large[at] !== 0) {
        large[at] = 0;
        this.#largeCount--;
        cleared += LARGE_PAGES;
      }
    }
    return cleared;
  }

  /** Turns the large entries of the windows that [iovaPage, iovaPage + npages) covers only in part back into granules. */
  #splitLarge(iovaPage: number, npages: number): void {
    if (npages <= 0) return;
    const last = iovaPage + npages - 1;
    if ((iovaPage & LARGE_MASK) !== 0) this.#split(iovaPage - (iovaPage & LARGE_MASK));
    if (((last + 1) & LARGE_MASK) !== 0) this.#split(last - (last & LARGE_MASK));
  }

  /** Turns the large entries of every window that [iovaPage, iovaPage + npages) touches back into granules (a map over them). */
  #splitAll(iovaPage: number, npages: number): void {
    const end = iovaPage + npages;
    for (let w = iovaPage - (iovaPage & LARGE_MASK); w < end && this.#largeCount !== 0; w += LARGE_PAGES) this.#split(w);
  }

  #split(window: number): void {
    const large = this.#largeSlot(window, false);
    if (large === undefined) return;
    const at = this.#largeAt(window);
    const base = large[at]!;
    if (base === 0) return;
    large[at] = 0;
    this.#largeCount--;
    const chunk = this.#chunk(window, true)!;
    const from = window & CHUNK_MASK;
    for (let k = 0; k < LARGE_PAGES; k++) chunk[from + k] = base + k;
  }

  /** Whether no granule of the window starting at `page` is mapped (so a large entry may go there). */
  #granulesClear(page: number): boolean {
    const chunk = this.#chunk(page, false);
    if (chunk === undefined) return true;
    const from = page & CHUNK_MASK;
    for (let k = from; k < from + LARGE_PAGES; k++) if (chunk[k] !== 0) return false;
    return true;
  }

  #largeAt(page: number): number {
    return Math.floor(page / LARGE_PAGES) - this.#lastLargeBase;
  }

  /** The large-entry chunk holding the window of `page`; on success `#lastLargeBase` is its first window. */
  #largeSlot(page: number, create: boolean): Uint32Array | undefined {
    const window = Math.floor(page / LARGE_PAGES);
    const base = this.#lastLargeBase;
    if (window >= base && window < base + LARGE_CHUNK_WINDOWS) return this.#lastLargeChunk;
    const key = Math.floor(window / LARGE_CHUNK_WINDOWS);
    let chunk = this.#largeChunks.get(key);
    if (chunk === undefined) {
      if (!create) return undefined;
      chunk = new Uint32Array(LARGE_CHUNK_WINDOWS);
      this.#largeChunks.set(key, chunk);
    }
    this.#lastLargeBase = key * LARGE_CHUNK_WINDOWS;
    this.#lastLargeChunk = chunk;
    return chunk;
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
