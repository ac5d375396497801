/**
 * A first-fit allocator of contiguous runs over a fixed number of units (FB
 * segments, channel IDs, VFs), one byte per unit: what the RFC's channel-ID
 * bitmap and the FB heap's segment-aligned allocations amount to.
 *
 * Invariant: `used` is the number of set units; a run is freed exactly as it
 * was allocated (freeing a unit that is not allocated is a programming error
 * and throws).
 */
export class BitmapAllocator {
  readonly #bits: Uint8Array;
  #used = 0;

  constructor(readonly total: number) {
    this.#bits = new Uint8Array(total);
  }

  get used(): number {
    return this.#used;
  }

  /** The first unit of the lowest free run of `count` units, or -1. */
  find(count: number): number {
    if (count <= 0 || count > this.total) return -1;
    let run = 0;
    for (let i = 0; i < this.total; i++) {
      run = this.#bits[i] === 0 ? run + 1 : 0;
      if (run === count) return i - count + 1;
    }
    return -1;
  }

  /** Allocates the lowest free run of `count` units; -1 when there is none. */
  alloc(count: number): number {
    const start = this.find(count);
    if (start >= 0) {
      this.#bits.fill(1, start, start + count);
      this.#used += count;
    }
    return start;
  }

  free(start: number, count: number): void {
    for (let i = start; i < start + count; i++) if (this.#bits[i] !== 1) throw new RangeError(`unit ${i} freed but not allocated`);
    this.#bits.fill(0, start, start + count);
    this.#used -= count;
  }

  isUsed(unit: number): boolean {
    return this.#bits[unit] === 1;
  }

  /** How many more runs of `count` units first fit would hand out, at most `limit`. */
  fits(count: number, limit: number): number {
    let n = 0;
    let run = 0;
    for (let i = 0; i < this.total && n < limit; i++) {
      run = this.#bits[i] === 0 ? run + 1 : 0;
      if (run === count) {
        n++;
        run = 0;
      }
    }
    return n;
  }
}
