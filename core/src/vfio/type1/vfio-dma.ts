/**
 * One VFIO_IOMMU_MAP_DMA mapping (`struct vfio_dma`) and its externally pinned
 * pages (`pfn_list`).
 *
 * Model: IOVA, vaddr and size are kept in pages. External pins live in chunked
 * typed arrays indexed by page offset inside the mapping: `frame` (the pinned
 * host frame) and `refs` (the vfio_pfn ref_count, 0 = no vfio_pfn). A chunk
 * exists only while it holds a pin, so a sparsely pinned 1 TiB mapping costs
 * little, and a densely pinned one costs 8 bytes a page.
 *
 * Invariants (checked by Type1Iommu.assertInvariants):
 * - vpfnCount = number of offsets with refs > 0, each refs >= 1;
 * - lockedVm = the pages this mapping has charged to `mm`;
 * - `bitmap` exists iff dirty tracking is on, one bit per minimum IOMMU page.
 */
import type { Mm } from "../../host/mm.js";
import type { Process } from "../../host/process.js";

export const VPFN_CHUNK_SHIFT = 12;
const VPFN_CHUNK_PAGES = 1 << VPFN_CHUNK_SHIFT;

interface VpfnChunk {
  readonly frame: Uint32Array;
  readonly refs: Uint32Array;
  count: number;
}

export const IOMMU_READ = 1;
export const IOMMU_WRITE = 2;

export class VfioDma {
  /** Size in pages; grows from 0 as MAP_DMA pins and maps runs, as the kernel's does. */
  npages = 0;
  iommuMapped = false;
  vaddrInvalid = false;
  lockedVm = 0;
  vpfnCount = 0;
  bitmap: Uint8Array | null = null;
  readonly #chunks = new Map<number, VpfnChunk>();
  /** First page offset of the chunk last looked up (-VPFN_CHUNK_PAGES: none), and that chunk. */
  #lastBase = -VPFN_CHUNK_PAGES;
  #last: VpfnChunk | undefined;

  constructor(
    readonly iovaPage: number,
    public vaddrPage: number,
    readonly prot: number,
    public task: Process,
    public mm: Mm,
    public lockCap: boolean,
  ) {}

  get lastIovaPage(): number {
    return this.iovaPage + this.npages - 1;
  }

  /** vfio_find_vpfn: the pin at page offset `index`, as its ref_count (0 = none). */
  refsAt(index: number): number {
    const chunk = this.#chunk(index);
    return chunk === undefined ? 0 : chunk.refs[index - this.#lastBase]!;
  }

  frameAt(index: number): number {
    return this.#chunk(index)!.frame[index - this.#lastBase]!;
  }

  /** vfio_iova_get_vfio_pfn: takes a reference on an existing pin; returns its frame. */
  getVpfn(index: number): number {
    const chunk = this.#chunk(index)!;
    const at = index - this.#lastBase;
    chunk.refs[at]!++;
    return chunk.frame[at]!;
  }

  /** vfio_add_to_pfn_list: a new pin with ref_count 1. */
  addVpfn(index: number, frame: number): void {
    let chunk = this.#chunk(index);
    if (chunk === undefined) {
      const key = Math.floor(index / VPFN_CHUNK_PAGES);
      chunk = { frame: new Uint32Array(VPFN_CHUNK_PAGES), refs: new Uint32Array(VPFN_CHUNK_PAGES), count: 0 };
      this.#chunks.set(key, chunk);
      this.#lastBase = key * VPFN_CHUNK_PAGES;
      this.#last = chunk;
    }
    const at = index - this.#lastBase;
    chunk.frame[at] = frame;
    chunk.refs[at] = 1;
    chunk.count++;
    this.vpfnCount++;
  }

  /** Drops one reference; returns the frame when that was the last one (the pin is gone), else 0. */
  putVpfn(index: number): number {
    const chunk = this.#chunk(index)!;
    const at = index - this.#lastBase;
    if (--chunk.refs[at]! !== 0) return 0;
    const frame = chunk.frame[at]!;
    chunk.frame[at] = 0;
    this.vpfnCount--;
    if (--chunk.count === 0) {
      this.#chunks.delete(Math.floor(index / VPFN_CHUNK_PAGES));
      this.#lastBase = -VPFN_CHUNK_PAGES;
      this.#last = undefined;
    }
    return frame;
  }

  /** vpfn_pages: pins among page offsets [index, index + n). */
  vpfnPages(index: number, n: number): number {
    if (this.vpfnCount === 0) return 0;
    let count = 0;
    for (let i = index; i < index + n; ) {
      const chunk = this.#chunk(i);
      const next = Math.min(index + n, (Math.floor(i / VPFN_CHUNK_PAGES) + 1) * VPFN_CHUNK_PAGES);
      if (chunk !== undefined) for (let k = i; k < next; k++) if (chunk.refs[k % VPFN_CHUNK_PAGES] !== 0) count++;
      i = next;
    }
    return count;
  }

  /** Calls `fn(index, frame, refs)` for every pinned offset, in IOVA order. */
  forEachVpfn(fn: (index: number, frame: number, refs: number) => void): void {
    for (const key of [...this.#chunks.keys()].sort((a, b) => a - b)) {
      const chunk = this.#chunks.get(key)!;
      for (let k = 0; k < VPFN_CHUNK_PAGES; k++) {
        const r = chunk.refs[k]!;
        if (r !== 0) fn(key * VPFN_CHUNK_PAGES + k, chunk.frame[k]!, r);
      }
    }
  }

  /** Bytes held by the pin store, for the memory benchmark. */
  get vpfnBytes(): number {
    let bytes = 0;
    for (const chunk of this.#chunks.values()) bytes += chunk.frame.byteLength + chunk.refs.byteLength;
    return bytes;
  }

  /** The chunk holding offset `index`; on success `#lastBase` is its first offset. */
  #chunk(index: number): VpfnChunk | undefined {
    const base = this.#lastBase;
    if (index >= base && index < base + VPFN_CHUNK_PAGES) return this.#last;
    const key = Math.floor(index / VPFN_CHUNK_PAGES);
    const chunk = this.#chunks.get(key);
    if (chunk !== undefined) {
      this.#lastBase = key * VPFN_CHUNK_PAGES;
      this.#last = chunk;
    }
    return chunk;
  }
}

export const setBit = (bitmap: Uint8Array, bit: number): void => {
  bitmap[bit >>> 3]! |= 1 << (bit & 7);
};

export const testBit = (bitmap: Uint8Array, bit: number): boolean => (bitmap[bit >>> 3]! & (1 << (bit & 7))) !== 0;

export const setBits = (bitmap: Uint8Array, from: number, n: number): void => {
  for (let b = from; b < from + n; b++) bitmap[b >>> 3]! |= 1 << (b & 7);
};
