/**
 * A sparse table from frame numbers to u32 values, for the per-frame state of
 * address spaces far larger than what they hold: a guest's P2M, an IOMMU
 * context's BFN -> MFN entries, reverse maps.
 *
 * Model: leaves of 512 entries (one 2 MiB superpage of 4 KiB frames), each a
 * `Uint32Array` of values and a `Uint8Array` of attributes, found through a Map
 * keyed by `frame / 512`, with the last leaf cached so runs of neighbouring
 * frames cost two typed-array accesses. An attribute of 0 means "no entry":
 * users encode their type or permission bits in the other values. Frames are
 * integers in [0, 2^52); there is no JavaScript object per frame.
 *
 * Hot loops may take a leaf (`leafOf`, `ensureLeaf`) and index its arrays
 * directly, reporting what they added or removed with `noteDirect`.
 *
 * Invariants: `size` is the number of entries whose attribute is non-zero; a
 * leaf is dropped when its last entry goes, so memory follows the populated
 * frames, not the address-space size.
 */
export const RADIX_LEAF = 512;

/** One leaf: 512 consecutive frames from a multiple of 512. */
export interface RadixLeaf {
  readonly value: Uint32Array;
  readonly attr: Uint8Array;
  used: number;
}
type Leaf = RadixLeaf;

export class FrameRadix {
  readonly #leaves = new Map<number, Leaf>();
  #lastKey = -1;
  #last: Leaf | undefined;
  #size = 0;

  /** Entries present. */
  get size(): number {
    return this.#size;
  }

  /** Leaves allocated (each 512 entries, 2.5 KiB). */
  get leafCount(): number {
    return this.#leaves.size;
  }

  #leaf(frame: number): Leaf | undefined {
    const key = frame < 0x8000_0000 ? frame >>> 9 : Math.floor(frame / RADIX_LEAF);
    if (key === this.#lastKey) return this.#last;
    const leaf = this.#leaves.get(key);
    if (leaf !== undefined) {
      this.#lastKey = key;
      this.#last = leaf;
    }
    return leaf;
  }

  /** The leaf holding `frame`, if any: hot loops index it directly (`frame % 512`) and stay within it. */
  leafOf(frame: number): RadixLeaf | undefined {
    return this.#leaf(frame);
  }

  /** The leaf holding `frame`, created when missing. */
  ensureLeaf(frame: number): RadixLeaf {
    let leaf = this.#leaf(frame);
    if (leaf === undefined) {
      const key = frame < 0x8000_0000 ? frame >>> 9 : Math.floor(frame / RADIX_LEAF);
      leaf = { value: new Uint32Array(RADIX_LEAF), attr: new Uint8Array(RADIX_LEAF), used: 0 };
      this.#leaves.set(key, leaf);
      this.#lastKey = key;
      this.#last = leaf;
    }
    return leaf;
  }

  /** Accounts `delta` entries added (or removed, negative) by direct writes into `leaf`'s attributes; drops an emptied leaf. */
  noteDirect(leaf: RadixLeaf, frame: number, delta: number): void {
    leaf.used += delta;
    this.#size += delta;
    if (leaf.used === 0) {
      const key = frame < 0x8000_0000 ? frame >>> 9 : Math.floor(frame / RADIX_LEAF);
      this.#leaves.delete(key);
      this.#lastKey = -1;
      this.#last = undefined;
    }
  }

  /** The attribute of `frame`, 0 when there is no entry. */
  attr(frame: number): number {
    const leaf = this.#leaf(frame);
    return leaf === undefined ? 0 : leaf.attr[frame % RADIX_LEAF]!;
  }

  /** The value of `frame`; meaningful only when attr(frame) is non-zero (0 otherwise). */
  value(frame: number): number {
    const leaf = this.#leaf(frame);
    return leaf === undefined ? 0 : leaf.value[frame % RADIX_LEAF]!;
  }

  /** Sets an entry; `attr` must be non-zero (1..255). */
  set(frame: number, value: number, attr: number): void {
    const leaf = this.ensureLeaf(frame);
    const i = frame % RADIX_LEAF;
    if (leaf.attr[i] === 0) {
      leaf.used++;
      this.#size++;
    }
    leaf.value[i] = value;
    leaf.attr[i] = attr;
  }

  /** Removes an entry; returns whether there was one. */
  clear(frame: number): boolean {
    const leaf = this.#leaf(frame);
    if (leaf === undefined) return false;
    const i = frame % RADIX_LEAF;
    if (leaf.attr[i] === 0) return false;
    leaf.attr[i] = 0;
    leaf.value[i] = 0;
    this.#size--;
    if (--leaf.used === 0) {
      const key = frame < 0x8000_0000 ? frame >>> 9 : Math.floor(frame / RADIX_LEAF);
      this.#leaves.delete(key);
      this.#lastKey = -1;
      this.#last = undefined;
    }
    return true;
  }

  /** Calls `fn(frame, value, attr)` for every entry in [first, end), in frame order. */
  forEachIn(first: number, end: number, fn: (frame: number, value: number, attr: number) => void): void {
    const keys = [...this.#leaves.keys()].filter((k) => (k + 1) * RADIX_LEAF > first && k * RADIX_LEAF < end).sort((a, b) => a - b);
    for (const k of keys) {
      const leaf = this.#leaves.get(k)!;
      const base = k * RADIX_LEAF;
      for (let i = Math.max(0, first - base); i < RADIX_LEAF && base + i < end; i++) if (leaf.attr[i] !== 0) fn(base + i, leaf.value[i]!, leaf.attr[i]!);
    }
  }

  /** Drops every entry. */
  reset(): void {
    this.#leaves.clear();
    this.#lastKey = -1;
    this.#last = undefined;
    this.#size = 0;
  }
}
