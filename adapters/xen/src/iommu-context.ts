/**
 * One IOMMU context (an IOMMU page table Xen programs for a domain's devices):
 * what a device's DMA to bus frame BFN (DFN) reaches.
 *
 * Model: explicit entries in a FrameRadix (BFN -> MFN, with readable/writable
 * bits and whether the entry holds a page reference), over a "backdrop" that
 * stands for the entries Xen populates wholesale without the model storing one
 * per frame:
 * - `identity-ram`: every host RAM frame at BFN == MFN (non-strict PV Dom0);
 * - `identity-owned`: the frames a domain owns at BFN == MFN (strict PV Dom0);
 * - `p2m`: the domain's P2M, BFN == GFN, permissions by p2m type (PVH Dom0,
 *   whose IOMMU shares or mirrors its P2M);
 * - `bypass`: no translation at all (dom0-iommu=passthrough);
 * - `none`: an empty context (a new PV-IOMMU 2024 context).
 * Reserved regions are identity-mapped over any backdrop. An unmap of a
 * backdrop entry leaves a tombstone, so the backdrop stays hidden there.
 *
 * Invariants: lookup(bfn) >= 0 iff a device can reach something at bfn;
 * an entry holding a reference was created with one, and unmap reports it so
 * the caller drops exactly that reference; `flushes` counts IOTLB flushes.
 */
import { ERRNO, type FaultInjector } from "@vgpu-iommu/core";
import { FrameRadix, RADIX_LEAF } from "./frame-radix.js";
import type { MachineFrames } from "./machine-frames.js";
import { P2mType, type P2m } from "./p2m.js";

export const IOMMUF_readable = 1;
export const IOMMUF_writable = 2;
const HOLDS_REF = 4;
const PRESENT = 8;
const TOMBSTONE = 16;

export type Backdrop =
  | { readonly kind: "none" }
  | { readonly kind: "bypass" }
  | { readonly kind: "identity-ram" }
  | { readonly kind: "identity-owned"; readonly domid: number }
  | { readonly kind: "p2m"; readonly p2m: P2m };

export interface ReservedRegion {
  readonly firstMfn: number;
  readonly npages: number;
}

export class IommuContext {
  readonly entries = new FrameRadix();
  /** IOTLB flushes of this context. */
  flushes = 0;
  /** Entries created and removed, for counters. */
  mapped = 0;
  unmapped = 0;

  constructor(
    readonly ctxNo: number,
    readonly domid: number,
    readonly backdrop: Backdrop,
    private readonly frames: MachineFrames,
    private readonly faults: FaultInjector,
    readonly reserved: readonly ReservedRegion[] = [],
  ) {}

  /** Permissions at `bfn` (IOMMUF_* bits), 0 when nothing is mapped there. */
  perms(bfn: number): number {
    const a = this.entries.attr(bfn);
    if (a !== 0) return a & TOMBSTONE ? 0 : a & (IOMMUF_readable | IOMMUF_writable);
    return this.#backdrop(bfn) >= 0 ? this.#backdropPerms(bfn) : 0;
  }

  /** iommu_lookup_page: the MFN at `bfn`, or -1 when it is not mapped. */
  lookup(bfn: number): number {
    const a = this.entries.attr(bfn);
    if (a !== 0) return a & TOMBSTONE ? -1 : this.entries.value(bfn);
    return this.#backdrop(bfn);
  }

  /** Whether the explicit entry at `bfn` holds a page reference. */
  holdsRef(bfn: number): boolean {
    return (this.entries.attr(bfn) & HOLDS_REF) !== 0;
  }

  /** iommu_map of one page: 0, or -ENOMEM when the page-table allocation fails (fault site `iommu_map`). */
  map(bfn: number, mfn: number, perms: number, holdsRef: boolean): number {
    if (this.faults.shouldFail("iommu_map")) return -ERRNO.ENOMEM;
    this.entries.set(bfn, mfn, PRESENT | (perms & (IOMMUF_readable | IOMMUF_writable)) | (holdsRef ? HOLDS_REF : 0));
    this.mapped++;
    return 0;
  }

