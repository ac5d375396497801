/**
 * The run's ledger of one vGPU: what its vendor pinned and mapped through its
 * services, counted from the calls it made (and the translations the core
 * revoked under it), so the summary can say what each vGPU held, and the run
 * can check the vendor contract (vendors.md 4.3) without knowing the vendor.
 *
 * Model: pin references per guest frame live in 64 Ki-frame chunks of
 * Uint16Array, allocated on first touch (a Map entry per chunk, never per
 * page). Translations are kept by handle id with their frames and, for a
 * device translation, its segments (device address and length).
 *
 * Invariants: liveRefs = sum of the chunks; livePages = frames with a non-zero
 * count; a translation is in `translations` from its translate call until its
 * release or revocation, exactly once; iovaBytesLive = sum of the live
 * segments' lengths.
 */

const CHUNK_SHIFT = 16;
const CHUNK = 1 << CHUNK_SHIFT;
const PAGE = 4096;

export interface LedgerSegment {
  readonly device: string;
  readonly addr: bigint;
  readonly length: number;
}

interface LedgerTranslation {
  readonly gfns: Float64Array;
  readonly segments: readonly LedgerSegment[];
  readonly iovaBytes: number;
}

export class PinLedger {
  readonly #chunks = new Map<number, Uint16Array>();
  readonly #translations = new Map<number, LedgerTranslation>();
  liveRefs = 0;
  livePages = 0;
  peakPages = 0;
  /** Pages pinned over the run (a pin call of n pages counts n). */
  pinnedTotal = 0;
  failedPins = 0;
  mappingsMade = 0;
  mappingsLive = 0;
  iovaBytesLive = 0;
  iovaBytesPeak = 0;
  /** dmaUnmap calls, memslot removals and revocations this vGPU was told of. */
  invalidations = 0;
  /** Frames unpinned that this vGPU held no pin on (the vendor's bookkeeping is off). */
  unbalancedUnpins = 0;

  constructor(
    readonly vgpu: string,
    readonly vm: string,
    readonly vendor: string,
    readonly type: string,
  ) {}

  pin(gfn: number): void {
    const key = gfn >>> CHUNK_SHIFT;
    let chunk = this.#chunks.get(key);
    if (chunk === undefined) this.#chunks.set(key, (chunk = new Uint16Array(CHUNK)));
    const i = gfn & (CHUNK - 1);
    if (chunk[i]!++ === 0) {
      this.livePages++;
      if (this.livePages > this.peakPages) this.peakPages = this.livePages;
    }
    this.liveRefs++;
    this.pinnedTotal++;
  }

  unpin(gfn: number): void {
    const chunk = this.#chunks.get(gfn >>> CHUNK_SHIFT);
    const i = gfn & (CHUNK - 1);
    if (chunk === undefined || chunk[i] === 0) {
      this.unbalancedUnpins++;
      return;
    }
    if (--chunk[i]! === 0) this.livePages--;
    this.liveRefs--;
  }

  pinRange(gfn: number, npage: number): void {
    for (let i = 0; i < npage; i++) this.pin(gfn + i);
  }

  unpinRange(gfn: number, npage: number): void {
    for (let i = 0; i < npage; i++) this.unpin(gfn + i);
  }

  refsInRange(firstGfn: number, npages: number): number {
    if (this.liveRefs === 0) return 0;
    let refs = 0;
    const end = firstGfn + npages;
    for (const [key, chunk] of this.#chunks) {
      const base = key * CHUNK;
      const lo = Math.max(firstGfn, base);
      const hi = Math.min(end, base + CHUNK);
      for (let g = lo; g < hi; g++) refs += chunk[g - base]!;
    }
    return refs;
  }

  addTranslation(id: number, gfns: Float64Array, segments: readonly LedgerSegment[]): void {
    for (let i = 0; i < gfns.length; i++) this.pin(gfns[i]!);
    let iovaBytes = 0;
    for (const s of segments) iovaBytes += s.length;
    this.#translations.set(id, { gfns, segments, iovaBytes });
    if (segments.length > 0) {
      this.mappingsMade++;
      this.mappingsLive++;
      this.iovaBytesLive += iovaBytes;
      if (this.iovaBytesLive > this.iovaBytesPeak) this.iovaBytesPeak = this.iovaBytesLive;
    }
  }

  /** Returns false when the handle is not (or no longer) live. */
  removeTranslation(id: number): boolean {
    const t = this.#translations.get(id);
    if (t === undefined) return false;
    this.#translations.delete(id);
    for (let i = 0; i < t.gfns.length; i++) this.unpin(t.gfns[i]!);
    if (t.segments.length > 0) {
      this.mappingsLive--;
      this.iovaBytesLive -= t.iovaBytes;
    }
    return true;
  }

  get translationsLive(): number {
    return this.#translations.size;
  }

  /** Live device segments, in handle order. */
  liveSegments(): LedgerSegment[] {
    const out: LedgerSegment[] = [];
    for (const t of this.#translations.values()) out.push(...t.segments);
    return out;
  }

  liveDeviceAddresses(): bigint[] {
    const out: bigint[] = [];
    for (const t of this.#translations.values()) {
      for (const s of t.segments) for (let off = 0; off < s.length; off += PAGE) out.push(s.addr + BigInt(off));
    }
    return out;
  }
}
