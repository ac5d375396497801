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
    else this.state[pfn] = FrameState.Orphan;
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

  /** unpin_user_page: drop one pin; an orphan frame is freed with its last pin. */
  unpin(pfn: number): void {
    if (pfn >= this.ramFrames) return;
    const p = this.pins[pfn]! - 1;
    this.pins[pfn] = p;
    this.totalPins--;
    if (p === 0 && this.state[pfn] === FrameState.Orphan) this.#free(pfn);
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
