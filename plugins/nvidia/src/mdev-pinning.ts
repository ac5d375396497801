/**
 * Mode A of the NVIDIA-like vendor (vendors.md 2.2, 2.5): an mdev vGPU that
 * shares its parent GPU's requester ID, so RM asks the shim to pin guest frames
 * and, in IOVA mode, to map them for the parent device.
 *
 * - GET_HOST_PFN: frames pinned with the array-form pin in chunks of 512 (a
 *   short count is a WARN: what was pinned is unpinned and the request fails),
 *   then one gpfn_list reference per frame; host PFNs are returned.
 * - GET_IOVA: each chunk of up to 512 frames is one core translation on the
 *   parent device (`translate(frames, {prot, device: parentDevice})`), which
 *   pins every frame once and makes one scatter-gather mapping; a frame already
 *   in the mapping cache (or twice in one batch) fails the request with
 *   -EEXIST ("Guest PFN already pinned") after the batch is released again, as
 *   the shim pins before it checks; IOVA page numbers are returned. A request of more than 512 frames
 *   is several batches (the shim maps it as one sg table; the core caps a
 *   translation at 512 frames).
 * - RM unpin: host-PFN mode drops one pin and one reference per listed frame;
 *   IOVA mode unpins the listed frames and tears a batch down by its base frame.
 * - DMA_UNMAP notifier, for every frame of the notified range: a gpfn_list frame
 *   is unpinned ONCE (type1 notifies again while pins remain); a mapping-cache
 *   frame is unpinned and its slot cleared, a base frame keeps its node.
 * - close/reset sweep: every gpfn_list reference, every batch, cache freed.
 *
 * The one divergence from the shim, and why: the shim keeps a batch's sg
 * mapping after the notifier unpinned its pages (the IOVA outlives the pin).
 * The core's translate API does not allow that (an address must not stay
 * mapped to a frame that is no longer pinned), and its pin and mapping are one
 * handle. So when a batch loses a frame to the notifier or to a partial RM
 * unpin, its translation is released (one unmap, one unpin per member) and the
 * members that must stay pinned are pinned again with the array-form pin; the
 * node (base frame, IOVA, count) stays until RM unpins it or a sweep, exactly
 * as in the shim, and `mappingRevoked` reports that RM's IOVAs are now stale
 * (the parent's isolation check sees them as unmapped). Net pins per frame are
 * the shim's at every return; live device mappings are fewer.
 *
 * Invariants: after `dmaUnmap(range)` the vGPU holds no IOVA-mode pin in the
 * range and one host-PFN reference less on each listed frame there (zero for a
 * frame pinned once); `gpfnList.references + cache.pinnedFrames` is the number
 * of pins this vGPU holds; after `sweep` both are zero and no translation lives.
 */
import { IOMMU_READ, IOMMU_WRITE, KernelError, VFIO_PIN_PAGES_MAX_ENTRIES, type TranslationHandle, type VgpuServices } from "@vgpu-iommu/core";
import { GpfnList } from "./gpfn-list.js";
import { MappingCache, type BatchNode } from "./mapping-cache.js";
import type { AddrType, NvidiaVgpuEvents, RevokeReason } from "./events.js";

const PROT = IOMMU_READ | IOMMU_WRITE;
const MAX = VFIO_PIN_PAGES_MAX_ENTRIES;

type Emit = <K extends keyof NvidiaVgpuEvents>(event: K, ...args: Parameters<NvidiaVgpuEvents[K]>) => void;

export interface PinCounters {
  /** pinPagesArray calls and frames. */
  pinCalls: number;
  pinnedPages: number;
  /** unpinPagesArray calls and frames. */
  unpinCalls: number;
  unpinnedPages: number;
  /** Core translations made and released (each is one device mapping). */
  translations: number;
  releases: number;
  /** Frames pinned again after their batch's translation went. */
  repinnedPages: number;
}

export interface MdevPinningOptions {
  /** DMA_UNMAP on a host-PFN frame pinned N times: "once" drops one reference per notification (the shim); "all" drops them all. */
  readonly hostPfnUnmap?: "once" | "all";
}

