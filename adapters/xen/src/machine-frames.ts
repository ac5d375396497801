/**
 * Xen's view of host memory: who owns each machine frame, the machine-to-phys
 * table, and page references.
 *
 * Model: machine frames are the host's PhysicalMemory frames, so an MFN is a
 * host frame number. Xen's frame table is two typed arrays over host RAM:
 * `owner` (domid + 1, 0 for a free or Xen-owned frame) and `m2p` (the owner's
 * GFN, or PFN for a PV domain). A page reference (`get_page`) beyond the
 * allocation reference is a pin of the host frame, so `phys.pins[mfn]` is the
 * number of extra references and `phys.totalPins` the number Xen holds in all:
 * a frame released by its domain while referenced stays allocated (orphaned)
 * until the last reference goes, as `put_page` frees a page at count 0.
 *
 * Invariants: owner[mfn] != 0 iff the frame is allocated to that domain;
 * m2p[mfn] is meaningful only then; references are only taken on frames below
 * `ramFrames` (MMIO frames have no page_info).
 */
import type { PhysicalMemory } from "@vgpu-iommu/core";

/** The Xen frame-table owner value meaning "no domain". */
export const NO_OWNER = -1;

export class MachineFrames {
  readonly owner: Uint16Array;
  readonly m2p: Uint32Array;

  constructor(readonly phys: PhysicalMemory) {
    this.owner = new Uint16Array(phys.ramFrames);
    this.m2p = new Uint32Array(phys.ramFrames);
  }

  get ramFrames(): number {
    return this.phys.ramFrames;
  }

  /** Allocates one frame (scattered) to `domid` at `gfn`; 0 when memory is exhausted. */
  allocFrame(domid: number, gfn: number): number {
    const mfn = this.phys.allocFrame();
    if (mfn !== 0) this.assign(mfn, domid, gfn);
    return mfn;
  }

  /** Allocates a 2 MiB machine-contiguous block to `domid` at `firstGfn`; 0 when none is free. */
  allocBlock(domid: number, firstGfn: number): number {
    const base = this.phys.allocBlock();
    if (base !== 0) for (let i = 0; i < 512; i++) this.assign(base + i, domid, firstGfn + i);
    return base;
  }

  assign(mfn: number, domid: number, gfn: number): void {
    this.owner[mfn] = domid + 1;
    this.m2p[mfn] = gfn;
  }

  /** The domain gives the frame back: freed now, or with its last reference. */
  release(mfn: number): void {
    this.owner[mfn] = 0;
    this.phys.release(mfn);
  }

  /** page_get_owner: the owning domid, or NO_OWNER. */
  ownerOf(mfn: number): number {
    return mfn < this.owner.length ? this.owner[mfn]! - 1 : NO_OWNER;
  }

  /** get_page(page, d): a reference on a frame `domid` owns (any owner when domid is undefined). */
  getPage(mfn: number, domid?: number): boolean {
    if (!Number.isInteger(mfn) || mfn < 0 || mfn >= this.owner.length || this.owner[mfn] === 0) return false;
    if (domid !== undefined && this.owner[mfn] !== domid + 1) return false;
    return this.phys.pin(mfn);
  }

  /** put_page. */
  putPage(mfn: number): void {
    this.phys.unpin(mfn);
  }

  /** Extra references on the frame (Xen's count_info minus the allocation reference). */
  refs(mfn: number): number {
    return mfn < this.owner.length ? this.phys.pins[mfn]! : 0;
  }
}
