/**
 * The P2M of an auto-translated domain (an HVM guest, or a PVH Dom0): guest
 * frame -> machine frame, with a type per frame, as Xen's p2m.
 *
 * Model: one FrameRadix whose attribute is the p2m type (0 = no entry) and
 * whose value is the MFN. Paged-out frames have no MFN: `paged_out` (evicted by
 * the pager) and `paging_in` (a populate was requested and is pending). A
 * shared frame is copy-on-write between domains and is refused by every
 * referenced lookup of this model (unsharing is not modelled).
 *
 * Invariants: a type that names a frame (ram, shared, ioreq_server, grant,
 * foreign, mmio) has a valid MFN; paging types and holes have none.
 */
import { FrameRadix } from "./frame-radix.js";

/** p2m_type_t, in the model's numbering (0 is "no entry", p2m_invalid). */
export const P2mType = {
  invalid: 0,
  ram_rw: 1,
  ram_ro: 2,
  paged_out: 3,
  paging_in: 4,
  shared: 5,
  ioreq_server: 6,
  grant_map_rw: 7,
  grant_map_ro: 8,
  map_foreign: 9,
  mmio_direct: 10,
} as const;
export type P2mType = (typeof P2mType)[keyof typeof P2mType];

export const P2M_TYPE_NAMES = ["invalid", "ram_rw", "ram_ro", "paged_out", "paging_in", "shared", "ioreq_server", "grant_map_rw", "grant_map_ro", "map_foreign", "mmio_direct"] as const;

/** p2m_is_ram: guest RAM, including frames claimed by an ioreq server. */
export const p2mIsRam = (t: number): boolean => t === P2mType.ram_rw || t === P2mType.ram_ro || t === P2mType.ioreq_server;
export const p2mIsPaging = (t: number): boolean => t === P2mType.paged_out || t === P2mType.paging_in;
export const p2mIsGrant = (t: number): boolean => t === P2mType.grant_map_rw || t === P2mType.grant_map_ro;
/** Types whose frame a referenced lookup may return: RAM, grants, foreign maps (p2m_is_any_ram minus shared). */
export const p2mHasPage = (t: number): boolean => p2mIsRam(t) || p2mIsGrant(t) || t === P2mType.map_foreign;

export class P2m {
  readonly table = new FrameRadix();

  /** The type of `gfn` (P2mType.invalid for a hole). */
  type(gfn: number): P2mType {
    return this.table.attr(gfn) as P2mType;
  }

  /** The MFN of `gfn`, or -1 when the entry names no frame. */
  mfn(gfn: number): number {
    const t = this.table.attr(gfn);
    return t === 0 || p2mIsPaging(t) ? -1 : this.table.value(gfn);
  }

  set(gfn: number, mfn: number, type: P2mType): void {
    if (type === P2mType.invalid) this.table.clear(gfn);
    else this.table.set(gfn, p2mIsPaging(type) ? 0 : mfn, type);
  }

  /** Changes the type and keeps the MFN (p2m_change_type_one). */
  retype(gfn: number, type: P2mType): void {
    this.table.set(gfn, this.table.value(gfn), type);
  }

  clear(gfn: number): void {
    this.table.clear(gfn);
  }

  get entries(): number {
    return this.table.size;
  }
}
