/**
 * The shim's `mapping_cache` (vendors.md 2.2): a flat array indexed by guest
 * frame, grown on demand up to the largest frame seen (rounded up to
 * NV_INITIAL_CACHE_SIZE), whose slots say which frames are pinned in IOVA mode
 * and where each batch's mapping node hangs.
 *
 * Slot encoding (one Int32 per frame, no object per frame):
 * - 0: empty;
 * - -id: a pinned member of batch `id` other than its base (the shim's GFN_PINNED);
 * - +id: the base frame of batch `id`, holding its node whether or not the base
 *   frame is still pinned (the shim's `base_gpfn_pinned`).
 *
 * A batch node is one object per batch of up to 512 frames: its frames (base
 * first), the IOVA page of its first segment, the core translation that holds
 * one pin per frame and the parent-device mapping, and, once that translation
 * is gone, which frames are still pinned by plain pins.
 *
 * Invariants: a frame is in at most one batch's pinned set; slot[g] == -id iff
 * g is a pinned non-base member of batch id; slot[base] == +id iff the node is
 * live; `pinnedFrames` is the sum of `pinned` over batches; a batch is freed
 * when its node is no longer live and none of its frames is pinned.
 */
import type { TranslationHandle } from "@vgpu-iommu/core";

/** Shared flags of a batch with no member pinned; never written (`unpinned` stops at a zero flag). */
const NONE_PINNED = new Uint8Array(512);

/** Cache growth granule, in frames (NV_INITIAL_CACHE_SIZE; its value in the shim is not public). */
export const NV_INITIAL_CACHE_SIZE = 1 << 14;

export interface BatchNode {
  readonly id: number;
  /** Member frames, base first; no duplicates. */
  readonly gfns: Float64Array;
  /** IOVA page of the first device segment (the shim's `mapping_node_t.iova >> PAGE_SHIFT`). */
  readonly iovaPage: number;
  /** The device segments the mapping produced (what RM wrote into GPU page tables), in frame order. */
  readonly segAddr: BigUint64Array;
  readonly segLength: Float64Array;
  /** The core translation (one pin per member and the device mapping); undefined once released or revoked. */
  handle: TranslationHandle | undefined;
  /** Per-member pin state once the translation is gone; undefined while every member is pinned by it. */
  pinnedFlags: Uint8Array | undefined;
  /** Members still pinned. */
  pinned: number;
  /** Whether the base slot holds this node: RM still sees the batch's scatter-gather mapping. */
  nodeLive: boolean;
}

export class MappingCache {
  #slots = new Int32Array(0);
  readonly #nodes: (BatchNode | undefined)[] = [undefined];
  readonly #freeIds: number[] = [];
  #liveNodes = 0;
  #batches = 0;
  #pinnedFrames = 0;

  /** Frames the cache covers (the shim's vfio_max_gpfn + 1). */
  get length(): number {
    return this.#slots.length;
  }

  /** Nodes RM still sees: live scatter-gather mappings in the shim's view. */
  get liveNodes(): number {
    return this.#liveNodes;
  }

