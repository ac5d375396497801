/**
 * kvmgt's per-vGPU DMA cache (`struct gvt_dma`, vendors.md 1.1): each entry is
 * one guest mapping `{gfn, dmaAddr, size (4K or 2M), kref}` made for the
 * parent GPU, found by GFN (the invalidation path, VFIO speaks GFN ranges) or
 * by DMA address (the teardown path, shadow PTEs hold only DMA addresses).
 *
 * How an entry is made, and why its pins are counted as kvmgt's:
 * - 4K: one `services.translate({start: gfn, npages: 1}, {prot: READ|WRITE,
 *   device: parent})`, which pins the one frame (one pin call of one frame, as
 *   gvt_pin_guest_page) and maps it for the parent (dma_map_page). The
 *   translation handle is the entry's pin and mapping.
 * - 2M: first pinned page by page with `services.pinPages(gfn + k, 1)`, each
 *   host frame checked to be `base + k` (the 2023 "pages are not continuous"
 *   check; at the first gap everything pinned so far is unpinned in one call
 *   and the result is -EINVAL). Then one translate of the 512 frames maps the
 *   run (dma_map_page of a 2 MiB page): it takes the entry's own reference on
 *   each frame, already pinned so charged nothing, and the page-by-page
 *   references are dropped in one unpin. The run must come back as 512
 *   consecutive device addresses, as dma_map_page of a compound page does;
 *   otherwise the mapping is undone and the result is -ENOMEM, the
 *   dma_mapping_error path.
 * Either way a live entry holds exactly one pin reference per frame and one
 * device mapping, released together with `services.release` exactly once.
 *
 * Invariants (checked by the tests): the two indexes hold the same entries;
 * every entry has kref >= 1; `size` is the number of live entries; nothing is
 * pinned or mapped for this vGPU that no entry owns.
 *
 * Errors are kernel return codes on the internal paths (a negative errno, the
 * hot path throws nothing); the kernel-named entry points throw KernelError.
 */
import { ERRNO, KernelError, errnoName, type TranslationHandle, type VgpuServices } from "@vgpu-iommu/core";
import { FrameIndex } from "./frame-index.js";
import { PAGES_PER_2M, PAGE_SIZE, PROT_RW, SIZE_2M, SIZE_4K } from "./gvt-params.js";

const NONE = -1;

/** A view of one entry, for inspection; the cache itself keeps none of these. */
export interface DmaCacheEntry {
  readonly gfn: number;
  readonly dmaAddr: number;
  /** In bytes: 4096 or 2 MiB. */
  readonly size: number;
  readonly kref: number;
}

export interface DmaCacheCounters {
  /** translate calls made for the parent device (one per entry created). */
  maps: number;
  /** Single-frame pinPages calls of the 2M path. */
  pagePins: number;
  /** Entries released (unmapped and unpinned). */
  releases: number;
  /** Releases whose translation the core had already revoked (an invalidation got there first). */
  revoked: number;
  /** Map attempts that failed, by any cause. */
  failures: number;
  /** 2M attempts refused by the contiguity check. */
  notContiguous: number;
}

export class GvtDmaCache {
  readonly counters: DmaCacheCounters = { maps: 0, pagePins: 0, releases: 0, revoked: 0, failures: 0, notContiguous: 0 };
  /** INTEL_VGPU_STATUS_ATTACHED: set by open, cleared by close. */
  attached = false;

  readonly #byGfn = new FrameIndex();
  readonly #byDma = new FrameIndex();
  #gfn = new Float64Array(64);
  #dmaPage = new Float64Array(64);
  #npages = new Uint16Array(64);
  #kref = new Uint32Array(64);
  #handles: (TranslationHandle | undefined)[] = [];
  #free: number[] = [];
  #top = 0;
  /** Reused request objects: translate copies the frames before it returns. */
  readonly #frame = { start: 0, npages: 1 };
  readonly #options: { prot: number; device: VgpuServices["parentDevice"] };
  readonly #pfn1 = new Uint32Array(1);
  /** The translation the last successful #map4k/#map2m made, handed to the new slot. */
  #lastHandle: TranslationHandle | undefined;

  constructor(private readonly services: VgpuServices) {
    this.#options = { prot: PROT_RW, device: services.parentDevice };
  }

  get size(): number {
    return this.#byGfn.size;
  }

  /**
   * intel_gvt_dma_map_guest_page on the hot path: the DMA page number of the
   * mapping of `npages` (1 or 512) frames from `gfn`, or a negative errno.
   */
  map(gfn: number, npages: number): number {
    if (!this.attached) return -ERRNO.EINVAL;
    let slot = this.#byGfn.get(gfn);
    if (slot !== NONE) {
      if (this.#npages[slot] === npages) {
        this.#kref[slot]!++;
        return this.#dmaPage[slot]!;
      }
      // Same gfn, other size: the old entry goes whatever its refcount.
      this.#release(slot);
    }
    const r = npages === 1 ? this.#map4k(gfn) : this.#map2m(gfn);
    if (r < 0) {
      this.counters.failures++;
      return r;
    }
    slot = this.#take();
    this.#gfn[slot] = gfn;
    this.#dmaPage[slot] = r;
    this.#npages[slot] = npages;
    this.#kref[slot] = 1;
    this.#handles[slot] = this.#lastHandle;
    this.#lastHandle = undefined;
    this.#byGfn.set(gfn, slot);
    this.#byDma.set(r, slot);
    return r;
  }

