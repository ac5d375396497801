/**
 * Grant tables (xen/common/grant_table.c, public/grant_table.h): a domain
 * shares one of its frames by writing a grant entry; another domain maps that
 * grant by reference and gets a handle from its maptrack table.
 *
 * Model:
 * - Each domain has one GrantTable. As granter it holds v1 shared entries
 *   (flags, domid, frame; 512 per 4 KiB grant frame) and the active entries Xen
 *   keeps per ref (pin counts packed as Xen's GNTPIN_* bytes, domid, MFN). As
 *   mapper it holds the maptrack (ref, domid, flags; 256 handles per frame).
 *   All of it is typed arrays sized by the limits: `gnttab_max_frames` (64)
 *   and `gnttab_max_maptrack_frames` (1024), grown a frame at a time.
 * - `GNTTABOP_map_grant_ref` follows map_grant_ref's order: flags, device_map
 *   from an auto-translated mapper, domain, maptrack handle, ref bound, active
 *   pin owner, shared-entry flags, the granter's frame (a referenced lookup:
 *   paged or shared -> GNTST_eagain, missing -> GNTST_bad_page). It takes one
 *   page reference per mapping kind (host, device). A PV mapper whose IOMMU
 *   context is strict gets the frame added at BFN == MFN; an auto-translated
 *   mapper gets a grant_map_rw/ro entry at the GFN of host_addr (a PV
 *   mapper's host map is a PTE, and its Linux P2M entry FOREIGN_FRAME(mfn) is
 *   Dom0's business: PvP2m.setForeign).
 * - Running out of maptrack handles answers GNTST_no_space (Xen since ~2022)
 *   or GNTST_no_device_space (earlier), per the configured era.
 * - Linux's grant-dma-ops address form is bit 63 | ref << 12.
 *
 * Invariants: every live handle holds one reference per mapping kind on the
 * active entry's MFN; an active entry's pin is the sum of its handles' kinds;
 * GTF_reading/GTF_writing are set exactly while some (writable) pin exists.
 */
import { ERRNO, PAGE_SIZE } from "@vgpu-iommu/core";
import type { XenDomain } from "./xen-domain.js";
import { LOOKUP_MISSING, LOOKUP_PAGED, LOOKUP_SHARED } from "./xen-domain.js";
import { P2mType } from "./p2m.js";
import { IOMMUF_readable, IOMMUF_writable } from "./iommu-context.js";
import type { Xen } from "./xen.js";
import { xenError, type NativeStatus, type XenError } from "./xen-error.js";
import type { ErrnoName } from "@vgpu-iommu/core";

export const GNTST = {
  okay: 0,
  general_error: -1,
  bad_domain: -2,
  bad_gntref: -3,
  bad_handle: -4,
  bad_virt_addr: -5,
  bad_dev_addr: -6,
  no_device_space: -7,
  permission_denied: -8,
  bad_page: -9,
  bad_copy_arg: -10,
  address_too_big: -11,
  eagain: -12,
  no_space: -13,
} as const;

const GNTST_NAME_BY_VALUE = new Map<number, string>(Object.entries(GNTST).map(([k, v]) => [v, `GNTST_${k}`]));
export const gntstName = (status: number): string => GNTST_NAME_BY_VALUE.get(status) ?? `GNTST_${status}`;

/** The shared vocabulary for each grant status (GNTST_eagain is the retry class). */
const GNTST_CODE: Readonly<Record<number, ErrnoName>> = {
  [GNTST.general_error]: "EIO",
  [GNTST.bad_domain]: "ESRCH",
  [GNTST.bad_gntref]: "EINVAL",
  [GNTST.bad_handle]: "EINVAL",
  [GNTST.bad_virt_addr]: "EFAULT",
  [GNTST.bad_dev_addr]: "EFAULT",
  [GNTST.no_device_space]: "ENOSPC",
  [GNTST.permission_denied]: "EPERM",
  [GNTST.bad_page]: "EFAULT",
  [GNTST.bad_copy_arg]: "EINVAL",
  [GNTST.address_too_big]: "EINVAL",
  [GNTST.eagain]: "EAGAIN",
  [GNTST.no_space]: "ENOSPC",
};

export const grantStatus = (status: number): NativeStatus => ({ api: "grant", status, name: gntstName(status) });

/** A grant status as a XenError in the shared vocabulary. */
export function grantError(status: number, reason: string, fields: Record<string, unknown> = {}): XenError {
  return xenError(GNTST_CODE[status] ?? "EIO", reason, grantStatus(status), fields);
}

