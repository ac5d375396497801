/**
 * A memory object: what a VMA maps. Anonymous memory, a memfd shared by two
 * processes (live update), a hugetlbfs file, or a device BAR (PFNMAP).
 *
 * Model: `frames[i]` is the host frame backing page i of the object, 0 while
 * not yet faulted in. Faulting in follows the backing kind:
 * - `scattered-4k`: one frame from the scattered pool;
 * - `thp`: a whole aligned 2 MiB block for an untouched, fully covered window,
 *   unless the seeded fragmentation roll says the block allocation fails, in
 *   which case (and for partial windows) a single frame;
 * - `hugetlbfs`: 2 MiB blocks reserved when the object is created;
 * - `pfnmap`: fixed MMIO frames with no struct page, never faulted.
 *
 * Invariants: a frame appears in at most one slot of one object; dropping a
 * slot (munmap of the last mapping, madvise(DONTNEED), balloon) releases the
 * frame to PhysicalMemory, which keeps it while it is still pinned. A window
 * marked huge holds one whole 2 MiB block in order (a PMD mapping); dropping
 * any of its pages splits it.
 */
import { BLOCK_PAGES, type PhysicalMemory } from "./physical-memory.js";
import { HostError } from "../errors/kernel-error.js";

export type BackingKind = "scattered-4k" | "thp" | "hugetlbfs" | "pfnmap";

export const BACKING_KINDS: readonly BackingKind[] = ["scattered-4k", "thp", "hugetlbfs", "pfnmap"];

export interface MemoryObjectOptions {
  readonly backing: BackingKind;
  readonly npages: number;
  /** Probability that a THP fault cannot get a 2 MiB block and falls back to 4 KiB. */
  readonly fragmentation?: number;
}

let nextObjectId = 1;

export class MemoryObject {
  readonly id = nextObjectId++;
  readonly backing: BackingKind;
  /** A device BAR: fixed MMIO frames with no struct page (a field: read on every lookup). */
  readonly isPfnmap: boolean;
  readonly npages: number;
  /** Host frame of each page, 0 while not present. Unused for pfnmap. */
  readonly frames: Uint32Array;
  readonly #mmioBase: number;
  readonly #fragmentation: number;
  /** One byte per 2 MiB window: 1 while the window maps a whole block in order. */
  readonly #huge: Uint8Array;
  #mappings = 0;

  constructor(
    private readonly phys: PhysicalMemory,
    options: MemoryObjectOptions,
  ) {
    this.backing = options.backing;
    this.isPfnmap = options.backing === "pfnmap";
    this.npages = options.npages;
    this.#fragmentation = options.fragmentation ?? 0;
    if (this.backing === "pfnmap") {
      this.frames = new Uint32Array(0);
      this.#huge = new Uint8Array(0);
      this.#mmioBase = phys.allocMmio(options.npages);
      return;
    }
    this.#mmioBase = 0;
    this.frames = new Uint32Array(options.npages);
    this.#huge = new Uint8Array(this.backing === "scattered-4k" ? 0 : Math.ceil(options.npages / BLOCK_PAGES));
    if (this.backing === "hugetlbfs") {
      if (options.npages % BLOCK_PAGES !== 0) throw new HostError("EINVAL", "hugetlbfs-length-unaligned", { npages: options.npages });
      const blocks = options.npages / BLOCK_PAGES;
      if (blocks > phys.freeBlocks) throw new HostError("ENOMEM", "hugetlbfs-pool-exhausted", { npages: options.npages });
    }
  }


  /** First MMIO frame of a pfnmap object. */
  get mmioBase(): number {
    return this.#mmioBase;
  }

  /** Frame of page `index`, faulting it in; 0 when host memory is exhausted. */
  faultIn(index: number): number {
    const present = this.frames[index]!;
    if (present !== 0) return present;
    const window = index - (index % BLOCK_PAGES);
    if (this.backing === "hugetlbfs" || (this.backing === "thp" && this.#windowIsFree(window) && this.phys.rng.float() >= this.#fragmentation)) {
      const base = this.phys.allocBlock();
      if (base !== 0) {
        const frames = this.frames;
        for (let k = 0; k < BLOCK_PAGES; k++) frames[window + k] = base + k;
        this.#huge[window / BLOCK_PAGES] = 1;
        return frames[index]!;
      }
      if (this.backing === "hugetlbfs") return 0;
    }
    const frame = this.phys.allocFrame();
    this.frames[index] = frame;
    return frame;
  }

  /** Releases pages [index, index + n): the next touch faults in fresh frames. */
  drop(index: number, n: number): void {
    const frames = this.frames;
    const huge = this.#huge;
    for (let i = index; i < index + n; i++) {
      const f = frames[i]!;
      if (f !== 0) {
        this.phys.release(f);
        frames[i] = 0;
        if (huge.length !== 0) huge[Math.floor(i / BLOCK_PAGES)] = 0;
      }
    }
  }

  /**
   * How many pages from `index` to the end of its window are known to hold
   * consecutive frames because the window maps a whole block (0 when it does
   * not): a caller may then treat them as one physically contiguous run.
   */
  hugeRunAt(index: number): number {
    const huge = this.#huge;
    if (huge.length === 0) return 0;
    const window = Math.floor(index / BLOCK_PAGES);
    return huge[window] === 1 ? (window + 1) * BLOCK_PAGES - index : 0;
  }

  attach(): void {
    this.#mappings++;
  }

  /** The last mapping going away frees the object (pinned frames stay until unpinned). */
  detach(): void {
    if (--this.#mappings === 0 && !this.isPfnmap) this.drop(0, this.npages);
  }

  #windowIsFree(window: number): boolean {
    if (window + BLOCK_PAGES > this.npages) return false;
    for (let k = 0; k < BLOCK_PAGES; k++) if (this.frames[window + k] !== 0) return false;
    return true;
  }
}
