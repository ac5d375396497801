/**
 * One graphics-memory pool of the physical GPU (the mappable aperture, "low
 * GM", or the hidden "high GM"), carved into per-vGPU slices first fit, as
 * i915's drm_mm does for GVT's `alloc_gm`.
 *
 * Model: the pool is `[base, base + npages)` in 4 KiB pages; `used` holds the
 * allocated slices sorted by start, none overlapping. Sizes are whole pages.
 * `allocatedPages` is what `available_instances` divides (the kernel counts
 * totals, not holes, so an allocation may still fail with -ENOSPC when the
 * free pages are fragmented).
 */

export interface GmSlice {
  /** First page (GGTT index) of the slice. */
  readonly start: number;
  readonly npages: number;
}

export class GmSpace {
  readonly #used: GmSlice[] = [];
  #allocated = 0;

  constructor(
    readonly name: string,
    readonly base: number,
    readonly npages: number,
  ) {}

  get allocatedPages(): number {
    return this.#allocated;
  }

  get freePages(): number {
    return this.npages - this.#allocated;
  }

  /** The lowest hole of `npages` pages, taken; undefined when none is large enough. */
  allocate(npages: number): GmSlice | undefined {
    let cursor = this.base;
    let at = 0;
    for (; at < this.#used.length; at++) {
      const u = this.#used[at]!;
      if (u.start - cursor >= npages) break;
      cursor = u.start + u.npages;
    }
    if (at === this.#used.length && this.base + this.npages - cursor < npages) return undefined;
    const slice = { start: cursor, npages };
    this.#used.splice(at, 0, slice);
    this.#allocated += npages;
    return slice;
  }

  free(slice: GmSlice): void {
    const at = this.#used.indexOf(slice);
    if (at < 0) return;
    this.#used.splice(at, 1);
    this.#allocated -= slice.npages;
  }
}
