/**
 * The software IO TLB: a bounce-buffer pool in low host memory for devices
 * that cannot reach a buffer (kernel/dma/swiotlb.c, the single-pool slot
 * search of v5.15; constants of include/linux/swiotlb.h).
 *
 * Model: `nslabs` slots of IO_TLB_SIZE = 2 KiB in segments of IO_TLB_SEGSIZE =
 * 128 slots (so no bounce buffer exceeds 256 KiB), 64 MiB by default. The pool
 * is real host frames: 2 MiB blocks taken from PhysicalMemory below 4 GiB, as
 * memblock_alloc_low places the kernel's buffer. The kernel's buffer is one
 * contiguous range; here slot i lives in block i / 1024 of the pool, which
 * changes nothing a device sees because a bounce buffer never leaves its
 * 256 KiB segment, and segments never straddle a block.
 *
 * Per slot, as the kernel keeps: `list` (free slots from here to the end of the
 * free run inside the segment, 0 when taken), `origAddr` (the buffer bounced,
 * -1 when free) and `allocSize` (bytes from this slot to the end of the
 * mapping). A map searches from `index` in strides (2 slots, i.e. page
 * alignment, for mappings of a page or more), skipping spans that cross the
 * device's segment boundary, takes the first run of free slots long enough,
 * and moves `index` past it. A full pool logs "swiotlb buffer is full" and the
 * map fails with DMA_MAPPING_ERROR.
 *
 * Data really moves: the original is copied into the bounce frames on map and
 * on sync_for_device for TO_DEVICE and BIDIRECTIONAL (`copyOnMap: 'always'`
 * copies on every map, as kernels since 5.18 do to avoid leaking stale data),
 * and copied back on unmap and sync_for_cpu for FROM_DEVICE and BIDIRECTIONAL,
 * through PhysicalMemory read/write.
 *
 * Invariants: `used` = number of slots with list 0; every free slot's `list`
 * is 1 + the next slot's (0 past the segment end or a taken slot); a taken
 * slot has an original address.
 */
import { HostError } from "../errors/kernel-error.js";
import { BLOCK_PAGES, type PhysicalMemory } from "../host/physical-memory.js";
import type { KernelLog } from "../host/kernel-log.js";
import { PAGE_SIZE } from "../address/address.js";
import { DmaDirection, hex } from "./dma-addr.js";

export const IO_TLB_SHIFT = 11;
export const IO_TLB_SIZE = 1 << IO_TLB_SHIFT;
export const IO_TLB_SEGSIZE = 128;
export const IO_TLB_DEFAULT_SIZE = 64 << 20;
const SLOTS_PER_BLOCK = (BLOCK_PAGES * PAGE_SIZE) / IO_TLB_SIZE;
const INVALID_PHYS_ADDR = -1;

export interface SwiotlbHost {
  readonly phys: PhysicalMemory;
  readonly kernel: KernelLog;
}

/** What the pool needs to know of the device it bounces for. */
export interface SwiotlbDevice {
  readonly name: string;
  readonly segmentBoundaryMask: bigint;
}

export interface SwiotlbOptions {
  /** Pool size, a multiple of 2 MiB; IO_TLB_DEFAULT_SIZE (64 MiB) when omitted. */
  readonly bytes?: number;
  /** The pool lies below this frame; 4 GiB when omitted. */
  readonly belowPfn?: number;
  /** When a map copies the original in: per direction (the reference, before 5.18), or always. */
  readonly copyOnMap?: "direction" | "always";
}

export class SwiotlbPool {
  readonly nslabs: number;
  /** Slots taken. */
  used = 0;
  /** Where the next search starts. */
  index = 0;
  readonly blocks: Uint32Array;
  readonly copyOnMap: "direction" | "always";
  readonly #list: Uint8Array;
  readonly #origAddr: Float64Array;
  readonly #allocSize: Float64Array;
  readonly #blockIndex = new Map<number, number>();
  readonly #buf = new Uint8Array(PAGE_SIZE);
  #destroyed = false;