  /** iommu_unmap of one page; the caller has checked it is mapped. */
  unmap(bfn: number): void {
    if (this.#backdrop(bfn) >= 0) this.entries.set(bfn, 0, TOMBSTONE);
    else this.entries.clear(bfn);
    this.unmapped++;
  }

  /** The first i in [0, n) at which bfn0 + i is mapped, or n (no side effect). */
  firstMapped(bfn0: number, n: number): number {
    if (this.backdrop.kind !== "none" || this.reserved.length > 0) {
      for (let i = 0; i < n; i++) if (this.lookup(bfn0 + i) >= 0) return i;
      return n;
    }
    for (let i = 0; i < n; ) {
      const f = bfn0 + i;
      const start = f % RADIX_LEAF;
      const span = Math.min(RADIX_LEAF - start, n - i);
      const leaf = this.entries.leafOf(f);
      if (leaf !== undefined) {
        const a = leaf.attr;
        for (let k = 0; k < span; k++) {
          const x = a[start + k]!;
          if (x !== 0 && (x & TOMBSTONE) === 0) return i + k;
        }
      }
      i += span;
    }
    return n;
  }

  /**
   * iommu_map of `n` pages: bfn0 + i -> mfns[from + i]. Stops at the first
   * page-table allocation failure (fault site `iommu_map`) and returns how many
   * pages it mapped. The caller has checked that none is mapped.
   */
  mapRange(bfn0: number, mfns: Uint32Array, from: number, n: number, perms: number, holdsRef: boolean): number {
    const av = PRESENT | (perms & (IOMMUF_readable | IOMMUF_writable)) | (holdsRef ? HOLDS_REF : 0);
    const faults = this.faults;
    for (let i = 0; i < n; ) {
      const f = bfn0 + i;
      const start = f % RADIX_LEAF;
      const span = Math.min(RADIX_LEAF - start, n - i);
      const leaf = this.entries.ensureLeaf(f);
      const a = leaf.attr;
      const v = leaf.value;
      let added = 0;
      for (let k = 0; k < span; k++) {
        if (faults.shouldFail("iommu_map")) {
          this.entries.noteDirect(leaf, f, added);
          this.mapped += i + k;
          return i + k;
        }
        if (a[start + k] === 0) added++;
        v[start + k] = mfns[from + i + k]!;
        a[start + k] = av;
      }
      this.entries.noteDirect(leaf, f, added);
      i += span;
    }
    this.mapped += n;
    return n;
  }

  /**
   * iommu_unmap from bfn0 on, page by page, stopping at the first page not
   * mapped: writes each MFN to `mfns[i]` and whether its entry held a page
   * reference to `held[i]`; returns how many pages it unmapped.
   */
  unmapRange(bfn0: number, n: number, mfns: Uint32Array, held: Uint8Array): number {
    if (this.backdrop.kind !== "none" || this.reserved.length > 0) {
      for (let i = 0; i < n; i++) {
        const mfn = this.lookup(bfn0 + i);
        if (mfn < 0) return i;
        mfns[i] = mfn;
        held[i] = this.holdsRef(bfn0 + i) ? 1 : 0;
        this.unmap(bfn0 + i);
      }
      return n;
    }
    for (let i = 0; i < n; ) {
      const f = bfn0 + i;
      const start = f % RADIX_LEAF;
      const span = Math.min(RADIX_LEAF - start, n - i);
      const leaf = this.entries.leafOf(f);
      if (leaf === undefined) return i;
      const a = leaf.attr;
      const v = leaf.value;
      let k = 0;
      for (; k < span; k++) {
        const x = a[start + k]!;
        if (x === 0 || (x & TOMBSTONE) !== 0) break;
        mfns[i + k] = v[start + k]!;
        held[i + k] = (x & HOLDS_REF) !== 0 ? 1 : 0;
        a[start + k] = 0;
        v[start + k] = 0;
      }
      this.unmapped += k;
      if (k > 0) this.entries.noteDirect(leaf, f, -k);
      if (k < span) return i + k;
      i += span;
    }
    return n;
  }

  /** An IOTLB flush (iommu_iotlb_flush / flush_all). */
  flush(): void {
    this.flushes++;
  }

  /** What a device DMA to `bfn` reaches: the MFN, or -1 for an IOMMU fault (unmapped, or a write to a read-only entry). */
  translate(bfn: number, write: boolean): number {
    if (this.backdrop.kind === "bypass") return bfn;
    const mfn = this.lookup(bfn);
    if (mfn < 0) return -1;
    if (write && (this.perms(bfn) & IOMMUF_writable) === 0) return -1;
    return mfn;
  }

  /** Explicit entries (not the backdrop), tombstones excluded. */
  get explicitEntries(): number {
    let n = 0;
    this.entries.forEachIn(0, Number.MAX_SAFE_INTEGER, (_f, _v, a) => {
      if ((a & TOMBSTONE) === 0) n++;
    });
    return n;
  }

  #backdrop(bfn: number): number {
    for (const r of this.reserved) if (bfn >= r.firstMfn && bfn < r.firstMfn + r.npages) return bfn;
    const b = this.backdrop;
    switch (b.kind) {
      case "none":
        return -1;
      case "bypass":
      case "identity-ram":
        return bfn >= 0 && bfn < this.frames.ramFrames ? bfn : -1;
      case "identity-owned":
        return this.frames.ownerOf(bfn) === b.domid ? bfn : -1;
      case "p2m": {
        const t = b.p2m.type(bfn);
        return t === P2mType.invalid || t === P2mType.paged_out || t === P2mType.paging_in || t === P2mType.shared ? -1 : b.p2m.mfn(bfn);
      }
    }
  }

  #backdropPerms(bfn: number): number {
    if (this.backdrop.kind !== "p2m") return IOMMUF_readable | IOMMUF_writable;
    const t = this.backdrop.p2m.type(bfn);
    return t === P2mType.ram_ro || t === P2mType.grant_map_ro ? IOMMUF_readable : IOMMUF_readable | IOMMUF_writable;
  }
}
