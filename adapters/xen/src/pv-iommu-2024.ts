/**
 * The 2024 PV-IOMMU redesign (Teddy Astie, Vates; xen/common/pv-iommu.c and
 * public/pv-iommu.h of the RFC): one op per hypercall, IOMMU contexts, and
 * mapping by page range.
 *
 * Model (do_iommu_sub_op and its sub-ops):
 * - the caller must be the hardware domain with the IOMMU on, else every
 *   sub-op is -EPERM; an unknown sub-op is -EINVAL (0 is a no-op);
 * - `query_capabilities` reports max_ctx_no (the contexts a domain may
 *   allocate), max_nr_pages = PVIOMMU_MAX_PAGES (256, hard-coded even when the
 *   enforced limit is configured lower, as reviewers pointed out) and
 *   max_iova_addr = 2^39 - 1 (39-bit DFNs, hard-coded);
 * - `alloc_context` (IOMMU_CREATE_clone: start with the default context's 1:1
 *   view), `free_context` (context 0 or an unknown one: -EINVAL), and
 *   `reattach_device` (-ENOENT for a device the caller does not have);
 * - `map_pages {gfn, dfn, nr_pages} -> mapped`: more than the page limit is
 *   -E2BIG and an unknown context -EINVAL, before anything is done; mapping
 *   into context 0 is refused with -EPERM (the RFC's rule: the default context
 *   is Xen's); then page by page: a referenced lookup of the caller's GFN
 *   (shared -EINVAL, paged -EIO after starting a populate, otherwise missing
 *   -EPERM), a DFN in use -EADDRINUSE, the IOMMU map; it stops at the first
 *   error and reports the pages done in `mapped`; then it flushes the IOTLB for
 *   the whole requested range, whatever happened;
 * - `unmap_pages {dfn, nr_pages} -> unmapped`: the same limits; a DFN not
 *   mapped is -ENOENT; one page reference dropped per page; stops early,
 *   reports `unmapped`, and flushes;
 * - `lookup_page {dfn} -> gfn` through the M2P (-ENOENT when unmapped).
 *
 * The per-page work runs in bulk over typed arrays (the lookups, then the
 * references, then the IOMMU entries) with exactly the per-page outcome.
 *
 * Deviation, stated: an IOMMU map failure drops the reference the lookup took
 * (the RFC keeps it); an unmap drops a reference only when the entry holds one.
 *
 * Invariants: `mapped` / `unmapped` equal the entries created / removed by
 * the call; each map_pages or unmap_pages that passed the argument checks
 * costs exactly one flush.
 */
import { ERRNO } from "@vgpu-iommu/core";
import type { Xen } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { LOOKUP_PAGED, LOOKUP_SHARED } from "./xen-domain.js";
import { IOMMUF_readable, IOMMUF_writable } from "./iommu-context.js";
import type { PciSbdf } from "./xen-iommu.js";

export const IOMMUOP_query_capabilities = 1;
export const IOMMUOP_alloc_context = 2;
export const IOMMUOP_free_context = 3;
export const IOMMUOP_reattach_device = 4;
export const IOMMUOP_map_pages = 5;
export const IOMMUOP_unmap_pages = 6;
export const IOMMUOP_lookup_page = 7;

export const IOMMU_DEFAULT_CONTEXT = 0;
export const IOMMU_CREATE_clone = 1 << 0;
export const IOMMU_OP_readable = 1 << 0;
export const IOMMU_OP_writeable = 1 << 1;
export const PVIOMMU_MAX_PAGES = 256;
export const PVIOMMU_MAX_IOVA_ADDR = (1n << 39n) - 1n;
/** DFNs below this are inside the 39-bit space. */
export const PVIOMMU_DFN_LIMIT = 2 ** 27;

/** struct pv_iommu_op; the fields of the sub-op used are in-fields, `mapped`, `unmapped`, `gfn` of lookup and `cap` are written back. */
export interface PvIommuOp2024 {
  subop_id: number;
  ctx_no: number;
  flags: number;
  cap?: { max_ctx_no: number; max_nr_pages: number; max_iova_addr: bigint };
  map_pages?: { gfn: number; dfn: number; nr_pages: number; mapped: number };
  unmap_pages?: { dfn: number; nr_pages: number; unmapped: number };
  lookup_page?: { dfn: number; gfn: number };
  reattach_device?: { dev: PciSbdf };
}

export class PvIommu2024 {
  constructor(private readonly xen: Xen) {}

  canUseIommu(d: XenDomain): boolean {
    return this.xen.options.iommu && d.isHardwareDomain && this.xen.iommu.context(d.domid, 0) !== undefined;
  }

