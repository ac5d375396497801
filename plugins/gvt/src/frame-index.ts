/**
 * An open-addressing hash index from a frame number (an integer below 2^53: a
 * GFN or a DMA page number) to a slot number, in one typed array: kvmgt's two
 * rb-trees (`gfn_cache`, `dma_addr_cache`) without one object per entry.
 *
 * Model: linear probing over a power-of-two table of (key, slot) pairs stored
 * side by side in a Float64Array (one cache line holds both); slot -1 marks a
 * free bucket. Deletion shifts later members of the probe run back, so there
 * are no tombstones and a lookup (a miss, on every new mapping) stops at the
 * first free bucket.
 *
 * Invariants: every key appears at most once; `size` is the number of used
 * buckets; the load factor stays at or below 1/2 (the table doubles before it
 * would pass it). No operation allocates except a doubling.
 */

const EMPTY = -1;
const MIN_CAPACITY = 64;

export class FrameIndex {
  /** [key, slot] pairs. */
  #table: Float64Array;
  #mask: number;
  #size = 0;

  constructor(capacity = MIN_CAPACITY) {
    let cap = MIN_CAPACITY;
    while (cap < capacity * 2) cap *= 2;
    this.#table = new Float64Array(cap * 2).fill(EMPTY);
    this.#mask = cap - 1;
  }

  get size(): number {
    return this.#size;
  }

  /** The slot stored for `key`, or -1. */
  get(key: number): number {
    const t = this.#table;
    const mask = this.#mask;
    for (let i = bucketOf(key, mask); ; i = (i + 1) & mask) {
      const v = t[2 * i + 1]!;
      if (v === EMPTY) return EMPTY;
      if (t[2 * i] === key) return v;
    }
  }

  /** Stores `slot` for `key`, replacing any previous slot. */
  set(key: number, slot: number): void {
    if ((this.#size + 1) * 2 > this.#mask + 1) this.#grow();
    const t = this.#table;
    const mask = this.#mask;
    for (let i = bucketOf(key, mask); ; i = (i + 1) & mask) {
      const v = t[2 * i + 1]!;
      if (v === EMPTY) {
        t[2 * i] = key;
        t[2 * i + 1] = slot;
        this.#size++;
        return;
      }
      if (t[2 * i] === key) {
        t[2 * i + 1] = slot;
        return;
      }
    }
  }

  /** Removes `key`; returns whether it was there. */
  delete(key: number): boolean {
    const t = this.#table;
    const mask = this.#mask;
    let i = bucketOf(key, mask);
    for (; ; i = (i + 1) & mask) {
      if (t[2 * i + 1] === EMPTY) return false;
      if (t[2 * i] === key) break;
    }
    // Backward-shift deletion: move later members of the run into the hole
    // unless their home bucket lies cyclically in (hole, j].
    let hole = i;
    for (let j = (i + 1) & mask; t[2 * j + 1] !== EMPTY; j = (j + 1) & mask) {
      const home = bucketOf(t[2 * j]!, mask);
      const stays = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (stays) continue;
      t[2 * hole] = t[2 * j]!;
      t[2 * hole + 1] = t[2 * j + 1]!;
      hole = j;
    }
    t[2 * hole + 1] = EMPTY;
    this.#size--;
    return true;
  }

  clear(): void {
    this.#table.fill(EMPTY);
    this.#size = 0;
  }

  #grow(): void {
    const old = this.#table;
    const cap = (this.#mask + 1) * 2;
    this.#table = new Float64Array(cap * 2).fill(EMPTY);
    this.#mask = cap - 1;
    this.#size = 0;
    for (let i = 0; i < old.length; i += 2) if (old[i + 1] !== EMPTY) this.set(old[i]!, old[i + 1]!);
  }
}

/** The home bucket: both 32-bit halves of a key below 2^53, mixed with murmur3's finalizer. */
function bucketOf(key: number, mask: number): number {
  let h = (key >>> 0) ^ Math.imul((key / 4294967296) >>> 0, 0x27d4eb2f);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h & mask;
}
