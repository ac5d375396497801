/**
 * A vGPU's view of the global GTT (vendors.md 1.4, gtt.c
 * `emulate_ggtt_mmio_write`): the guest's entries (`virtual_ggtt`) and the
 * shadow entries the physical GPU uses (`host_ggtt_aperture/hidden`), for the
 * vGPU's partition only: its aperture slice followed by its hidden slice.
 *
 * A guest entry is two u32 halves. A shadow entry is a DMA page number from
 * the vGPU's DMA cache, or SCRATCH (the GPU-wide scratch page, a GVT-owned
 * page that is not a guest frame), with its present bit.
 *
 * Flow of one write (8 bytes, or the second of two 4-byte halves):
 * 1. a present entry is mapped through the cache (pin + map, or kref++); on
 *    failure the shadow points at scratch, present, and the guest is not told;
 *    a non-present entry shadows as scratch with present clear;
 * 2. the guest value is stored;
 * 3. the old shadow entry is released (kref_put) unless it was scratch;
 * 4. the new shadow entry is stored.
 * Mapping the new before releasing the old keeps a rewrite of the same GFN
 * from unpinning it in between.
 *
 * The first 4-byte half of an entry is parked in the partial-PTE list: the
 * guest entry becomes that half with the other half zero, the old shadow is
 * released and the shadow becomes non-present scratch; the shadow is made when
 * the other half arrives. A repeated write of the same half only updates the
 * parked value.
 *
 * Invariants: every shadow entry that is not SCRATCH holds exactly one kref of
 * the cache entry at that DMA page; writes outside the partition change
 * nothing (the guest may program the whole GM space when ballooning).
 */
import type { GvtDmaCache } from "./dma-cache.js";
import { GEN8_PAGE_PRESENT, GTT_HI_ADDR_MASK } from "./gvt-params.js";
import type { GmSlice } from "./gm-space.js";

/** A shadow entry pointing at the scratch page. */
export const SCRATCH = -1;
const OUTSIDE = -1;

interface PartialPte {
  readonly index: number;
  /** Which half was written: 0 (low dword) or 4 (high dword). */
  off: number;
  lo: number;
  hi: number;
}

export interface GgttCounters {
  /** Entry updates that reached the shadow (8-byte writes and completed halves). */
  updates: number;
  /** Present entries whose mapping failed and now point at scratch. */
  scratched: number;
  /** Writes outside the partition, ignored. */
  ignored: number;
  /** First halves parked in the partial-PTE list. */
  partials: number;
}

export type GgttFailureListener = (index: number, gfn: number, errno: number) => void;

export class GvtGgtt {
  readonly apStart: number;
  readonly apCount: number;
  readonly hiStart: number;
  readonly hiCount: number;
  /** Entries in the partition. */
  readonly length: number;
  /** virtual_ggtt, partition slots only. */
  readonly guestLo: Uint32Array;
  readonly guestHi: Uint32Array;
  /** The shadow: a DMA page number or SCRATCH, and its present bit. */
  readonly hostDma: Float64Array;
  readonly hostPresent: Uint8Array;
  readonly counters: GgttCounters = { updates: 0, scratched: 0, ignored: 0, partials: 0 };
  /** Set by the vGPU; called only on a failed mapping (the rare path). */
  onFailure: GgttFailureListener | undefined;
  readonly #partial: PartialPte[] = [];

  constructor(
    aperture: GmSlice,
    hidden: GmSlice,
    private readonly cache: GvtDmaCache,
  ) {
    this.apStart = aperture.start;
    this.apCount = aperture.npages;
    this.hiStart = hidden.start;
    this.hiCount = hidden.npages;
    this.length = this.apCount + this.hiCount;
    this.guestLo = new Uint32Array(this.length);
    this.guestHi = new Uint32Array(this.length);
    this.hostDma = new Float64Array(this.length).fill(SCRATCH);
    this.hostPresent = new Uint8Array(this.length).fill(1);
  }

  /** The partition slot of GGTT index `index`, or -1 outside the partition (vgpu_gmadr_is_valid). */
  slotOf(index: number): number {
    const a = index - this.apStart;
    if (a >= 0 && a < this.apCount) return a;
    const h = index - this.hiStart;
    if (h >= 0 && h < this.hiCount) return this.apCount + h;
    return OUTSIDE;
  }

  /** The GGTT index of a partition slot. */
  indexOf(slot: number): number {
    return slot < this.apCount ? this.apStart + slot : this.hiStart + slot - this.apCount;
  }