export const GNTMAP_device_map = 1 << 0;
export const GNTMAP_host_map = 1 << 1;
export const GNTMAP_readonly = 1 << 2;
export const GNTMAP_application_map = 1 << 3;
export const GNTMAP_contains_pte = 1 << 4;

export const GTF_permit_access = 1;
export const GTF_type_mask = 3;
export const GTF_readonly = 1 << 2;
export const GTF_reading = 1 << 3;
export const GTF_writing = 1 << 4;

const GNTPIN_hstw_inc = 1 << 0;
const GNTPIN_hstr_inc = 1 << 8;
const GNTPIN_devw_inc = 1 << 16;
const GNTPIN_devr_inc = 1 << 24;
const GNTPIN_write_mask = 0x00ff_00ff;

export const GNTTAB_NR_RESERVED_ENTRIES = 8;
/** grant_entry_v1_t is 8 bytes. */
export const GRANT_ENTRIES_PER_FRAME = PAGE_SIZE / 8;
/** struct grant_mapping is 16 bytes. */
export const MAPTRACK_PER_FRAME = PAGE_SIZE / 16;
export const DEFAULT_GNTTAB_MAX_FRAMES = 64;
export const DEFAULT_GNTTAB_MAX_MAPTRACK_FRAMES = 1024;

/** XEN_GRANT_DMA_ADDR_OFF (drivers/xen/grant-dma-ops.c). */
export const XEN_GRANT_DMA_ADDR_OFF = 1n << 63n;
/** The grant-dma-ops DMA address of byte `offset` of grant `ref`. */
export const grantDmaAddr = (ref: number, offset = 0): bigint => XEN_GRANT_DMA_ADDR_OFF | (BigInt(ref) << 12n) | BigInt(offset);
/** The grant ref a grant-dma-ops address names, or -1 when bit 63 is clear. */
export const grantRefOfDmaAddr = (addr: bigint): number => ((addr & XEN_GRANT_DMA_ADDR_OFF) === 0n ? -1 : Number((addr & ~XEN_GRANT_DMA_ADDR_OFF) >> 12n));

/** struct gnttab_map_grant_ref: in-fields, then out-fields written back. */
export interface GnttabMapGrantRef {
  host_addr: bigint;
  flags: number;
  ref: number;
  dom: number;
  status?: number;
  handle?: number;
  dev_bus_addr?: bigint;
}

/** struct gnttab_unmap_grant_ref. */
export interface GnttabUnmapGrantRef {
  host_addr: bigint;
  dev_bus_addr: bigint;
  handle: number;
  status?: number;
}

export class GrantTable {
  nrFrames = 1;
  readonly shFlags: Uint16Array;
  readonly shDomid: Uint16Array;
  readonly shFrame: Uint32Array;
  readonly actPin: Uint32Array;
  readonly actDomid: Uint16Array;
  readonly actMfn: Uint32Array;
  #mtRef = new Uint32Array(0);
  #mtDomid = new Uint16Array(0);
  #mtFlags = new Uint16Array(0);
  #mtFree: number[] = [];
  maptrackLimit = 0;
  /** Live maptrack handles. */
  handlesInUse = 0;

  constructor(
    readonly domid: number,
    readonly maxFrames: number,
    readonly maxMaptrackFrames: number,
  ) {
    const n = maxFrames * GRANT_ENTRIES_PER_FRAME;
    this.shFlags = new Uint16Array(n);
    this.shDomid = new Uint16Array(n);
    this.shFrame = new Uint32Array(n);
    this.actPin = new Uint32Array(n);
    this.actDomid = new Uint16Array(n);
    this.actMfn = new Uint32Array(n);
  }

  /** nr_grant_entries. */
  get nrEntries(): number {
    return this.nrFrames * GRANT_ENTRIES_PER_FRAME;
  }

  /**
   * The granting guest's Linux: gnttab_grant_foreign_access(domid, gfn,
   * readonly): a free ref (the first 8 are reserved), growing the table a frame
   * at a time up to gnttab_max_frames; -ENOSPC when it is full.
   */
  grantAccess(toDomid: number, gfn: number, readonly: boolean): number {
    for (;;) {
      for (let ref = GNTTAB_NR_RESERVED_ENTRIES; ref < this.nrEntries; ref++) {
        if ((this.shFlags[ref]! & GTF_type_mask) !== 0 || this.actPin[ref] !== 0) continue;
        this.shDomid[ref] = toDomid;
        this.shFrame[ref] = gfn;
        this.shFlags[ref] = GTF_permit_access | (readonly ? GTF_readonly : 0);
        return ref;
      }
      if (this.nrFrames >= this.maxFrames) return -ERRNO.ENOSPC;
      this.nrFrames++;
    }
  }

