/**
 * The live single mappings of one device, as kernel/dma/debug.c tracks them:
 * each `dma_map_page` records (address, size, direction) and each
 * `dma_unmap_page` must name an address, size and direction that match.
 *
 * Model: an open-addressing hash table over typed arrays keyed by the DMA
 * address (page number < 2^52 and offset < 4096), linear probing with
 * tombstones, doubling when half full. The same address may be mapped twice
 * (two maps of one page in direct mode give the same address): the table holds
 * both entries and an unmap removes one. No object is allocated per mapping.
 *
 * Invariants: `count` is the number of live entries; a live entry's key is
 * reachable from its hash slot without crossing an empty slot.
 */
const EMPTY = 0;
const USED = 1;
const DELETED = 2;

export class DmaMappingTracker {
  #bits = 6;
  #page = new Float64Array(64);
  #offset = new Uint16Array(64);
  #size = new Float64Array(64);
  #dir = new Uint8Array(64);
  #state = new Uint8Array(64);
  #count = 0;
  #deleted = 0;

  /** Live mappings. */
  get count(): number {
    return this.#count;
  }

  /** Records a mapping at `page * 4096 + offset`. */
  add(page: number, offset: number, size: number, dir: number): void {
    if ((this.#count + this.#deleted + 1) * 2 > this.#page.length) this.#rehash(this.#count * 4 + 4 > this.#page.length ? this.#bits + 1 : this.#bits);
    const mask = this.#page.length - 1;
    let i = this.#hash(page, offset);
    while (this.#state[i] === USED) i = (i + 1) & mask;
    if (this.#state[i] === DELETED) this.#deleted--;
    this.#state[i] = USED;
    this.#page[i] = page;
    this.#offset[i] = offset;
    this.#size[i] = size;
    this.#dir[i] = dir;
    this.#count++;
  }

  /** The slot of a mapping at exactly this address, or -1. */
  find(page: number, offset: number): number {
    const mask = this.#page.length - 1;
    for (let i = this.#hash(page, offset); this.#state[i] !== EMPTY; i = (i + 1) & mask) {
      if (this.#state[i] === USED && this.#page[i] === page && this.#offset[i] === offset) return i;
    }
    return -1;
  }

  sizeAt(slot: number): number {
    return this.#size[slot]!;
  }

  dirAt(slot: number): number {
    return this.#dir[slot]!;
  }

  remove(slot: number): void {
    this.#state[slot] = DELETED;
    this.#count--;
    this.#deleted++;
  }

  /** Calls `fn` for every live mapping (leak reports). */
  forEach(fn: (page: number, offset: number, size: number, dir: number) => void): void {
    for (let i = 0; i < this.#state.length; i++) if (this.#state[i] === USED) fn(this.#page[i]!, this.#offset[i]!, this.#size[i]!, this.#dir[i]!);
  }

  #hash(page: number, offset: number): number {
    const lo = page >>> 0;
    const hi = Math.floor(page / 0x1_0000_0000);
    return Math.imul(lo ^ Math.imul(hi, 0x85ebca6b) ^ Math.imul(offset, 0x27d4eb2f), 0x9e3779b1) >>> (32 - this.#bits);
  }

  #rehash(bits: number): void {
    const page = this.#page;
    const offset = this.#offset;
    const size = this.#size;
    const dir = this.#dir;
    const state = this.#state;
    const cap = 1 << bits;
    this.#bits = bits;
    this.#page = new Float64Array(cap);
    this.#offset = new Uint16Array(cap);
    this.#size = new Float64Array(cap);
    this.#dir = new Uint8Array(cap);
    this.#state = new Uint8Array(cap);
    this.#count = 0;
    this.#deleted = 0;
    for (let i = 0; i < state.length; i++) if (state[i] === USED) this.add(page[i]!, offset[i]!, size[i]!, dir[i]!);
  }
}