  /** Whether [firstIndex, firstIndex + n) lies inside one slice of the partition (intel_gvt_ggtt_validate_range). */
  validRange(firstIndex: number, n: number): boolean {
    if (n <= 0) return false;
    const inAp = firstIndex >= this.apStart && firstIndex + n <= this.apStart + this.apCount;
    const inHi = firstIndex >= this.hiStart && firstIndex + n <= this.hiStart + this.hiCount;
    return inAp || inHi;
  }

  /** An 8-byte guest write of entry `index`. */
  write64(index: number, lo: number, hi: number): void {
    const slot = this.slotOf(index);
    if (slot === OUTSIDE) {
      this.counters.ignored++;
      return;
    }
    this.#update(slot, lo >>> 0, hi >>> 0, false);
  }

  /** A 4-byte guest write of half `off` (0 or 4) of entry `index`. */
  write32(index: number, off: number, value: number): void {
    const slot = this.slotOf(index);
    if (slot === OUTSIDE) {
      this.counters.ignored++;
      return;
    }
    let lo = off === 0 ? value >>> 0 : 0;
    let hi = off === 0 ? 0 : value >>> 0;
    const at = this.#partial.findIndex((p) => p.index === index);
    if (at >= 0) {
      const p = this.#partial[at]!;
      if (p.off === off) {
        // A new value for the parked half: only the guest view changes.
        p.lo = lo;
        p.hi = hi;
        this.guestLo[slot] = lo;
        this.guestHi[slot] = hi;
        return;
      }
      // The other half: the entry is whole.
      if (off === 0) hi = p.hi;
      else lo = p.lo;
      this.#partial.splice(at, 1);
      this.#update(slot, lo, hi, false);
      return;
    }
    this.#partial.push({ index, off, lo, hi });
    this.counters.partials++;
    this.#update(slot, lo, hi, true);
  }

  /** The guest's 4-byte half `off` of entry `index`; 0 outside the partition. */
  read32(index: number, off: number): number {
    const slot = this.slotOf(index);
    if (slot === OUTSIDE) return 0;
    return off === 0 ? this.guestLo[slot]! : this.guestHi[slot]!;
  }

  /** The guest frame a present guest entry names, or -1 (GGTT gma_to_gpa). */
  guestGfn(index: number): number {
    const slot = this.slotOf(index);
    if (slot === OUTSIDE || (this.guestLo[slot]! & GEN8_PAGE_PRESENT) === 0) return -1;
    return gfnOf(this.guestLo[slot]!, this.guestHi[slot]!);
  }

  /** The shadow's DMA page for entry `index`, SCRATCH, or undefined outside the partition. */
  hostEntry(index: number): number | undefined {
    const slot = this.slotOf(index);
    return slot === OUTSIDE ? undefined : this.hostDma[slot]!;
  }

  /**
   * intel_vgpu_reset_ggtt: every slot of the partition back to present scratch;
   * with `invalidateOld` each old mapping is released first. Guest entries and
   * parked halves are untouched, as in the kernel.
   */
  reset(invalidateOld: boolean): number {
    let released = 0;
    for (let slot = 0; slot < this.length; slot++) {
      const old = this.hostDma[slot]!;
      if (invalidateOld && old !== SCRATCH) {
        this.cache.unmapByDma(old);
        released++;
      }
      this.hostDma[slot] = SCRATCH;
      this.hostPresent[slot] = 1;
    }
    return released;
  }

  /** Shadow entries that hold a mapping. */
  mappedEntries(): number {
    let n = 0;
    for (let slot = 0; slot < this.length; slot++) if (this.hostDma[slot] !== SCRATCH) n++;
    return n;
  }

  /** Parked first halves. */
  get pendingPartials(): number {
    return this.#partial.length;
  }

  #update(slot: number, lo: number, hi: number, partial: boolean): void {
    let dma = SCRATCH;
    let present = 0;
    if (!partial && (lo & GEN8_PAGE_PRESENT) !== 0) {
      present = 1;
      const gfn = gfnOf(lo, hi);
      const r = this.cache.map(gfn, 1);
      if (r >= 0) dma = r;
      else {
        this.counters.scratched++;
        this.onFailure?.(this.indexOf(slot), gfn, r);
      }
    }
    this.guestLo[slot] = lo;
    this.guestHi[slot] = hi;
    const old = this.hostDma[slot]!;
    if (old !== SCRATCH) this.cache.unmapByDma(old);
    this.hostDma[slot] = dma;
    this.hostPresent[slot] = present;
    this.counters.updates++;
  }
}

/** The frame a gen8 entry names: address bits 12..45. */
export function gfnOf(lo: number, hi: number): number {
  return (lo >>> 12) + (hi & GTT_HI_ADDR_MASK) * 0x100000;
}
