/**
 * Physical memory of the simulated host.
 *
 * Model: RAM is frames 0 .. ramFrames-1, each with a struct page; MMIO (PCI
 * BARs) lives from MMIO_BASE_PFN upwards and has no struct page, so it is
 * "invalid/reserved" in the kernel's sense and never charged. The first 2 MiB
 * block is reserved firmware memory: never allocated, PageReserved, and frame 0
 * doubles as "no frame" in every page table of the model.
 *
 * Per-frame state is two typed arrays, 3 bytes a frame: `pins` (FOLL_PIN
 * references) and `state` (free, held by a memory object, or orphaned: released
 * by its object while still pinned). A frame returns to the allocator when it
 * is neither held nor pinned.
 *
 * Allocation is seeded: 2 MiB blocks are handed out in a shuffled order, and
 * single frames come from a pool refilled with whole blocks whose frames are
 * shuffled, so 4 KiB-backed memory is physically scattered and THP-backed
 * memory comes in aligned 2 MiB runs.
 *
 * Invariants: totalPins = sum(pins); a free frame has no pins; framesInUse
 * counts frames whose state is not free.
 */
import { SeededRng } from "./rng.js";
import { PAGE_SIZE } from "../address/address.js";

export const BLOCK_PAGES = 512;
/** MMIO frames start here: far above any RAM a u32 frame table can describe, below 2^32. */
export const MMIO_BASE_PFN = 0xf000_0000;
const PIN_MAX = 0xffff;
const SCATTER_REFILL_BLOCKS = 64;
const CONTENT_CHUNK_PAGES = 16;

export const enum FrameState {
  Free = 0,
  Held = 1,
  Orphan = 2,
}

export interface PhysicalMemoryOptions {
  readonly ramBytes: bigint;
  readonly seed: number;
}

export class PhysicalMemory {
  readonly ramFrames: number;
  readonly pins: Uint16Array;
  readonly state: Uint8Array;
  /** Frames in the Orphan state: while there are none, an unpin need not look at `state`. */
  #orphans = 0;
  /** `pins` two frames a word, to see a block with no pin at all in a few reads. */
  readonly #pinWords: Int32Array;
  totalPins = 0;
  framesInUse = 0;
  readonly #rng: SeededRng;
  readonly #freeBlocks: Uint32Array;
  #freeBlockCount: number;
  #scatter = new Uint32Array(SCATTER_REFILL_BLOCKS * BLOCK_PAGES);
  #scatterCount = 0;
  #nextMmioPfn = MMIO_BASE_PFN;
  readonly #content = new Map<number, Uint8Array>();

  constructor(options: PhysicalMemoryOptions) {
    const frames = Number(options.ramBytes / BigInt(PAGE_SIZE));
    const blocks = Math.floor(frames / BLOCK_PAGES);
    if (blocks < 2 || frames >= MMIO_BASE_PFN) throw new RangeError(`host RAM of ${options.ramBytes} bytes is outside the model's range`);
    this.ramFrames = blocks * BLOCK_PAGES;
    this.pins = new Uint16Array(this.ramFrames);
    this.#pinWords = new Int32Array(this.pins.buffer);
    this.state = new Uint8Array(this.ramFrames);
    this.#rng = new SeededRng(options.seed);
    this.#freeBlocks = new Uint32Array(blocks - 1);
    for (let b = 1; b < blocks; b++) this.#freeBlocks[b - 1] = b;
    this.#rng.shuffle(this.#freeBlocks);
    this.#freeBlockCount = blocks - 1;
  }

  get rng(): SeededRng {
    return this.#rng;
  }

  get freeFrames(): number {
    return this.#freeBlockCount * BLOCK_PAGES + this.#scatterCount;
  }

  get freeBlocks(): number {
    return this.#freeBlockCount;
  }

  /** pfn_valid: the frame has a struct page. */
  isValid(pfn: number): boolean {
    return pfn < this.ramFrames;
  }

  /** is_invalid_reserved_pfn: no struct page, or PageReserved. */
  isInvalidOrReserved(pfn: number): boolean {
    return pfn < BLOCK_PAGES || pfn >= this.ramFrames;
  }

