/**
 * The P2M of a PV domain as Linux keeps it (arch/x86/include/asm/xen/page.h):
 * an array from the domain's pseudo-physical frame (PFN) to a 64-bit entry,
 * the MFN with marker bits.
 *
 * Model: a pair of Uint32Arrays, `lo` and `hi`, holding each 64-bit entry, so
 * there is neither a BigInt nor an object per frame. Markers live in `hi`:
 * FOREIGN_FRAME_BIT (bit 63) for a frame of another domain (a grant or foreign
 * map), IDENTITY_FRAME_BIT (bit 62) for 1:1 MMIO and holes; INVALID_P2M_ENTRY
 * is all ones. MFNs fit 32 bits in this model, so `hi` carries nothing else.
 *
 * Invariants: an entry is INVALID, a plain MFN (hi = 0), a foreign MFN
 * (hi = bit 31) or an identity frame (hi = bit 30, lo = the PFN itself).
 */
export const FOREIGN_FRAME_BIT = 1n << 63n;
export const IDENTITY_FRAME_BIT = 1n << 62n;
export const INVALID_P2M_ENTRY = (1n << 64n) - 1n;

const HI_FOREIGN = 0x8000_0000;
const HI_IDENTITY = 0x4000_0000;
const ALL_ONES = 0xffff_ffff;

export class PvP2m {
  readonly lo: Uint32Array;
  readonly hi: Uint32Array;

  constructor(readonly maxPfn: number) {
    this.lo = new Uint32Array(maxPfn).fill(ALL_ONES);
    this.hi = new Uint32Array(maxPfn).fill(ALL_ONES);
  }

  /** get_phys_to_machine(pfn): the raw 64-bit entry (INVALID beyond max_pfn). */
  entry(pfn: number): bigint {
    if (!(pfn >= 0 && pfn < this.maxPfn)) return INVALID_P2M_ENTRY;
    return (BigInt(this.hi[pfn]!) << 32n) | BigInt(this.lo[pfn]!);
  }

  isInvalid(pfn: number): boolean {
    return !(pfn >= 0 && pfn < this.maxPfn) || (this.hi[pfn] === ALL_ONES && this.lo[pfn] === ALL_ONES);
  }

  isForeign(pfn: number): boolean {
    return !this.isInvalid(pfn) && (this.hi[pfn]! & HI_FOREIGN) !== 0;
  }

  isIdentity(pfn: number): boolean {
    return !this.isInvalid(pfn) && (this.hi[pfn]! & HI_IDENTITY) !== 0;
  }

  /** pfn_to_mfn: the MFN with the markers stripped, or -1 for INVALID_P2M_ENTRY. */
  mfn(pfn: number): number {
    return this.isInvalid(pfn) ? -1 : this.lo[pfn]!;
  }

  /** pfn_to_bfn for a PV domain: the MFN (the bus frame Xen's 1:1 contexts use). */
  pfnToBfn(pfn: number): number {
    return this.mfn(pfn);
  }

  set(pfn: number, mfn: number): void {
    this.lo[pfn] = mfn;
    this.hi[pfn] = 0;
  }

  /** set_foreign_p2m_mapping: FOREIGN_FRAME(mfn). */
  setForeign(pfn: number, mfn: number): void {
    this.lo[pfn] = mfn;
    this.hi[pfn] = HI_FOREIGN;
  }

  /** IDENTITY_FRAME(pfn): 1:1 MMIO or a hole. */
  setIdentity(pfn: number): void {
    this.lo[pfn] = pfn;
    this.hi[pfn] = HI_IDENTITY;
  }

  clear(pfn: number): void {
    this.lo[pfn] = ALL_ONES;
    this.hi[pfn] = ALL_ONES;
  }

  /** The first PFN >= `from` whose entry is INVALID, for ballooned pages; -1 when none. */
  findInvalid(from: number): number {
    for (let p = from; p < this.maxPfn; p++) if (this.hi[p] === ALL_ONES && this.lo[p] === ALL_ONES) return p;
    return -1;
  }
}
