/**
 * A recording proxy of one vGPU's VgpuServices: every call goes through to the
 * platform's services unchanged, and the ledger keeps what the vGPU holds.
 *
 * Model: contiguous and array pins are counted per guest frame; translations
 * are kept by handle id with their frames, device segments and the number of
 * times the vGPU released them. A handle the core revoked on its own (an
 * invalidation it answered for the vGPU) is marked, so a later release of it
 * is expected to fail and is not a double unmap. Violations are recorded at
 * the moment they happen: unpinning a frame this vGPU does not hold, releasing
 * a handle twice or one it never got.
 *
 * Invariants: livePins() = sum of frame counts + frames of live translations;
 * bytesUnmapped <= bytesMapped unless a violation was recorded.
 */
import { forwardServices, frameList, type FrameSpec, type Translation, type TranslationHandle, type VgpuServices } from "@vgpu-iommu/core";

export interface TranslationRecord {
  readonly id: number;
  readonly gfns: readonly number[];
  readonly segAddr: readonly bigint[];
  readonly segLength: readonly number[];
  releases: number;
  revoked: boolean;
}

export interface LedgerCounters {
  pinCalls: number;
  unpinCalls: number;
  framesPinned: number;
  framesUnpinned: number;
  translations: number;
  releases: number;
  bytesMapped: number;
  bytesUnmapped: number;
  doubleReleases: number;
  overUnpins: number;
}

export class ServicesLedger {
  readonly services: VgpuServices;
  readonly counters: LedgerCounters = { pinCalls: 0, unpinCalls: 0, framesPinned: 0, framesUnpinned: 0, translations: 0, releases: 0, bytesMapped: 0, bytesUnmapped: 0, doubleReleases: 0, overUnpins: 0 };
  readonly violations: string[] = [];
  /** Contiguous and array pins still held, per frame. */
  readonly pins = new Map<number, number>();
  readonly translations = new Map<number, TranslationRecord>();

  constructor(
    readonly vgpu: string,
    readonly inner: VgpuServices,
  ) {
    this.services = this.#proxy();
  }

  /** Frames this vGPU holds pinned: counted pins plus frames of live translations. */
  livePins(): number {
    let n = 0;
    for (const c of this.pins.values()) n += c;
    for (const t of this.translations.values()) if (this.#live(t)) n += t.gfns.length;
    return n;
  }

  /** Frames of [first, end) this vGPU holds pinned. */
  pinsIn(first: number, end: number): number {
    let n = 0;
    for (const [gfn, c] of this.pins) if (gfn >= first && gfn < end) n += c;
    for (const t of this.translations.values()) if (this.#live(t)) for (const g of t.gfns) if (g >= first && g < end) n++;
    return n;
  }

  /** The distinct frames this vGPU holds pinned, ascending. */
  heldFrames(): number[] {
    const held = new Set(this.pins.keys());
    for (const t of this.translations.values()) if (this.#live(t)) for (const g of t.gfns) held.add(g);
    return [...held].sort((x, y) => x - y);
  }

  liveTranslations(): number {
    let n = 0;
    for (const t of this.translations.values()) if (this.#live(t)) n++;
    return n;
  }

  /** Whether `addr` lies in a device segment of a live translation of this vGPU. */
  ownsAddress(addr: bigint): boolean {
    for (const t of this.translations.values()) {
      if (!this.#live(t)) continue;
      for (let s = 0; s < t.segAddr.length; s++) if (addr >= t.segAddr[s]! && addr < t.segAddr[s]! + BigInt(t.segLength[s]!)) return true;
    }
    return false;
  }

  /** The core released these handles itself (translate's `revoked` event). */
  markRevoked(handles: readonly number[]): void {
    for (const id of handles) {
      const t = this.translations.get(id);
      if (t === undefined || t.revoked || t.releases > 0) continue;
      t.revoked = true;
      for (const l of t.segLength) this.counters.bytesUnmapped += l;
    }
  }

  #live(t: TranslationRecord): boolean {
    return t.releases === 0 && !t.revoked;
  }

  #pin(gfns: ArrayLike<number>, npage: number): void {
    this.counters.pinCalls++;
    this.counters.framesPinned += npage;
    for (let i = 0; i < npage; i++) this.pins.set(gfns[i]!, (this.pins.get(gfns[i]!) ?? 0) + 1);
  }

  #unpin(gfns: ArrayLike<number>, npage: number): void {
    this.counters.unpinCalls++;
    for (let i = 0; i < npage; i++) {
      const gfn = gfns[i]!;
      const c = this.pins.get(gfn) ?? 0;
      if (c === 0) {
        this.counters.overUnpins++;
        this.violations.push(`unpinned gfn ${gfn}, which it did not hold pinned`);
        continue;
      }
      this.counters.framesUnpinned++;
      if (c === 1) this.pins.delete(gfn);
      else this.pins.set(gfn, c - 1);
    }
  }

  #translated(frames: FrameSpec, t: Translation): void {
    const gfns = Array.from(frameList(frames));
    const segAddr: bigint[] = [];
    const segLength: number[] = [];
    for (let s = 0; s < (t.segments?.count ?? 0); s++) {
      segAddr.push(t.segments!.addr[s]!);
      segLength.push(t.segments!.length[s]!);
      this.counters.bytesMapped += t.segments!.length[s]!;
    }
    this.counters.translations++;
    this.translations.set(t.handle.id, { id: t.handle.id, gfns, segAddr, segLength, releases: 0, revoked: false });
  }

  #releasing(handle: TranslationHandle): void {
    this.counters.releases++;
    const t = this.translations.get(handle?.id);
    if (t === undefined) {
      this.violations.push(`released handle ${String(handle?.id)}, which is not one of its translations`);
      return;
    }
    t.releases++;
    if (t.releases > 1) {
      this.counters.doubleReleases++;
      this.violations.push(`released translation ${t.id} (gfns ${t.gfns.join(",")}) ${t.releases} times`);
      return;
    }
    if (!t.revoked) for (const l of t.segLength) this.counters.bytesUnmapped += l;
  }

  #proxy(): VgpuServices {
    const inner = this.inner;
    return forwardServices(inner, {
      pinPages: (gfn, npage, prot, out) => {
        const r = inner.pinPages(gfn, npage, prot, out);
        this.#pin(consecutive(gfn, npage), npage);
        return r;
      },
      unpinPages: (gfn, npage) => {
        this.#unpin(consecutive(gfn, npage), npage);
        inner.unpinPages(gfn, npage);
      },
      pinPagesArray: (gfns, npage, prot, out) => {
        const r = inner.pinPagesArray(gfns, npage, prot, out);
        this.#pin(gfns, npage);
        return r;
      },
      unpinPagesArray: (gfns, npage) => {
        this.#unpin(gfns, npage);
        return inner.unpinPagesArray(gfns, npage);
      },
      translate: (frames, options) => {
        const t = inner.translate(frames, options);
        this.#translated(frames, t);
        return t;
      },
      release: (handle) => {
        this.#releasing(handle);
        inner.release(handle);
      },
    });
  }
}

const consecutive = (gfn: number, npage: number): number[] => Array.from({ length: npage }, (_, i) => gfn + i);