  /** intel_gvt_dma_pin_guest_page by DMA page: 0, -ENODEV when detached, -ENOMEM when not cached. */
  pinByDma(dmaPage: number): number {
    if (!this.attached) return -ERRNO.ENODEV;
    const slot = this.#byDma.get(dmaPage);
    if (slot === NONE) return -ERRNO.ENOMEM;
    this.#kref[slot]!++;
    return 0;
  }

  /** intel_gvt_dma_unmap_guest_page by DMA page: kref_put; unknown addresses and a detached vGPU are ignored. */
  unmapByDma(dmaPage: number): void {
    if (!this.attached) return;
    const slot = this.#byDma.get(dmaPage);
    if (slot === NONE) return;
    if (--this.#kref[slot]! === 0) this.#release(slot);
  }

  /**
   * intel_vgpu_dma_unmap: drops every entry whose GFN lies in
   * [firstGfn, firstGfn + npages), whatever its kref. A 2M entry is found only
   * by its base GFN. Returns the entries dropped.
   */
  unmapRange(firstGfn: number, npages: number): number {
    let dropped = 0;
    if (npages <= this.#byGfn.size * 4) {
      for (let g = firstGfn, end = firstGfn + npages; g < end; g++) {
        const slot = this.#byGfn.get(g);
        if (slot === NONE) continue;
        this.#release(slot);
        dropped++;
      }
      return dropped;
    }
    // Fewer entries than pages: the same set, found from the entries.
    const end = firstGfn + npages;
    for (let slot = 0; slot < this.#top; slot++) {
      if (this.#kref[slot] === 0) continue;
      const g = this.#gfn[slot]!;
      if (g < firstGfn || g >= end) continue;
      this.#release(slot);
      dropped++;
    }
    return dropped;
  }

  /** gvt_cache_destroy: unmaps and unpins every entry, one at a time. Returns how many. */
  destroy(): number {
    let dropped = 0;
    for (let slot = 0; slot < this.#top; slot++) {
      if (this.#kref[slot] === 0) continue;
      this.#release(slot);
      dropped++;
    }
    this.#top = 0;
    this.#free.length = 0;
    this.#handles.length = 0;
    return dropped;
  }

  /** The entry for `gfn`, for inspection. */
  lookupGfn(gfn: number): DmaCacheEntry | undefined {
    return this.#view(this.#byGfn.get(gfn));
  }

  /** The entry mapped at DMA page `dmaPage`, for inspection. */
  lookupDma(dmaPage: number): DmaCacheEntry | undefined {
    return this.#view(this.#byDma.get(dmaPage));
  }

  hasDma(dmaPage: number): boolean {
    return this.#byDma.get(dmaPage) !== NONE;
  }

  /** Sum of all krefs. */
  totalRefs(): number {
    let n = 0;
    for (let slot = 0; slot < this.#top; slot++) n += this.#kref[slot]!;
    return n;
  }

  /** Guest frames held pinned by the cache (a 2M entry counts 512). */
  pinnedFrames(): number {
    let n = 0;
    for (let slot = 0; slot < this.#top; slot++) if (this.#kref[slot]! > 0) n += this.#npages[slot]!;
    return n;
  }

  /** Checks the two indexes against the slots; returns the first inconsistency, or undefined. */
  checkConsistency(): string | undefined {
    let live = 0;
    for (let slot = 0; slot < this.#top; slot++) {
      if (this.#kref[slot] === 0) continue;
      live++;
      if (this.#byGfn.get(this.#gfn[slot]!) !== slot) return `gfn index misses slot ${slot}`;
      if (this.#byDma.get(this.#dmaPage[slot]!) !== slot) return `dma index misses slot ${slot}`;
      if (this.#handles[slot] === undefined) return `slot ${slot} has no translation`;
    }
    if (live !== this.#byGfn.size || live !== this.#byDma.size) return `index sizes ${this.#byGfn.size}/${this.#byDma.size} for ${live} entries`;
    return undefined;
  }

  // Kernel-named entry points (throwing), for callers outside the hot paths.

  /** intel_gvt_dma_map_guest_page: the DMA address of `size` bytes (4K or 2M) from `gfn`. */
  dmaMapGuestPage(gfn: number, size: number): number {
    if (size !== SIZE_4K && size !== SIZE_2M) throw new KernelError("EINVAL", "gvt-dma-bad-size", { size });
    const r = this.map(gfn, size / PAGE_SIZE);
    if (r < 0) throw errnoError(r, "gvt-dma-map-failed", { gfn, size });
    return r * PAGE_SIZE;
  }

  dmaPinGuestPage(dmaAddr: number): void {
    const r = this.pinByDma(dmaAddr / PAGE_SIZE);
    if (r < 0) throw errnoError(r, r === -ERRNO.ENODEV ? "gvt-not-attached" : "gvt-dma-not-cached", { dmaAddr });
  }

  dmaUnmapGuestPage(dmaAddr: number): void {
    this.unmapByDma(dmaAddr / PAGE_SIZE);
  }

  #map4k(gfn: number): number {
    this.#frame.start = gfn;
    this.#frame.npages = 1;
    let t;
    try {
      t = this.services.translate(this.#frame, this.#options);
    } catch (e) {
      return mapErrno(e);
    }
    this.counters.maps++;
    this.#lastHandle = t.handle;
    const addr = t.dmaAddrs![0]!;
    return Number(addr) / PAGE_SIZE;
  }

  #map2m(gfn: number): number {
    const pfn = this.#pfn1;
    let base = 0;
    for (let k = 0; k < PAGES_PER_2M; k++) {
      try {
        this.services.pinPages(gfn + k, 1, PROT_RW, pfn);
      } catch (e) {
        if (k > 0) this.services.unpinPages(gfn, k);
        return errnoOf(e);
      }
      this.counters.pagePins++;
      if (k === 0) base = pfn[0]!;
      else if (pfn[0] !== base + k) {
        this.services.unpinPages(gfn, k + 1);
        this.counters.notContiguous++;
        return -ERRNO.EINVAL;
      }
    }
    this.#frame.start = gfn;
    this.#frame.npages = PAGES_PER_2M;
    let t;
    try {
      t = this.services.translate(this.#frame, this.#options);
    } catch (_e) {
      this.services.unpinPages(gfn, PAGES_PER_2M);
      return -ERRNO.ENOMEM;
    }
    // The translation holds the entry's reference now; drop the page-by-page ones.
    this.services.unpinPages(gfn, PAGES_PER_2M);
    const addrs = t.dmaAddrs!;
    const first = addrs[0]!;
    for (let k = 1; k < PAGES_PER_2M; k++) {
      if (addrs[k] !== first + BigInt(k * PAGE_SIZE)) {
        this.#safeRelease(t.handle);
        return -ERRNO.ENOMEM;
      }
    }
    this.counters.maps++;
    this.#lastHandle = t.handle;
    return Number(first) / PAGE_SIZE;
  }

  /** __gvt_dma_release: unmap, unpin, out of both indexes. */
  #release(slot: number): void {
    this.#byGfn.delete(this.#gfn[slot]!);
    this.#byDma.delete(this.#dmaPage[slot]!);
    this.#kref[slot] = 0;
    const handle = this.#handles[slot];
    this.#handles[slot] = undefined;
    this.#free.push(slot);
    if (handle !== undefined) this.#safeRelease(handle);
    this.counters.releases++;
  }

  /** Teardown never throws: a translation the core already revoked is counted, not raised. */
  #safeRelease(handle: TranslationHandle): void {
    try {
      this.services.release(handle);
    } catch (_e) {
      this.counters.revoked++;
    }
  }

  #take(): number {
    const reused = this.#free.pop();
    if (reused !== undefined) return reused;
    const slot = this.#top++;
    if (slot === this.#gfn.length) {
      const cap = slot * 2;
      this.#gfn = grow(this.#gfn, cap);
      this.#dmaPage = grow(this.#dmaPage, cap);
      this.#npages = grow(this.#npages, cap);
      this.#kref = grow(this.#kref, cap);
    }
    return slot;
  }

  #view(slot: number): DmaCacheEntry | undefined {
    if (slot === NONE) return undefined;
    return { gfn: this.#gfn[slot]!, dmaAddr: this.#dmaPage[slot]! * PAGE_SIZE, size: this.#npages[slot]! * PAGE_SIZE, kref: this.#kref[slot]! };
  }
}

function grow<T extends Float64Array | Uint16Array | Uint32Array>(a: T, cap: number): T {
  const b = new (a.constructor as new (n: number) => T)(cap);
  b.set(a);
  return b;
}

/** The errno a failed pin reports; anything that is not a KernelError is a bug and propagates. */
function errnoOf(e: unknown): number {
  if (e instanceof KernelError) return -e.errno;
  throw e;
}

/** A failed translate: a pin failure keeps its errno, a failed device mapping is -ENOMEM (gvt_dma_map_page). */
function mapErrno(e: unknown): number {
  if (e instanceof KernelError && e.reason === "dma-mapping-error") return -ERRNO.ENOMEM;
  return errnoOf(e);
}

/** A KernelError for a negative errno return code. */
export function errnoError(r: number, reason: string, fields: Record<string, unknown> = {}): KernelError {
  return new KernelError(errnoName(r) ?? "EIO", reason, { ...fields, errno: r });
}