  /** gnttab_end_foreign_access_ref: false while the grant is mapped (GTF_reading/GTF_writing set). */
  endAccess(ref: number): boolean {
    if (!(ref >= 0 && ref < this.nrEntries) || (this.shFlags[ref]! & (GTF_reading | GTF_writing)) !== 0) return false;
    this.shFlags[ref] = 0;
    return true;
  }

  /** get_maptrack_handle: a free handle, growing by a maptrack frame; -1 when the limit is reached. */
  getMaptrackHandle(): number {
    if (this.#mtFree.length === 0) {
      if (this.maptrackLimit >= this.maxMaptrackFrames * MAPTRACK_PER_FRAME) return -1;
      const grown = this.maptrackLimit + MAPTRACK_PER_FRAME;
      if (grown > this.#mtRef.length) {
        const cap = Math.min(Math.max(grown, this.#mtRef.length * 2), this.maxMaptrackFrames * MAPTRACK_PER_FRAME);
        this.#mtRef = grow32(this.#mtRef, cap);
        this.#mtDomid = grow16(this.#mtDomid, cap);
        this.#mtFlags = grow16(this.#mtFlags, cap);
      }
      for (let h = grown - 1; h >= this.maptrackLimit; h--) this.#mtFree.push(h);
      this.maptrackLimit = grown;
    }
    this.handlesInUse++;
    return this.#mtFree.pop()!;
  }

  putMaptrackHandle(handle: number): void {
    this.#mtFlags[handle] = 0;
    this.#mtFree.push(handle);
    this.handlesInUse--;
  }

  mtFlags(handle: number): number {
    return handle >= 0 && handle < this.maptrackLimit ? this.#mtFlags[handle]! : 0;
  }

  mtRef(handle: number): number {
    return this.#mtRef[handle]!;
  }

  mtDomid(handle: number): number {
    return this.#mtDomid[handle]!;
  }

  setMaptrack(handle: number, ref: number, domid: number, flags: number): void {
    this.#mtRef[handle] = ref;
    this.#mtDomid[handle] = domid;
    this.#mtFlags[handle] = flags;
  }

  setMtFlags(handle: number, flags: number): void {
    this.#mtFlags[handle] = flags;
  }

  /** mapkind: what mappings (read 1 / write 2) this mapper has of `mfn` granted by `rdomid`. */
  mapkind(rgt: GrantTable, rdomid: number, mfn: number): number {
    let kind = 0;
    for (let h = 0; h < this.maptrackLimit && (kind & 2) === 0; h++) {
      const f = this.#mtFlags[h]!;
      if ((f & (GNTMAP_device_map | GNTMAP_host_map)) === 0 || this.#mtDomid[h] !== rdomid) continue;
      if (rgt.actMfn[this.#mtRef[h]!] === mfn) kind |= f & GNTMAP_readonly ? 1 : 2;
    }
    return kind;
  }
}

function grow32(a: Uint32Array, n: number): Uint32Array<ArrayBuffer> {
  const b = new Uint32Array(n);
  b.set(a);
  return b;
}

function grow16(a: Uint16Array, n: number): Uint16Array<ArrayBuffer> {
  const b = new Uint16Array(n);
  b.set(a);
  return b;
}

/** get_paged_frame of grant_table.c: the MFN with a reference, or a GNTST code. */
function getPagedFrame(rd: XenDomain, gfn: number, readonly: boolean): number {
  if (rd.p2m !== undefined && rd.p2m.type(gfn) === P2mType.map_foreign) return GNTST.bad_page;
  const r = rd.getPageFromGfn(gfn, !readonly);
  if (r === LOOKUP_PAGED || r === LOOKUP_SHARED) return GNTST.eagain;
  if (r === LOOKUP_MISSING) return GNTST.bad_page;
  return r;
}

/** Whether grant maps by `ld` must be mirrored into its IOMMU context (a PV domain with a strict context). */
function needIommuMapping(xen: Xen, ld: XenDomain): boolean {
  if (ld.autoTranslated || !xen.iommu.enabled) return false;
  const ctx = xen.iommu.context(ld.domid, 0);
  return ctx !== undefined && ctx.backdrop.kind !== "identity-ram" && ctx.backdrop.kind !== "bypass";
}

/** map_grant_ref for one op; writes status, handle and dev_bus_addr back. */
export function mapGrantRef(xen: Xen, ld: XenDomain, op: GnttabMapGrantRef): void {
  op.status = doMap(xen, ld, op);
}

function doMap(xen: Xen, ld: XenDomain, op: GnttabMapGrantRef): number {
  const flags = op.flags;
  if ((flags & (GNTMAP_device_map | GNTMAP_host_map)) === 0) return GNTST.bad_gntref;
  if (ld.autoTranslated && (flags & (GNTMAP_device_map | GNTMAP_application_map | GNTMAP_contains_pte)) !== 0) return GNTST.general_error;
  const rd = xen.domain(op.dom);
  if (rd === undefined || rd.state === "destroyed") return GNTST.bad_domain;
  const lgt = xen.grantTable(ld.domid);
  const handle = lgt.getMaptrackHandle();
  if (handle < 0) return xen.options.era === "2016" ? GNTST.no_device_space : GNTST.no_space;
  const fail = (status: number): number => {
    lgt.putMaptrackHandle(handle);
    return status;
  };
  const rgt = xen.grantTable(rd.domid);
  const ref = op.ref;
  if (!(Number.isInteger(ref) && ref >= 0 && ref < rgt.nrEntries)) return fail(GNTST.bad_gntref);
  const readonly = (flags & GNTMAP_readonly) !== 0;
  const pin = rgt.actPin[ref]!;
  if (pin !== 0 && (rgt.actDomid[ref] !== ld.domid || (pin & 0x8080_8080) !== 0)) return fail(GNTST.general_error);
  let mfn: number;
  let refs = 0;
  let setStatus = false;
  if (pin === 0 || (!readonly && (pin & GNTPIN_write_mask) === 0)) {
    const sf = rgt.shFlags[ref]!;
    if ((sf & GTF_type_mask) !== GTF_permit_access || rgt.shDomid[ref] !== ld.domid || (!readonly && (sf & GTF_readonly) !== 0)) return fail(GNTST.general_error);
    setStatus = true;
  }
  if (pin === 0) {
    const got = getPagedFrame(rd, rgt.shFrame[ref]!, readonly);
    if (got < 0) return fail(got);
    mfn = got;
    refs = 1;
    rgt.actMfn[ref] = mfn;
    rgt.actDomid[ref] = ld.domid;
  } else {
    mfn = rgt.actMfn[ref]!;
    if (!xen.frames.getPage(mfn)) return fail(GNTST.general_error);
    refs = 1;
  }
  const both = (flags & (GNTMAP_device_map | GNTMAP_host_map)) === (GNTMAP_device_map | GNTMAP_host_map);
  if (both) {
    if (!xen.frames.getPage(mfn)) {
      for (let i = 0; i < refs; i++) xen.frames.putPage(mfn);
      return fail(GNTST.general_error);
    }
    refs++;
  }
  const undo = (status: number): number => {
    for (let i = 0; i < refs; i++) xen.frames.putPage(mfn);
    if (rgt.actPin[ref] === 0) rgt.actMfn[ref] = 0;
    return fail(status);
  };
  if (ld.autoTranslated && (flags & GNTMAP_host_map) !== 0) {
    const gfn = Number(op.host_addr >> 12n);
    if (ld.p2m!.type(gfn) !== P2mType.invalid) return undo(GNTST.general_error);
    ld.p2m!.set(gfn, mfn, readonly ? P2mType.grant_map_ro : P2mType.grant_map_rw);
  }
  const oldPin = pin;
  let newPin = pin;
  if (flags & GNTMAP_device_map) newPin += readonly ? GNTPIN_devr_inc : GNTPIN_devw_inc;
  if (flags & GNTMAP_host_map) newPin += readonly ? GNTPIN_hstr_inc : GNTPIN_hstw_inc;
  if (needIommuMapping(xen, ld)) {
    const ctx = xen.iommu.context(ld.domid, 0)!;
    const kind = lgt.mapkind(rgt, rd.domid, mfn);
    let err = 0;
    if ((newPin & GNTPIN_write_mask) !== 0 && (oldPin & GNTPIN_write_mask) === 0) {
      if ((kind & 2) === 0) err = ctx.map(mfn, mfn, IOMMUF_readable | IOMMUF_writable, false);
    } else if (newPin !== 0 && oldPin === 0) {
      if (kind === 0) err = ctx.map(mfn, mfn, IOMMUF_readable, false);
    }
    if (err !== 0) {
      if (ld.autoTranslated && (flags & GNTMAP_host_map) !== 0) ld.p2m!.clear(Number(op.host_addr >> 12n));
      return undo(GNTST.general_error);
    }
    if (!xen.iommu.dontFlush) ctx.flush();
  }
  rgt.actPin[ref] = newPin;
  if (setStatus) rgt.shFlags[ref] = rgt.shFlags[ref]! | GTF_reading | (readonly ? 0 : GTF_writing);
  lgt.setMaptrack(handle, ref, rd.domid, flags);
  op.handle = handle;
  op.dev_bus_addr = BigInt(mfn) << 12n;
  return GNTST.okay;
}

/** GNTTABOP_map_grant_ref over `count` ops; per-op statuses; the call itself returns 0. */
export function gnttabMapGrantRef(xen: Xen, ld: XenDomain, ops: GnttabMapGrantRef[], count: number): number {
  xen.countHypercall("grant_table_op");
  if (count > ops.length) return -ERRNO.EFAULT;
  for (let i = 0; i < count; i++) mapGrantRef(xen, ld, ops[i]!);
  return 0;
}

/** unmap_common + unmap_common_complete for one op. */
export function unmapGrantRef(xen: Xen, ld: XenDomain, op: GnttabUnmapGrantRef): void {
  op.status = doUnmap(xen, ld, op);
}

function doUnmap(xen: Xen, ld: XenDomain, op: GnttabUnmapGrantRef): number {
  const lgt = xen.grantTable(ld.domid);
  const handle = op.handle;
  if (!(Number.isInteger(handle) && handle >= 0 && handle < lgt.maptrackLimit)) return GNTST.bad_handle;
  const flags = lgt.mtFlags(handle);
  if (flags === 0) return GNTST.bad_handle;
  const rdomid = lgt.mtDomid(handle);
  const rd = xen.domain(rdomid);
  if (rd === undefined) {
    ld.crash("grant unmap of a handle whose granting domain is gone");
    return GNTST.general_error;
  }
  const rgt = xen.grantTable(rdomid);
  const ref = lgt.mtRef(handle);
  const mfn = rgt.actMfn[ref]!;
  if (op.dev_bus_addr !== 0n && op.dev_bus_addr !== BigInt(mfn) << 12n) return GNTST.general_error;
  let done = 0;
  let remaining = flags;
  if (op.host_addr !== 0n && (flags & GNTMAP_host_map) !== 0) {
    if (ld.autoTranslated) {
      const gfn = Number(op.host_addr >> 12n);
      const t = ld.p2m!.type(gfn);
      if ((t !== P2mType.grant_map_rw && t !== P2mType.grant_map_ro) || ld.p2m!.mfn(gfn) !== mfn) return GNTST.general_error;
      ld.p2m!.clear(gfn);
    }
    remaining &= ~GNTMAP_host_map;
    done |= GNTMAP_host_map;
  }
  if (op.dev_bus_addr !== 0n && (flags & GNTMAP_device_map) !== 0) {
    remaining &= ~GNTMAP_device_map;
    done |= GNTMAP_device_map;
  }
  if ((remaining & (GNTMAP_device_map | GNTMAP_host_map)) === 0) lgt.putMaptrackHandle(handle);
  else lgt.setMtFlags(handle, remaining);
  const readonly = (flags & GNTMAP_readonly) !== 0;
  let pin = rgt.actPin[ref]!;
  if (done & GNTMAP_device_map) {
    xen.frames.putPage(mfn);
    pin -= readonly ? GNTPIN_devr_inc : GNTPIN_devw_inc;
  }
  if (done & GNTMAP_host_map) {
    xen.frames.putPage(mfn);
    pin -= readonly ? GNTPIN_hstr_inc : GNTPIN_hstw_inc;
  }
  rgt.actPin[ref] = pin;
  let clear = 0;
  if ((pin & GNTPIN_write_mask) === 0 && !readonly) clear |= GTF_writing;
  if (pin === 0) clear |= GTF_reading;
  rgt.shFlags[ref] = rgt.shFlags[ref]! & ~clear;
  if (done !== 0 && needIommuMapping(xen, ld)) {
    const ctx = xen.iommu.context(ld.domid, 0)!;
    const kind = lgt.mapkind(rgt, rdomid, mfn);
    if (kind === 0) ctx.unmap(mfn);
    else if ((kind & 2) === 0) ctx.map(mfn, mfn, IOMMUF_readable, false);
    if (!xen.iommu.dontFlush) ctx.flush();
  }
  return GNTST.okay;
}

/** GNTTABOP_unmap_grant_ref over `count` ops. */
export function gnttabUnmapGrantRef(xen: Xen, ld: XenDomain, ops: GnttabUnmapGrantRef[], count: number): number {
  xen.countHypercall("grant_table_op");
  if (count > ops.length) return -ERRNO.EFAULT;
  for (let i = 0; i < count; i++) unmapGrantRef(xen, ld, ops[i]!);
  return 0;
}
