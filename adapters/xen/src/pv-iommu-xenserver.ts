/**
 * The XenServer / XCP-ng PV-IOMMU (xen/common/pv_iommu.c, public/pv-iommu.h):
 * `HYPERVISOR_iommu_op(ops[], count)`, an array of sub-ops each with its own
 * status, used by a PV Dom0 to program the IOMMU context of its devices.
 *
 * Model (the hypercall, in do_iommu_op's order):
 * - only the hardware domain may call it (-ENOSYS for the whole call); a
 *   negative count is -EINVAL; an op beyond the caller's buffer is -EFAULT;
 * - ops run in order and each status is written back; a failed op does not
 *   stop the call, so the call returns 0 with some ops failed;
 * - with count > 1, per-op IOTLB flushes are suppressed and one flush-all runs
 *   at the end (if any op ran); with count == 1 a map or unmap flushes itself;
 * - every `preemptEvery` ops Xen finds a preemption pending: it flushes what
 *   it did, and a continuation carries on with the remaining ops (counted as a
 *   further hypercall entry); the caller sees one call;
 * - sub-ops: an order other than 0 is -ENOSPC, before anything else;
 *   `query_caps` reports the map capability and the foreign offset unless the
 *   IOMMU is off, Dom0 is in passthrough, Dom0 is auto-translated, or the CPU
 *   is AMD (`can_use_iommu`); `map_page` without that capability is -EPERM,
 *   a frame that is not the caller's (without no_ref_cnt) -EPERM, a BFN
 *   already mapped -EPERM, an IOMMU failure -EIO; `unmap_page` of an unmapped
 *   BFN is -ENOENT; `lookup_foreign_page` refuses self or DOMID_SELF and PV
 *   targets (-EPERM), an unknown domain (-ENXIO), a frame the lookup cannot
 *   reference (-ENXIO) or one Dom0 has not mapped (-EPERM), and answers
 *   MFN + foreign offset (MFN when the IOMMU is not usable), keeping one
 *   reference under a foreign-map flag; `unmap_foreign_page` drops it
 *   (-ENOENT when unmapped or unflagged); other sub-ops are -ENODEV.
 * - The op array is a struct of typed arrays (`PvIommuOps`), the guest memory
 *   the hypercall reads and writes back: no object per op.
 *
 * Deviations, stated: an unmap drops a page reference exactly when the entry
 * holds one (the real code trusts the op's no_ref_cnt flag); "mapped by Dom0"
 * for a foreign lookup means the frame held a reference before the lookup took
 * its own (the reference's rule; the code's count test is on the raw count).
 *
 * Invariants: each op's status is 0 or a negative errno after the call; every
 * reference taken by a successful map is held by its entry until unmapped.
 */
import { ERRNO } from "@vgpu-iommu/core";
import type { Xen } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { DOMID_SELF } from "./xen-domain.js";
import { IOMMUF_readable, IOMMUF_writable, type IommuContext } from "./iommu-context.js";

export const IOMMUOP_query_caps = 1;
export const IOMMUOP_map_page = 2;
export const IOMMUOP_unmap_page = 3;
/** Sub-op numbers 4-6 follow the header's order; this revision implements 5 and 6 only. */
export const IOMMUOP_map_foreign_page = 4;
export const IOMMUOP_lookup_foreign_page = 5;
export const IOMMUOP_unmap_foreign_page = 6;

export const IOMMU_QUERY_map_cap = 1;
export const IOMMU_QUERY_map_all_mfns = 2;
export const IOMMU_OP_readable = 1;
export const IOMMU_OP_writeable = 2;
export const IOMMU_MAP_OP_no_ref_cnt = 4;
export const IOMMU_PAGE_ORDER_SHIFT = 10;
export const iommuPageOrder = (flags: number): number => (flags >> IOMMU_PAGE_ORDER_SHIFT) & 0x3f;

/** `struct pv_iommu_op[capacity]` as typed arrays: subop, flags, status and the union's fields. */
export class PvIommuOps {
  readonly subop: Uint16Array;
  readonly flags: Uint16Array;
  readonly status: Int32Array;
  readonly bfn: Float64Array;
  readonly gfn: Float64Array;
  readonly domid: Uint16Array;
  /** query_caps.offset (out). */
  readonly offset: Float64Array;