  /** swiotlb_init: takes the pool's frames from host memory; ENOMEM when not enough low memory is free. */
  constructor(
    private readonly host: SwiotlbHost,
    options: SwiotlbOptions = {},
  ) {
    const bytes = options.bytes ?? IO_TLB_DEFAULT_SIZE;
    const blockBytes = BLOCK_PAGES * PAGE_SIZE;
    if (!(bytes >= blockBytes && bytes % blockBytes === 0)) throw new RangeError(`swiotlb size ${bytes} must be a positive multiple of 2 MiB`);
    const nblocks = bytes / blockBytes;
    const below = options.belowPfn ?? 0x10_0000;
    this.blocks = new Uint32Array(nblocks);
    for (let b = 0; b < nblocks; b++) {
      const pfn = host.phys.allocBlockBelow(below);
      if (pfn === 0) {
        for (let k = 0; k < b; k++) this.#releaseBlock(this.blocks[k]!);
        throw new HostError("ENOMEM", "swiotlb-no-low-memory", { done: b }, `swiotlb: cannot allocate ${bytes} bytes below frame ${hex(below)}`);
      }
      this.blocks[b] = pfn;
      this.#blockIndex.set(pfn, b);
    }
    this.copyOnMap = options.copyOnMap ?? "direction";
    this.nslabs = nblocks * SLOTS_PER_BLOCK;
    this.#list = new Uint8Array(this.nslabs);
    this.#origAddr = new Float64Array(this.nslabs).fill(INVALID_PHYS_ADDR);
    this.#allocSize = new Float64Array(this.nslabs);
    for (let i = 0; i < this.nslabs; i++) this.#list[i] = IO_TLB_SEGSIZE - (i & (IO_TLB_SEGSIZE - 1));
  }

  /** swiotlb_max_mapping_size: 256 KiB. */
  maxMappingSize(): number {
    return IO_TLB_SIZE * IO_TLB_SEGSIZE;
  }

  /** Physical address of slot i. */
  slotAddr(i: number): number {
    return this.blocks[Math.floor(i / SLOTS_PER_BLOCK)]! * PAGE_SIZE + (i % SLOTS_PER_BLOCK) * IO_TLB_SIZE;
  }

  /** is_swiotlb_buffer. */
  isSwiotlbBuffer(phys: number): boolean {
    return this.#slotOf(phys) >= 0;
  }

  /**
   * swiotlb_tbl_map_single: a bounce buffer for `mappingSize` bytes at physical
   * `orig`; returns its physical address, or -1 (pool full, or a mapping larger
   * than a segment).
   */
  mapSingle(dev: SwiotlbDevice, orig: number, mappingSize: number, allocSize: number, dir: DmaDirection, skipCpuSync = false): number {
    const log = this.host.kernel;
    if (log.warnOnce(mappingSize > allocSize, "swiotlb_tbl_map_single", `${dev.name}: mapping size ${mappingSize} > alloc size ${allocSize}`)) return -1;
    const index = this.#findSlots(dev, allocSize);
    if (index < 0) {
      log.prWarn(`${dev.name}: swiotlb buffer is full (sz: ${allocSize} bytes), total ${this.nslabs} (slots), used ${this.used} (slots)`);
      return -1;
    }
    const nslots = Math.ceil(allocSize / IO_TLB_SIZE);
    for (let i = 0; i < nslots; i++) this.#origAddr[index + i] = orig + i * IO_TLB_SIZE;
    const tlb = this.slotAddr(index);
    if (!skipCpuSync && (this.copyOnMap === "always" || dir === DmaDirection.TO_DEVICE || dir === DmaDirection.BIDIRECTIONAL)) this.#bounce(tlb, mappingSize, DmaDirection.TO_DEVICE);
    return tlb;
  }