  /** Batches with a live core translation: device mappings that really exist. */
  get liveTranslations(): number {
    let n = 0;
    for (const b of this.#nodes) if (b?.handle !== undefined) n++;
    return n;
  }

  /** Batch records alive (live nodes plus orphans whose node is gone but that still hold pins). */
  get batches(): number {
    return this.#batches;
  }

  /** Frames pinned in IOVA mode. */
  get pinnedFrames(): number {
    return this.#pinnedFrames;
  }

  slot(gpfn: number): number {
    return gpfn < this.#slots.length ? this.#slots[gpfn]! : 0;
  }

  node(id: number): BatchNode | undefined {
    return this.#nodes[id];
  }

  /** The device address of every page of every live node, stale or not: what RM's GPU page tables point at. */
  deviceAddresses(): bigint[] {
    const out: bigint[] = [];
    for (const b of this.#nodes) {
      if (b === undefined || !b.nodeLive) continue;
      let left = b.gfns.length;
      for (let s = 0; s < b.segAddr.length && left > 0; s++)
        for (let off = 0; off < b.segLength[s]! && left > 0; off += 4096, left--) out.push(b.segAddr[s]! + BigInt(off));
    }
    return out;
  }

  /** Every batch record, for sweeps (a copy: callers free records while walking). */
  allBatches(): BatchNode[] {
    return this.#nodes.filter((b): b is BatchNode => b !== undefined);
  }

  /** nv_adjust_mapping_cache: grows the array to cover `maxGpfn`. */
  ensure(maxGpfn: number): void {
    if (maxGpfn < this.#slots.length) return;
    const size = Math.ceil((maxGpfn + 1) / NV_INITIAL_CACHE_SIZE) * NV_INITIAL_CACHE_SIZE;
    const grown = new Int32Array(size);
    grown.set(this.#slots);
    this.#slots = grown;
  }

  /** A fresh batch id, not yet installed. */
  reserveId(): number {
    return this.#freeIds.pop() ?? this.#nodes.push(undefined) - 1;
  }

  releaseId(id: number): void {
    this.#freeIds.push(id);
  }

  /**
   * Marks `gfns` as members of batch `id`. Returns -1, or the first frame that
   * is already in the cache (or repeated in `gfns`), having unmarked what it marked.
   * The caller has made the cache cover every frame.
   */
  claim(gfns: Float64Array, id: number): number {
    const slots = this.#slots;
    const n = gfns.length;
    for (let i = 0; i < n; i++) {
      const g = gfns[i]!;
      if (slots[g] !== 0) {
        for (let j = 0; j < i; j++) if (slots[gfns[j]!] === -id) slots[gfns[j]!] = 0;
        return g;
      }
      slots[g] = -id;
    }
    return -1;
  }

  /** Installs a claimed batch: every member pinned, the node on the base slot. */
  install(node: BatchNode): void {
    this.#nodes[node.id] = node;
    this.#slots[node.gfns[0]!] = node.id;
    this.#liveNodes++;
    this.#batches++;
    this.#pinnedFrames += node.pinned;
  }

  isPinned(node: BatchNode, index: number): boolean {
    return node.pinnedFlags === undefined || node.pinnedFlags[index] === 1;
  }

  /** Records that member `index` lost its pin (clears its slot unless it is the base). */
  unpinned(node: BatchNode, index: number): void {
    node.pinnedFlags ??= new Uint8Array(node.gfns.length).fill(1);
    if (node.pinnedFlags[index] === 0) return;
    node.pinnedFlags[index] = 0;
    node.pinned--;
    this.#pinnedFrames--;
    if (index !== 0) this.#slots[node.gfns[index]!] = 0;
  }

  /** Records that every member lost its pin at once (the translation of a fully pinned batch was released). */
  unpinnedAll(node: BatchNode): void {
    if (node.pinnedFlags !== undefined) {
      for (let i = 0; i < node.gfns.length; i++) this.unpinned(node, i);
      return;
    }
    const slots = this.#slots;
    const { gfns } = node;
    for (let i = 1; i < gfns.length; i++) slots[gfns[i]!] = 0;
    node.pinnedFlags = NONE_PINNED;
    this.#pinnedFrames -= node.pinned;
    node.pinned = 0;
  }

  /** The node leaves its base slot (RM unpinned the base, or a sweep); the record goes once nothing is pinned. */
  dropNode(node: BatchNode): void {
    if (!node.nodeLive) return;
    node.nodeLive = false;
    this.#liveNodes--;
    if (this.#slots[node.gfns[0]!] === node.id) this.#slots[node.gfns[0]!] = 0;
    this.freeIfDead(node);
  }

  freeIfDead(node: BatchNode): void {
    if (node.nodeLive || node.pinned > 0 || this.#nodes[node.id] !== node) return;
    this.#nodes[node.id] = undefined;
    this.#freeIds.push(node.id);
    this.#batches--;
  }

  /** nv_vgpu_clear_mapping_cache's end: frees the array (the next request grows it again). */
  reset(): void {
    this.#slots = new Int32Array(0);
    this.#nodes.length = 1;
    this.#freeIds.length = 0;
    this.#liveNodes = 0;
    this.#batches = 0;
    this.#pinnedFrames = 0;
  }
}