export class MdevPinning {
  readonly gpfnList = new GpfnList();
  readonly cache = new MappingCache();
  readonly counters: PinCounters = { pinCalls: 0, pinnedPages: 0, unpinCalls: 0, unpinnedPages: 0, translations: 0, releases: 0, repinnedPages: 0 };
  readonly #scratch = new Uint32Array(MAX);
  readonly #unpinBuf = new Float64Array(MAX);

  constructor(
    private readonly vgpu: string,
    private readonly services: VgpuServices,
    private readonly emit: Emit,
    private readonly options: MdevPinningOptions = {},
  ) {}

  /** Pins held: host-PFN references plus IOVA-mode frames. */
  get pins(): number {
    return this.gpfnList.references + this.cache.pinnedFrames;
  }

  /** nv_vgpu_translate_gfn_to_pfn: fills `out` with host PFNs or IOVA page numbers. */
  translate(gpfns: ArrayLike<number>, mode: AddrType, out: Float64Array): void {
    const n = checkFrames(gpfns);
    if (out.length < n) throw new KernelError("EINVAL", "output-too-short", { npages: n, out: out.length });
    if (mode === "GET_HOST_PFN") this.#pinHostPfns(copyFrames(gpfns, 0, n), out);
    else this.#mapIova(gpfns, out);
    this.emit("translated", { vgpu: this.vgpu, mode, npages: n, batches: Math.ceil(n / MAX) });
  }

  /** nv_vgpu_unpin_pages; returns the frames that were pinned and are no longer. */
  unpin(gpfns: ArrayLike<number>, mode: AddrType): number {
    const list = copyFrames(gpfns, 0, checkFrames(gpfns));
    let done = 0;
    let notPinned = 0;
    if (mode === "GET_HOST_PFN") {
      let k = 0;
      for (let i = 0; i < list.length; i++) {
        if (!this.gpfnList.drop(list[i]!)) {
          notPinned++;
          continue;
        }
        this.#unpinBuf[k++] = list[i]!;
        if (k === MAX) k = this.#flushUnpin(k);
        done++;
      }
      this.#flushUnpin(k);
    } else {
      // RM usually gives back exactly the batches it was given, in order: release those whole.
      let p = 0;
      while (p < list.length) {
        const node = this.cache.node(this.cache.slot(list[p]!));
        if (node === undefined || node.handle === undefined || !node.nodeLive || !sameFrames(node.gfns, list, p)) break;
        done += this.#releaseWhole(node);
        this.cache.dropNode(node);
        p += node.gfns.length;
      }
      const rest = p === 0 ? list : list.subarray(p);
      const sorted = rest.slice().sort();
      const listed = (g: number): boolean => binarySearch(sorted, g);
      const ids = new Set<number>();
      let last = 0;
      for (let i = 0; i < rest.length; i++) {
        const s = this.cache.slot(rest[i]!);
        if (s === 0) notPinned++;
        else if (Math.abs(s) !== last) ids.add((last = Math.abs(s)));
      }
      for (const id of ids) {
        const node = this.cache.node(id)!;
        const baseListed = node.nodeLive && listed(node.gfns[0]!);
        if (baseListed && node.handle !== undefined && node.gfns.every(listed)) done += this.#releaseWhole(node);
        else done += this.#dropMembers(node, listed, "rm-unpin");
        if (baseListed) this.cache.dropNode(node);
      }
    }
    this.emit("unpinned", { vgpu: this.vgpu, mode, npages: done, notPinned });
    return done;
  }