  /** swiotlb_tbl_unmap_single: copies back (FROM_DEVICE, BIDIRECTIONAL) unless skipped, then frees the slots. */
  unmapSingle(_dev: SwiotlbDevice, tlb: number, mappingSize: number, dir: DmaDirection, skipCpuSync = false): void {
    if (!skipCpuSync && (dir === DmaDirection.FROM_DEVICE || dir === DmaDirection.BIDIRECTIONAL)) this.#bounce(tlb, mappingSize, DmaDirection.FROM_DEVICE);
    this.#releaseSlots(tlb);
  }

  /** swiotlb_sync_single_for_device: copies the original in for TO_DEVICE and BIDIRECTIONAL. */
  syncSingleForDevice(_dev: SwiotlbDevice, tlb: number, size: number, dir: DmaDirection): void {
    if (dir === DmaDirection.TO_DEVICE || dir === DmaDirection.BIDIRECTIONAL) this.#bounce(tlb, size, DmaDirection.TO_DEVICE);
  }

  /** swiotlb_sync_single_for_cpu: copies back for FROM_DEVICE and BIDIRECTIONAL. */
  syncSingleForCpu(_dev: SwiotlbDevice, tlb: number, size: number, dir: DmaDirection): void {
    if (dir === DmaDirection.FROM_DEVICE || dir === DmaDirection.BIDIRECTIONAL) this.#bounce(tlb, size, DmaDirection.FROM_DEVICE);
  }