  /** HYPERVISOR_iommu_op(op): 0 or a negative errno; out-fields written into `op`. */
  iommuOp(caller: XenDomain, op: PvIommuOp2024): number {
    this.xen.countHypercall("iommu_op");
    if (!this.canUseIommu(caller)) return -ERRNO.EPERM;
    switch (op.subop_id) {
      case 0:
        return 0;
      case IOMMUOP_query_capabilities:
        op.cap = { max_ctx_no: this.xen.iommu.maxContexts, max_nr_pages: PVIOMMU_MAX_PAGES, max_iova_addr: PVIOMMU_MAX_IOVA_ADDR };
        return 0;
      case IOMMUOP_alloc_context: {
        const n = this.xen.iommu.allocContext(caller.domid, (op.flags & IOMMU_CREATE_clone) !== 0);
        if (n < 0) return n;
        op.ctx_no = n;
        return 0;
      }
      case IOMMUOP_free_context:
        return this.xen.iommu.freeContext(caller.domid, op.ctx_no);
      case IOMMUOP_reattach_device:
        return op.reattach_device === undefined ? -ERRNO.EFAULT : this.xen.iommu.reattach(caller.domid, op.reattach_device.dev, op.ctx_no);
      case IOMMUOP_map_pages:
        return op.map_pages === undefined ? -ERRNO.EFAULT : this.#mapPages(caller, op, op.map_pages);
      case IOMMUOP_unmap_pages:
        return op.unmap_pages === undefined ? -ERRNO.EFAULT : this.#unmapPages(caller, op, op.unmap_pages);
      case IOMMUOP_lookup_page:
        return op.lookup_page === undefined ? -ERRNO.EFAULT : this.#lookupPage(caller, op, op.lookup_page);
      default:
        return -ERRNO.EINVAL;
    }
  }

  #mapPages(d: XenDomain, op: PvIommuOp2024, args: NonNullable<PvIommuOp2024["map_pages"]>): number {
    args.mapped = 0;
    const nr = args.nr_pages;
    if (!(Number.isInteger(nr) && nr >= 0) || nr > this.xen.options.pvIommuMaxPages) return -ERRNO.E2BIG;
    const ctx = this.xen.iommu.context(d.domid, op.ctx_no);
    if (ctx === undefined) return -ERRNO.EINVAL;
    if (op.ctx_no === IOMMU_DEFAULT_CONTEXT) return -ERRNO.EPERM;
    const perms = (op.flags & IOMMU_OP_readable ? IOMMUF_readable : 0) | (op.flags & IOMMU_OP_writeable ? IOMMUF_writable : 0);
    const frames = this.xen.frames;
    const mfns = this.#scratch(nr);
    // Xen works page by page: lookup (with a reference), in-use check, map. The
    // same outcome, in bulk: the first DFN in use bounds the pages looked up;
    // the lookups stop at the first frame that cannot be referenced.
    const inUse = ctx.firstMapped(args.dfn, nr);
    const looked = Math.min(nr, inUse + 1);
    const found = d.lookupRange(args.gfn, looked, mfns);
    const referenced = frames.phys.pinFrames(mfns, 0, found, mfns, 0);
    let ret = 0;
    let toMap: number;
    if (referenced < found) {
      ret = -ERRNO.EPERM;
      toMap = referenced;
    } else if (found < looked) {
      const why = d.lastLookupFailure;
      ret = why === LOOKUP_SHARED ? -ERRNO.EINVAL : why === LOOKUP_PAGED ? -ERRNO.EIO : -ERRNO.EPERM;
      toMap = found;
    } else if (inUse < nr) {
      frames.putPage(mfns[inUse]!);
      ret = -ERRNO.EADDRINUSE;
      toMap = inUse;
    } else toMap = nr;
    const done = ctx.mapRange(args.dfn, mfns, 0, toMap, perms, true);
    if (done < toMap) {
      ret = -ERRNO.ENOMEM;
      for (let i = done; i < toMap; i++) frames.putPage(mfns[i]!);
    }
    args.mapped = done;
    ctx.flush();
    return ret;
  }

  #unmapPages(d: XenDomain, op: PvIommuOp2024, args: NonNullable<PvIommuOp2024["unmap_pages"]>): number {
    args.unmapped = 0;
    const nr = args.nr_pages;
    if (!(Number.isInteger(nr) && nr >= 0) || nr > this.xen.options.pvIommuMaxPages) return -ERRNO.E2BIG;
    const ctx = this.xen.iommu.context(d.domid, op.ctx_no);
    if (ctx === undefined) return -ERRNO.EINVAL;
    const mfns = this.#scratch(nr);
    const held = this.#held;
    const done = ctx.unmapRange(args.dfn, nr, mfns, held);
    const phys = this.xen.frames.phys;
    for (let i = 0; i < done; i++) if (held[i] === 1) phys.unpin(mfns[i]!);
    args.unmapped = done;
    ctx.flush();
    return done < nr ? -ERRNO.ENOENT : 0;
  }

  #mfns = new Uint32Array(PVIOMMU_MAX_PAGES);
  #held = new Uint8Array(PVIOMMU_MAX_PAGES);

  #scratch(n: number): Uint32Array {
    if (this.#mfns.length < n) {
      this.#mfns = new Uint32Array(n);
      this.#held = new Uint8Array(n);
    }
    return this.#mfns;
  }

  #lookupPage(d: XenDomain, op: PvIommuOp2024, args: NonNullable<PvIommuOp2024["lookup_page"]>): number {
    const ctx = this.xen.iommu.context(d.domid, op.ctx_no);
    if (ctx === undefined) return -ERRNO.EINVAL;
    const mfn = ctx.lookup(args.dfn);
    if (mfn < 0) return -ERRNO.ENOENT;
    args.gfn = mfn < this.xen.frames.ramFrames ? this.xen.frames.m2p[mfn]! : mfn;
    return 0;
  }
}