  /** The DMA_UNMAP notifier for frames [first, end). */
  dmaUnmap(first: number, end: number): void {
    let hostPfnUnpinned = 0;
    if (this.gpfnList.size > 0) {
      let count = 0;
      this.gpfnList.forRange(first, end, (_g, refs) => (count += this.options.hostPfnUnmap === "all" ? refs : 1));
      const hits = new Float64Array(count);
      let k = 0;
      this.gpfnList.forRange(first, end, (g, refs) => {
        for (let r = this.options.hostPfnUnmap === "all" ? refs : 1; r > 0; r--) hits[k++] = g;
      });
      for (let i = 0; i < hits.length; i++) this.gpfnList.drop(hits[i]!);
      for (let i = 0; i < hits.length; i += MAX) this.#unpinArray(hits.subarray(i, Math.min(i + MAX, hits.length)));
      hostPfnUnpinned = hits.length;
    }
    let iovaUnpinned = 0;
    const ids = new Set<number>();
    const stop = Math.min(end, this.cache.length);
    for (let g = first; g < stop; g++) {
      const s = this.cache.slot(g);
      if (s !== 0) ids.add(Math.abs(s));
    }
    const inRange = (g: number): boolean => g >= first && g < end;
    for (const id of ids) iovaUnpinned += this.#dropMembers(this.cache.node(id)!, inRange, "dma-unmap");
    this.emit("dmaUnmapped", { vgpu: this.vgpu, firstGfn: first, npages: end - first, hostPfnUnpinned, iovaUnpinned, batches: ids.size });
  }

  /** remove_gpfn_from_list_all + nv_vgpu_clear_mapping_cache. */
  sweep(reason: "reset" | "close"): void {
    let hostPfnUnpinned = 0;
    if (this.gpfnList.size > 0) {
      const all = new Float64Array(this.gpfnList.references);
      let k = 0;
      this.gpfnList.forRange(0, Number.MAX_SAFE_INTEGER, (g, refs) => {
        for (let r = 0; r < refs; r++) all[k++] = g;
      });
      this.gpfnList.clear();
      for (let i = 0; i < all.length; i += MAX) this.#unpinArray(all.subarray(i, Math.min(i + MAX, all.length)));
      hostPfnUnpinned = all.length;
    }
    const nodesDestroyed = this.cache.liveNodes;
    const iovaUnpinned = this.cache.pinnedFrames;
    for (const node of this.cache.allBatches()) {
      if (node.handle !== undefined) this.#releaseWhole(node);
      else this.#unpinPlain(node, () => true);
    }
    this.cache.reset();
    this.emit("swept", { vgpu: this.vgpu, reason, hostPfnUnpinned, iovaUnpinned, nodesDestroyed });
  }

  /** Sets a bit for every frame of [first, first + n) pinned in either mode. */
  dirty(first: number, n: number, bitmap: Uint8Array): void {
    this.gpfnList.forRange(first, first + n, (g) => (bitmap[(g - first) >> 3]! |= 1 << ((g - first) & 7)));
    const stop = Math.min(first + n, this.cache.length);
    for (let g = first; g < stop; g++) {
      const s = this.cache.slot(g);
      if (s < 0 || (s > 0 && this.cache.isPinned(this.cache.node(s)!, 0))) bitmap[(g - first) >> 3]! |= 1 << ((g - first) & 7);
    }
  }

  #pinHostPfns(list: Float64Array, out: Float64Array): void {
    const n = list.length;
    let done = 0;
    try {
      while (done < n) {
        const cnt = Math.min(MAX, n - done);
        const chunk = list.subarray(done, done + cnt);
        const got = this.services.pinPagesArray(chunk, cnt, PROT, this.#scratch);
        this.counters.pinCalls++;
        if (got !== cnt) {
          if (got > 0) {
            this.counters.pinnedPages += got;
            this.#unpinArray(chunk.subarray(0, got));
          }
          this.emit("warned", { vgpu: this.vgpu, site: "nv_vgpu_translate_gfn_to_pfn", details: { requested: cnt, pinned: got } });
          throw new KernelError("EIO", "pin-count-mismatch", { requested: cnt, pinned: got, done });
        }
        this.counters.pinnedPages += cnt;
        for (let i = 0; i < cnt; i++) out[done + i] = this.#scratch[i]!;
        done += cnt;
      }
    } catch (e) {
      for (let i = 0; i < done; i += MAX) this.#unpinArray(list.subarray(i, Math.min(i + MAX, done)));
      throw e;
    }
    this.gpfnList.addAll(list, 0, n);
  }

  #mapIova(list: ArrayLike<number>, out: Float64Array): void {
    const n = list.length;
    const made: BatchNode[] = [];
    try {
      for (let start = 0; start < n; start += MAX) made.push(this.#mapBatch(copyFrames(list, start, Math.min(start + MAX, n)), out, start));
    } catch (e) {
      for (const node of made) {
        this.#releaseWhole(node);
        this.cache.dropNode(node);
      }
      throw e;
    }
  }