  constructor(readonly capacity: number) {
    this.subop = new Uint16Array(capacity);
    this.flags = new Uint16Array(capacity);
    this.status = new Int32Array(capacity);
    this.bfn = new Float64Array(capacity);
    this.gfn = new Float64Array(capacity);
    this.domid = new Uint16Array(capacity);
    this.offset = new Float64Array(capacity);
  }

  queryCaps(i: number, flags = 0): void {
    this.subop[i] = IOMMUOP_query_caps;
    this.flags[i] = flags;
    this.status[i] = 0;
  }

  mapPage(i: number, bfn: number, gfn: number, flags: number): void {
    this.subop[i] = IOMMUOP_map_page;
    this.flags[i] = flags;
    this.bfn[i] = bfn;
    this.gfn[i] = gfn;
    this.status[i] = 0;
  }

  unmapPage(i: number, bfn: number, flags: number): void {
    this.subop[i] = IOMMUOP_unmap_page;
    this.flags[i] = flags;
    this.bfn[i] = bfn;
    this.status[i] = 0;
  }

  lookupForeignPage(i: number, domid: number, gfn: number, flags = 0): void {
    this.subop[i] = IOMMUOP_lookup_foreign_page;
    this.flags[i] = flags;
    this.domid[i] = domid;
    this.gfn[i] = gfn;
    this.bfn[i] = 0;
    this.status[i] = 0;
  }

  unmapForeignPage(i: number, bfn: number, flags = 0): void {
    this.subop[i] = IOMMUOP_unmap_foreign_page;
    this.flags[i] = flags;
    this.bfn[i] = bfn;
    this.status[i] = 0;
  }

  /** Any other sub-op number, for the -ENODEV path. */
  raw(i: number, subop: number, flags = 0): void {
    this.subop[i] = subop;
    this.flags[i] = flags;
    this.status[i] = 0;
  }
}

export class XenServerPvIommu {
  /** _PGC_foreign_map, one byte per host frame. */
  readonly foreignMapped: Uint8Array;

  constructor(private readonly xen: Xen) {
    this.foreignMapped = new Uint8Array(xen.frames.ramFrames);
  }

  /** bfn_foreign_offset in frames. */
  get foreignOffsetPfn(): number {
    return this.xen.options.foreignOffsetGiB * 262144;
  }

  /** can_use_iommu_check for the caller. */
  canUseIommu(d: XenDomain): boolean {
    if (!this.xen.options.iommu || !d.isHardwareDomain) return false;
    if (this.xen.dom0Iommu.passthrough) return false;
    if (d.autoTranslated) return false;
    return this.xen.options.cpuVendor !== "amd";
  }

  /** do_iommu_op: 0, or -ENOSYS / -EINVAL / -EFAULT for the whole call; per-op statuses in `ops.status`. */
  iommuOp(caller: XenDomain, ops: PvIommuOps, count: number): number {
    const xen = this.xen;
    xen.countHypercall("iommu_op");
    if (!caller.isHardwareDomain) return -ERRNO.ENOSYS;
    if (!Number.isInteger(count) || count < 0 || count > 0x7fff_ffff) return -ERRNO.EINVAL;
    const ctx = xen.iommu.context(caller.domid, 0);
    const preemptEvery = xen.options.preemptEvery;
    let start = 0;
    for (;;) {
      const segment = count - start;
      const batched = segment > 1;
      if (batched) xen.iommu.dontFlush = true;
      let ret = 0;
      let preempted = false;
      let i = 0;
      for (; i < segment; i++) {
        if (i !== 0 && preemptEvery > 0 && i % preemptEvery === 0) {
          preempted = true;
          break;
        }
        if (start + i >= ops.capacity) {
          ret = -ERRNO.EFAULT;
          break;
        }
        this.#subOp(caller, ctx, ops, start + i);
      }
      if (batched) {
        xen.iommu.dontFlush = false;
        if (i !== 0) ctx?.flush();
      }
      if (!preempted) return ret;
      start += i;
      xen.continuations++;
      xen.countHypercall("iommu_op");
    }
  }