  /** Gives the pool's frames back to host memory; the pool must be empty. */
  destroy(): void {
    if (this.#destroyed) return;
    if (this.used !== 0) throw new Error(`swiotlb pool destroyed with ${this.used} slots in use`);
    this.#destroyed = true;
    for (const pfn of this.blocks) this.#releaseBlock(pfn);
  }

  assertInvariants(): void {
    let used = 0;
    for (let i = 0; i < this.nslabs; i++) {
      const list = this.#list[i]!;
      if (list === 0) {
        used++;
        if (this.#origAddr[i] === INVALID_PHYS_ADDR) throw new Error(`swiotlb invariant violated: taken slot ${i} has no original address`);
        continue;
      }
      const endOfSegment = (i & (IO_TLB_SEGSIZE - 1)) === IO_TLB_SEGSIZE - 1;
      const expected = endOfSegment ? 1 : this.#list[i + 1]! + 1;
      if (list !== expected) throw new Error(`swiotlb invariant violated: slot ${i} list ${list}, expected ${expected}`);
    }
    if (used !== this.used) throw new Error(`swiotlb invariant violated: ${used} slots taken, used = ${this.used}`);
  }

  /** swiotlb_find_slots (v5.15, one pool, min_align_mask 0). */
  #findSlots(dev: SwiotlbDevice, allocSize: number): number {
    const nslots = Math.ceil(allocSize / IO_TLB_SIZE);
    if (nslots === 0 || nslots > this.nslabs - this.used) return -1;
    const mask = dev.segmentBoundaryMask;
    // get_max_slots
    const maxSlots = mask === (1n << 64n) - 1n ? 2 ** (64 - IO_TLB_SHIFT) : Math.ceil(Number(mask + 1n) / IO_TLB_SIZE);
    let stride = 1;
    if (allocSize >= PAGE_SIZE) stride = 2;
    const wrapIndex = (i: number): number => (i >= this.nslabs ? 0 : i);
    let index = wrapIndex(Math.ceil(this.index / stride) * stride);
    const wrap = index;
    do {
      // iommu_is_span_boundary, on the slot's physical address
      const first = this.slotAddr(index) / IO_TLB_SIZE;
      const spans = (first % maxSlots) + nslots > maxSlots;
      if (!spans && this.#list[index]! >= nslots) return this.#take(index, nslots, allocSize);
      index = wrapIndex(index + stride);
    } while (index !== wrap);
    return -1;
  }

  #take(index: number, nslots: number, allocSize: number): number {
    for (let i = index; i < index + nslots; i++) {
      this.#list[i] = 0;
      this.#allocSize[i] = allocSize - (i - index) * IO_TLB_SIZE;
    }
    let count = 0;
    for (let i = index - 1; (i & (IO_TLB_SEGSIZE - 1)) !== IO_TLB_SEGSIZE - 1 && this.#list[i] !== 0; i--) this.#list[i] = ++count;
    this.index = index + nslots < this.nslabs ? index + nslots : 0;
    this.used += nslots;
    return index;
  }

  /** swiotlb_release_slots. */
  #releaseSlots(tlb: number): void {
    const index = this.#slotOf(tlb);
    if (index < 0) throw new RangeError(`${hex(tlb)} is not a swiotlb address`);
    const nslots = Math.ceil(this.#allocSize[index]! / IO_TLB_SIZE);
    const segEnd = (Math.floor(index / IO_TLB_SEGSIZE) + 1) * IO_TLB_SEGSIZE;
    let count = index + nslots < segEnd ? this.#list[index + nslots]! : 0;
    for (let i = index + nslots - 1; i >= index; i--) {
      this.#list[i] = ++count;
      this.#origAddr[i] = INVALID_PHYS_ADDR;
      this.#allocSize[i] = 0;
    }
    for (let i = index - 1; (i & (IO_TLB_SEGSIZE - 1)) !== IO_TLB_SEGSIZE - 1 && this.#list[i] !== 0; i--) this.#list[i] = ++count;
    this.used -= nslots;
  }

  /** swiotlb_bounce: copies between the original and the bounce buffer at `tlb`. */
  #bounce(tlb: number, size: number, dir: DmaDirection): void {
    const index = this.#slotOf(tlb);
    let orig = this.#origAddr[index]!;
    let allocSize = this.#allocSize[index]!;
    if (orig === INVALID_PHYS_ADDR) return;
    const tlbOffset = tlb & (IO_TLB_SIZE - 1);
    const log = this.host.kernel;
    if (log.warnOnce(tlbOffset > allocSize, "swiotlb_bounce", `Buffer overflow detected. Allocation size: ${allocSize}. Mapping size: ${size}+${tlbOffset}.`)) return;
    orig += tlbOffset;
    allocSize -= tlbOffset;
    if (log.warnOnce(size > allocSize, "swiotlb_bounce", `Buffer overflow detected. Allocation size: ${allocSize}. Mapping size: ${size}.`)) size = allocSize;
    if (dir === DmaDirection.TO_DEVICE) this.#copy(orig, tlb, size);
    else this.#copy(tlb, orig, size);
  }

  #copy(src: number, dst: number, size: number): void {
    const phys = this.host.phys;
    while (size > 0) {
      const so = src % PAGE_SIZE;
      const d = dst % PAGE_SIZE;
      const n = Math.min(size, PAGE_SIZE - so, PAGE_SIZE - d);
      const chunk = this.#buf.subarray(0, n);
      phys.read(Math.floor(src / PAGE_SIZE), so, chunk);
      phys.write(Math.floor(dst / PAGE_SIZE), d, chunk);
      src += n;
      dst += n;
      size -= n;
    }
  }

  #slotOf(phys: number): number {
    const pfn = Math.floor(phys / PAGE_SIZE);
    const base = pfn - (pfn % BLOCK_PAGES);
    const b = this.#blockIndex.get(base);
    if (b === undefined || this.#destroyed) return -1;
    return b * SLOTS_PER_BLOCK + Math.floor((phys - base * PAGE_SIZE) / IO_TLB_SIZE);
  }

  #releaseBlock(pfn: number): void {
    for (let k = 0; k < BLOCK_PAGES; k++) this.host.phys.release(pfn + k);
  }
}