  /** Takes a whole aligned 2 MiB block; returns its first frame, or 0 when none is free. */
  allocBlock(): number {
    if (this.#freeBlockCount === 0) return 0;
    const base = this.#freeBlocks[--this.#freeBlockCount]! * BLOCK_PAGES;
    this.state.fill(FrameState.Held, base, base + BLOCK_PAGES);
    this.framesInUse += BLOCK_PAGES;
    return base;
  }

  /**
   * Takes a free 2 MiB block lying wholly below frame `limitPfn`, as boot-time
   * low allocations do (memblock_alloc_low for the swiotlb pool); returns its
   * first frame, or 0 when no free block is that low.
   */
  allocBlockBelow(limitPfn: number): number {
    for (let i = this.#freeBlockCount - 1; i >= 0; i--) {
      const block = this.#freeBlocks[i]!;
      if ((block + 1) * BLOCK_PAGES > limitPfn) continue;
      this.#freeBlocks[i] = this.#freeBlocks[--this.#freeBlockCount]!;
      const base = block * BLOCK_PAGES;
      this.state.fill(FrameState.Held, base, base + BLOCK_PAGES);
      this.framesInUse += BLOCK_PAGES;
      return base;
    }
    return 0;
  }

  /** Takes one frame from the scattered pool; returns 0 when memory is exhausted. */
  allocFrame(): number {
    if (this.#scatterCount === 0 && !this.#refillScatter()) return 0;
    const pfn = this.#scatter[--this.#scatterCount]!;
    this.state[pfn] = FrameState.Held;
    this.framesInUse++;
    return pfn;
  }

  /** The holder lets go of a frame: it is freed now, or when its last pin goes. */
  release(pfn: number): void {
    if (this.pins[pfn] === 0) this.#free(pfn);
    else if (this.state[pfn] !== FrameState.Orphan) {
      this.state[pfn] = FrameState.Orphan;
      this.#orphans++;
    }
  }

  /** FOLL_PIN one reference; false when the refcount would overflow (GUP then fails). */
  pin(pfn: number): boolean {
    if (pfn >= this.ramFrames) return true;
    const p = this.pins[pfn]!;
    if (p === PIN_MAX) return false;
    this.pins[pfn] = p + 1;
    this.totalPins++;
    return true;
  }

  /**
   * pin() over `src[from..from+n)`, writing each frame to `out[outAt..]`: stops
   * before the first 0 (not present) or the first frame whose refcount would
   * overflow, and returns how many it pinned.
   */
  pinFrames(src: Uint32Array, from: number, n: number, out: Uint32Array, outAt: number): number {
    const pins = this.pins;
    const ramFrames = this.ramFrames;
    let counted = 0;
    let i = 0;
    for (; i < n; i++) {
      const f = src[from + i]!;
      if (f === 0) break;
      if (f < ramFrames) {
        const p = pins[f]!;
        if (p === PIN_MAX) break;
        pins[f] = p + 1;
        counted++;
      }
      out[outAt + i] = f;
    }
    this.totalPins += counted;
    return i;
  }

  /**
   * pinFrames() over frames the caller knows to be consecutive
   * (`src[from + k] === src[from] + k`, a huge page): the same result, with a
   * block nobody has pinned yet pinned in one fill and the frames copied out
   * in one move.
   */
  pinContiguous(src: Uint32Array, from: number, n: number, out: Uint32Array, outAt: number): number {
    const first = src[from]!;
    if (n <= 0 || first === 0 || first + n > this.ramFrames || ((first | n) & 1) !== 0) return this.pinFrames(src, from, n, out, outAt);
    const words = this.#pinWords;
    const end = (first + n) >>> 1;
    let any = 0;
    let w = first >>> 1;
    for (; w + 4 <= end; w += 4) any |= words[w]! | words[w + 1]! | words[w + 2]! | words[w + 3]!;
    for (; w < end; w++) any |= words[w]!;
    if (any !== 0) return this.pinFrames(src, from, n, out, outAt);
    this.pins.fill(1, first, first + n);
    this.totalPins += n;
    out.set(src.subarray(from, from + n), outAt);
    return n;
  }

  /** unpin_user_page: drop one pin; an orphan frame is freed with its last pin. */
  unpin(pfn: number): void {
    if (pfn >= this.ramFrames) return;
    const p = this.pins[pfn]! - 1;
    this.pins[pfn] = p;
    this.totalPins--;
    if (p === 0 && this.#orphans !== 0 && this.state[pfn] === FrameState.Orphan) this.#free(pfn);
  }

  /**
   * put_pfn over frames [pfn, pfn + n): unpins every frame that has a struct
   * page and is not reserved, skipping the others; returns how many it unpinned.
   */
  unpinRun(pfn: number, n: number): number {
    const lo = Math.max(pfn, BLOCK_PAGES);
    const hi = Math.min(pfn + n, this.ramFrames);
    if (lo >= hi) return 0;
    const pins = this.pins;
    const state = this.state;
    for (let f = lo; f < hi; f++) {
      const p = pins[f]! - 1;
      pins[f] = p;
      if (p === 0 && this.#orphans !== 0 && state[f] === FrameState.Orphan) this.#free(f);
    }
    this.totalPins -= hi - lo;
    return hi - lo;
  }

  /** unpinRun() over runs `pfns[r]`, `lens[r]` for r < count, in order; returns the frames unpinned. */
  unpinRuns(pfns: Uint32Array, lens: Uint32Array, count: number): number {
    const pins = this.pins;
    const state = this.state;
    const ramFrames = this.ramFrames;
    const orphans = this.#orphans !== 0;
    let unpinned = 0;
    for (let r = 0; r < count; r++) {
      const pfn = pfns[r]!;
      const len = lens[r]!;
      if (len === 1) {
        // A 4 KiB run: most runs of scattered memory.
        if (pfn < BLOCK_PAGES || pfn >= ramFrames) continue;
        const p = pins[pfn]! - 1;
        pins[pfn] = p;
        unpinned++;
        if (p === 0 && orphans && state[pfn] === FrameState.Orphan) this.#free(pfn);
        continue;
      }
      const lo = pfn < BLOCK_PAGES ? BLOCK_PAGES : pfn;
      const last = pfn + len;
      const hi = last > ramFrames ? ramFrames : last;
      for (let f = lo; f < hi; f++) {
        const p = pins[f]! - 1;
        pins[f] = p;
        if (p === 0 && orphans && state[f] === FrameState.Orphan) this.#free(f);
      }
      if (hi > lo) unpinned += hi - lo;
    }
    this.totalPins -= unpinned;
    return unpinned;
  }

  /** Reserves a contiguous MMIO range (a BAR); its frames have no struct page. */
  allocMmio(npages: number): number {
    const base = this.#nextMmioPfn;
    this.#nextMmioPfn += Math.ceil(npages / BLOCK_PAGES) * BLOCK_PAGES;
    return base;
  }

  read(pfn: number, offset: number, dst: Uint8Array): void {
    const chunk = this.#content.get(Math.floor(pfn / CONTENT_CHUNK_PAGES));
    const at = (pfn % CONTENT_CHUNK_PAGES) * PAGE_SIZE + offset;
    if (chunk === undefined) dst.fill(0);
    else dst.set(chunk.subarray(at, at + dst.length));
  }

  write(pfn: number, offset: number, src: Uint8Array): void {
    const key = Math.floor(pfn / CONTENT_CHUNK_PAGES);
    let chunk = this.#content.get(key);
    if (chunk === undefined) {
      chunk = new Uint8Array(CONTENT_CHUNK_PAGES * PAGE_SIZE);
      this.#content.set(key, chunk);
    }
    chunk.set(src, (pfn % CONTENT_CHUNK_PAGES) * PAGE_SIZE + offset);
  }

  #free(pfn: number): void {
    if (this.state[pfn] === FrameState.Orphan) this.#orphans--;
    this.state[pfn] = FrameState.Free;
    this.framesInUse--;
    const chunk = this.#content.get(Math.floor(pfn / CONTENT_CHUNK_PAGES));
    chunk?.fill(0, (pfn % CONTENT_CHUNK_PAGES) * PAGE_SIZE, (pfn % CONTENT_CHUNK_PAGES + 1) * PAGE_SIZE);
    if (this.#scatterCount === this.#scatter.length) {
      const grown = new Uint32Array(this.#scatter.length * 2);
      grown.set(this.#scatter);
      this.#scatter = grown;
    }
    this.#scatter[this.#scatterCount++] = pfn;
  }

  #refillScatter(): boolean {
    const take = Math.min(SCATTER_REFILL_BLOCKS, this.#freeBlockCount);
    if (take === 0) return false;
    const need = this.#scatterCount + take * BLOCK_PAGES;
    if (need > this.#scatter.length) {
      const grown = new Uint32Array(need);
      grown.set(this.#scatter.subarray(0, this.#scatterCount));
      this.#scatter = grown;
    }
    const start = this.#scatterCount;
    for (let i = 0; i < take; i++) {
      const base = this.#freeBlocks[--this.#freeBlockCount]! * BLOCK_PAGES;
      for (let k = 0; k < BLOCK_PAGES; k++) this.#scatter[this.#scatterCount++] = base + k;
    }
    this.#rng.shuffle(this.#scatter, start, this.#scatterCount);
    return true;
  }
}