  #subOp(d: XenDomain, ctx: IommuContext | undefined, ops: PvIommuOps, i: number): void {
    const flags = ops.flags[i]!;
    if (iommuPageOrder(flags) !== 0) {
      ops.status[i] = -ERRNO.ENOSPC;
      return;
    }
    switch (ops.subop[i]) {
      case IOMMUOP_query_caps:
        ops.flags[i] = 0;
        ops.status[i] = 0;
        if (this.canUseIommu(d)) {
          ops.flags[i] = IOMMU_QUERY_map_cap | IOMMU_QUERY_map_all_mfns;
          ops.offset[i] = this.foreignOffsetPfn;
        }
        return;
      case IOMMUOP_map_page:
        ops.status[i] = this.#mapPage(d, ctx, ops.bfn[i]!, ops.gfn[i]!, flags);
        return;
      case IOMMUOP_unmap_page:
        ops.status[i] = this.#unmapPage(ctx, ops.bfn[i]!);
        return;
      case IOMMUOP_lookup_foreign_page:
        ops.status[i] = this.#lookupForeign(d, ops, i);
        return;
      case IOMMUOP_unmap_foreign_page:
        ops.status[i] = this.#unmapForeign(d, ctx, ops.bfn[i]!);
        return;
      default:
        ops.status[i] = -ERRNO.ENODEV;
    }
  }

  #mapPage(d: XenDomain, ctx: IommuContext | undefined, bfn: number, gfn: number, flags: number): number {
    if (!this.canUseIommu(d) || ctx === undefined) return -ERRNO.EPERM;
    const frames = this.xen.frames;
    const noRef = (flags & IOMMU_MAP_OP_no_ref_cnt) !== 0;
    let mfn: number;
    if (noRef) {
      if (!(Number.isInteger(gfn) && gfn >= 0 && gfn < frames.ramFrames)) return -ERRNO.EPERM;
      mfn = gfn;
    } else {
      mfn = d.getPageFromGfn(gfn, true);
      if (mfn < 0) return -ERRNO.EPERM;
    }
    if (!(Number.isInteger(bfn) && bfn >= 0) || ctx.lookup(bfn) >= 0) {
      if (!noRef) frames.putPage(mfn);
      return -ERRNO.EPERM;
    }
    const perms = (flags & IOMMU_OP_readable ? IOMMUF_readable : 0) | (flags & IOMMU_OP_writeable ? IOMMUF_writable : 0);
    if (ctx.map(bfn, mfn, perms, !noRef) !== 0) {
      if (!noRef) frames.putPage(mfn);
      return -ERRNO.EIO;
    }
    if (!this.xen.iommu.dontFlush) ctx.flush();
    return 0;
  }

  #unmapPage(ctx: IommuContext | undefined, bfn: number): number {
    if (ctx === undefined || !(Number.isInteger(bfn) && bfn >= 0)) return -ERRNO.ENOENT;
    const mfn = ctx.lookup(bfn);
    if (mfn < 0) return -ERRNO.ENOENT;
    const held = ctx.holdsRef(bfn);
    ctx.unmap(bfn);
    if (held) this.xen.frames.putPage(mfn);
    if (!this.xen.iommu.dontFlush) ctx.flush();
    return 0;
  }

  #lookupForeign(d: XenDomain, ops: PvIommuOps, i: number): number {
    const domid = ops.domid[i]!;
    if (domid === d.domid || domid === DOMID_SELF) return -ERRNO.EPERM;
    const rd = this.xen.domain(domid);
    if (rd === undefined) return -ERRNO.ENXIO;
    if (rd.kind === "pv") return -ERRNO.EPERM;
    if (!d.isHardwareDomain) return -ERRNO.EPERM;
    const gfn = ops.gfn[i]!;
    const before = rd.p2m!.mfn(gfn);
    const mappedByDom0 = before >= 0 && this.xen.frames.refs(before) > 0;
    const mfn = rd.getPageFromGfn(gfn, true);
    if (mfn < 0) return -ERRNO.ENXIO;
    if (!mappedByDom0) {
      this.xen.frames.putPage(mfn);
      return -ERRNO.EPERM;
    }
    if (this.foreignMapped[mfn] === 1) this.xen.frames.putPage(mfn);
    else this.foreignMapped[mfn] = 1;
    ops.bfn[i] = this.canUseIommu(d) ? mfn + this.foreignOffsetPfn : mfn;
    return 0;
  }

  #unmapForeign(d: XenDomain, ctx: IommuContext | undefined, bfn: number): number {
    let mfn: number;
    if (!this.canUseIommu(d)) mfn = bfn;
    else {
      mfn = ctx === undefined ? -1 : ctx.lookup(bfn);
      if (mfn < 0) return -ERRNO.ENOENT;
    }
    if (!(mfn >= 0 && mfn < this.foreignMapped.length) || this.foreignMapped[mfn] !== 1) return -ERRNO.ENOENT;
    this.foreignMapped[mfn] = 0;
    this.xen.frames.putPage(mfn);
    return 0;
  }
}