  /** One batch: claim the slots, translate for the parent device, hang the node on the base frame. */
  #mapBatch(gfns: Float64Array, out: Float64Array, at: number): BatchNode {
    const cache = this.cache;
    // The shim's order: pin (here pin and map), grow the cache, refuse a frame already in it.
    const t = this.services.translate(gfns, { prot: PROT, device: this.services.parentDevice });
    this.counters.translations++;
    const seg = t.segments;
    // Per-frame addresses are derived on read: only taken where there are no segments.
    const dma = seg === undefined ? t.dmaAddrs : undefined;
    if ((seg === undefined && dma === undefined) || t.pfns.length !== gfns.length) {
      this.#release(t.handle);
      this.emit("warned", { vgpu: this.vgpu, site: "nv_create_dma_mappings", details: { requested: gfns.length, pinned: t.pfns.length } });
      throw new KernelError("EIO", "map-count-mismatch", { requested: gfns.length, pinned: t.pfns.length });
    }
    let max = 0;
    for (let i = 0; i < gfns.length; i++) if (gfns[i]! > max) max = gfns[i]!;
    cache.ensure(max);
    const id = cache.reserveId();
    const dup = cache.claim(gfns, id);
    if (dup >= 0) {
      cache.releaseId(id);
      this.#release(t.handle);
      throw new KernelError("EEXIST", "guest-pfn-already-pinned", { gpfn: dup });
    }
    let iovaPage: number;
    let segAddr: BigUint64Array;
    let segLength: Float64Array;
    if (seg !== undefined) {
      segAddr = seg.addr.length === seg.count ? seg.addr : seg.addr.subarray(0, seg.count);
      segLength = seg.length.length === seg.count ? seg.length : seg.length.subarray(0, seg.count);
      iovaPage = Number(seg.addr[0]! >> 12n);
      let k = at;
      const end = at + gfns.length;
      for (let s = 0; s < seg.count && k < end; s++) {
        const base = Number(seg.addr[s]! >> 12n);
        const pages = Math.ceil(seg.length[s]! / 4096);
        for (let j = 0; j < pages && k < end; j++) out[k++] = base + j;
      }
    } else {
      iovaPage = Number(dma![0]! >> 12n);
      for (let i = 0; i < gfns.length; i++) out[at + i] = Number(dma![i]! >> 12n);
      segAddr = dma!;
      segLength = new Float64Array(gfns.length).fill(4096);
    }
    const node: BatchNode = { id, gfns, iovaPage, segAddr, segLength, handle: t.handle, pinnedFlags: undefined, pinned: gfns.length, nodeLive: true };
    cache.install(node);
    return node;
  }

  /**
   * Unpins the pinned members of `node` that `match`; returns how many. A live
   * translation is released first (it cannot lose a single pin) and the
   * members that stay pinned are pinned again.
   */
  #dropMembers(node: BatchNode, match: (gpfn: number) => boolean, reason: RevokeReason): number {
    const { gfns } = node;
    let k = 0;
    for (let i = 0; i < gfns.length; i++) if (this.cache.isPinned(node, i) && match(gfns[i]!)) k++;
    if (k === 0) return 0;
    if (node.handle === undefined) {
      this.#unpinPlain(node, match);
      return k;
    }
    const handle = node.handle;
    node.handle = undefined;
    node.pinnedFlags = new Uint8Array(gfns.length).fill(1);
    if (!this.#release(handle)) {
      for (let i = 0; i < gfns.length; i++) this.cache.unpinned(node, i);
      this.emit("mappingRevoked", { vgpu: this.vgpu, baseGfn: gfns[0]!, iovaPage: node.iovaPage, npages: gfns.length, reason: "core-revoked", repinned: 0 });
      this.cache.freeIfDead(node);
      return k;
    }
    const keep = new Float64Array(gfns.length - k);
    let j = 0;
    for (let i = 0; i < gfns.length; i++) {
      if (match(gfns[i]!)) this.cache.unpinned(node, i);
      else keep[j++] = gfns[i]!;
    }
    let repinned = 0;
    if (keep.length > 0) {
      let got = -1;
      try {
        got = this.services.pinPagesArray(keep, keep.length, PROT, this.#scratch);
      } catch (e) {
        this.emit("warned", { vgpu: this.vgpu, site: "repin-after-revoke", details: { npages: keep.length, error: e instanceof KernelError ? e.code : String(e) } });
      }
      this.counters.pinCalls++;
      if (got === keep.length) {
        repinned = got;
        this.counters.pinnedPages += got;
        this.counters.repinnedPages += got;
      } else {
        if (got > 0) {
          this.counters.pinnedPages += got;
          this.#unpinArray(keep.subarray(0, got));
          this.emit("warned", { vgpu: this.vgpu, site: "repin-after-revoke", details: { requested: keep.length, pinned: got } });
        }
        for (let i = 0; i < gfns.length; i++) this.cache.unpinned(node, i);
      }
    }
    this.emit("mappingRevoked", { vgpu: this.vgpu, baseGfn: gfns[0]!, iovaPage: node.iovaPage, npages: gfns.length, reason, repinned });
    this.cache.freeIfDead(node);
    return k;
  }

  /** Releases a batch's live translation: one unmap and one unpin per member. */
  #releaseWhole(node: BatchNode): number {
    const handle = node.handle!;
    node.handle = undefined;
    const pinned = node.pinned;
    this.#release(handle);
    this.cache.unpinnedAll(node);
    this.cache.freeIfDead(node);
    return pinned;
  }

  /** Unpins, with plain array unpins, the members pinned after their translation went that `match`. */
  #unpinPlain(node: BatchNode, match: (gpfn: number) => boolean): void {
    const { gfns } = node;
    let k = 0;
    for (let i = 0; i < gfns.length; i++) {
      if (!this.cache.isPinned(node, i) || !match(gfns[i]!)) continue;
      this.#unpinBuf[k++] = gfns[i]!;
      this.cache.unpinned(node, i);
    }
    this.#flushUnpin(k);
    this.cache.freeIfDead(node);
  }

  /** services.release; false when the core had already revoked the translation (memory invalidation). */
  #release(handle: TranslationHandle): boolean {
    try {
      this.services.release(handle);
      this.counters.releases++;
      return true;
    } catch (e) {
      if (e instanceof KernelError && e.code === "EINVAL" && e.reason === "translate-unknown-handle") return false;
      throw e;
    }
  }

  #flushUnpin(k: number): number {
    if (k > 0) this.#unpinArray(this.#unpinBuf.subarray(0, k));
    return 0;
  }

  #unpinArray(gfns: Float64Array): void {
    this.services.unpinPagesArray(gfns, gfns.length);
    this.counters.unpinCalls++;
    this.counters.unpinnedPages += gfns.length;
  }
}

/** Validates RM's frame list (at least one frame, each an integer in [0, 2^31)); returns its length. */
function checkFrames(gpfns: ArrayLike<number>): number {
  const n = gpfns.length;
  if (!Number.isSafeInteger(n) || n <= 0) throw new KernelError("EINVAL", "no-frames", { npages: n });
  for (let i = 0; i < n; i++) {
    const g = gpfns[i]!;
    if ((g | 0) !== g || g < 0) throw new KernelError("EINVAL", "bad-gpfn", { index: i, gpfn: g });
  }
  return n;
}

function copyFrames(gpfns: ArrayLike<number>, from: number, to: number): Float64Array {
  const out = new Float64Array(to - from);
  for (let i = from; i < to; i++) out[i - from] = gpfns[i]!;
  return out;
}

/** Whether list[at, at + gfns.length) is exactly `gfns`, in order. */
function sameFrames(gfns: Float64Array, list: Float64Array, at: number): boolean {
  if (at + gfns.length > list.length) return false;
  for (let i = 0; i < gfns.length; i++) if (list[at + i] !== gfns[i]) return false;
  return true;
}

function binarySearch(sorted: Float64Array, x: number): boolean {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const v = sorted[mid]!;
    if (v === x) return true;
    if (v < x) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}
