/**
 * privcmd foreign mapping (IOCTL_PRIVCMD_MMAPBATCH_V2, xen_remap_domain_gfn_array):
 * how Dom0's kernel holds a guest's frames, each by a Xen page reference.
 *
 * Model:
 * - PV Dom0: `mmu_update` with the foreign domid, in batches of
 *   REMAP_BATCH_SIZE = 16 PTEs, one hypercall per batch. Each PTE update is a
 *   referenced lookup of the foreign frame: a paged-out frame starts a
 *   populate and fails with -ENOENT (the caller retries), a shared frame
 *   written to fails with -ENOMEM (unsharing failed), a hole with -EINVAL.
 * - PVH Dom0: XENMEM_add_to_physmap_range(XENMAPSPACE_gmfn_foreign), one page
 *   per call, into Dom0 GFNs taken from its unpopulated region (above its RAM,
 *   as Linux's unpopulated-alloc hotplugs); the P2M entry is map_foreign and
 *   holds the reference. Errors: -ENOENT (paged), -EINVAL (shared or hole).
 *   A reverse table gives the Dom0 GFN of each foreign MFN, since a PVH Dom0's
 *   devices see its GFNs.
 * - Errors are per frame (`err[]`); the call maps every frame it can, as the
 *   ioctl does, and reports how many failed.
 *
 * Invariants: a mapped frame holds exactly one reference per mapping; on PVH
 * each mapped MFN has one Dom0 GFN in the reverse table and in Dom0's P2M.
 */
import { ERRNO } from "@vgpu-iommu/core";
import type { Xen } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { LOOKUP_PAGED, LOOKUP_SHARED } from "./xen-domain.js";
import { P2mType } from "./p2m.js";

export const REMAP_BATCH_SIZE = 16;

export class Privcmd {
  /** PVH: MFN -> 1 + Dom0 GFN of its foreign mapping (0: none), dense over host RAM. */
  readonly #dom0GfnOf: Uint32Array;
  /** PVH: mappings sharing that Dom0 GFN. */
  readonly #slotRefs: Uint8Array;
  #foreignMapped = 0;
  /** PVH: Dom0 GFNs freed by unmaps, reused first. */
  #freeGfns: number[] = [];
  #nextGfn: number;

  constructor(
    private readonly xen: Xen,
    readonly dom0: XenDomain,
  ) {
    const pvh = dom0.kind === "pvh";
    this.#nextGfn = pvh ? unpopulatedBase(dom0) : 0;
    this.#dom0GfnOf = new Uint32Array(pvh ? xen.frames.ramFrames : 0);
    this.#slotRefs = new Uint8Array(pvh ? xen.frames.ramFrames : 0);
  }

  /**
   * Maps `n` frames of domain `domid` (GFNs `gfns[from..from+n)`): writes each
   * MFN to `out[from + i]` and each status to `err[from + i]` (0 or a negative
   * errno); returns the number of frames that failed. -ESRCH in every err slot
   * when the domain does not exist or is not running.
   */
  mapBatch(domid: number, gfns: ArrayLike<number>, from: number, n: number, write: boolean, out: Uint32Array, err: Int32Array): number {
    const fd = this.xen.domain(domid);
    let failed = 0;
    if (fd === undefined || fd.state !== "running") {
      for (let i = 0; i < n; i++) err[from + i] = -ERRNO.ESRCH;
      return n;
    }
    const pvh = this.dom0.kind === "pvh";
    for (let i = 0; i < n; i++) {
      if (pvh) this.xen.countHypercall("memory_op");
      else if (i % REMAP_BATCH_SIZE === 0) this.xen.countHypercall("mmu_update");
      const r = fd.getPageFromGfn(gfns[from + i]!, write);
      if (r < 0) {
        err[from + i] = r === LOOKUP_PAGED ? -ERRNO.ENOENT : r === LOOKUP_SHARED ? (pvh || !write ? -ERRNO.EINVAL : -ERRNO.ENOMEM) : -ERRNO.EINVAL;
        failed++;
        continue;
      }
      if (pvh) this.#placeForeign(r);
      out[from + i] = r;
      err[from + i] = 0;
    }
    return failed;
  }

  /**
   * Unmaps frames mapped by mapBatch (munmap of the privcmd VMA): drops one
   * reference each; on PVH each is a XENMEM_remove_from_physmap.
   */
  unmap(mfns: ArrayLike<number>, from: number, n: number): void {
    const pvh = this.dom0.kind === "pvh";
    for (let i = 0; i < n; i++) {
      const mfn = mfns[from + i]!;
      if (pvh) {
        this.xen.countHypercall("memory_op");
        this.#removeForeign(mfn);
      }
      this.xen.frames.putPage(mfn);
    }
  }

  /** PVH: the Dom0 GFN where `mfn` is foreign-mapped, or -1. */
  dom0GfnOf(mfn: number): number {
    return (this.#dom0GfnOf[mfn] ?? 0) - 1;
  }

  /** PVH: the dense MFN -> 1 + Dom0 GFN table, for hot loops (0: not foreign-mapped). */
  get dom0GfnTable(): Uint32Array {
    return this.#dom0GfnOf;
  }

  /** PVH: foreign frames currently mapped into Dom0. */
  get foreignMapped(): number {
    return this.#foreignMapped;
  }

  #placeForeign(mfn: number): void {
    if (this.#dom0GfnOf[mfn] !== 0) {
      // Mapped again: this mapping's reference was taken; it shares the Dom0 GFN.
      this.#slotRefs[mfn]!++;
      return;
    }
    const gfn = this.#freeGfns.length > 0 ? this.#freeGfns.pop()! : this.#nextGfn++;
    this.dom0.p2m!.set(gfn, mfn, P2mType.map_foreign);
    this.#dom0GfnOf[mfn] = gfn + 1;
    this.#slotRefs[mfn] = 1;
    this.#foreignMapped++;
  }

  #removeForeign(mfn: number): void {
    const g = this.#dom0GfnOf[mfn]!;
    if (g === 0) return;
    if (--this.#slotRefs[mfn]! > 0) return;
    this.dom0.p2m!.clear(g - 1);
    this.#dom0GfnOf[mfn] = 0;
    this.#freeGfns.push(g - 1);
    this.#foreignMapped--;
  }
}

/** The first GFN of a PVH Dom0's unpopulated region: its RAM rounded up to 1 GiB. */
export function unpopulatedBase(dom0: XenDomain): number {
  let top = 0;
  dom0.p2m!.table.forEachIn(0, Number.MAX_SAFE_INTEGER, (gfn) => {
    if (gfn + 1 > top) top = gfn + 1;
  });
  return Math.ceil(top / 262144) * 262144;
}
