/**
 * The GuestPinPort of a vGPU on Xen: guest frames are held by Dom0's kernel
 * through privcmd foreign mappings, each one a Xen page reference (get_page),
 * so pinning and its accounting happen in Xen, once per frame.
 *
 * Model: one PinTable per guest domain, shared by every vGPU of that domain:
 * a pin count and the MFN held, per GFN, in typed arrays over the guest's
 * frame space. The first pin of a frame maps it (privcmd, batched as the
 * Dom0 kind dictates); later pins only count; the last unpin unmaps it and
 * drops the reference. The MFN is the one held at pin time, so a frame
 * ballooned out of the guest meanwhile is still released correctly.
 *
 * A pin is all or nothing: when any frame fails, the frames this call mapped
 * are unmapped again and nothing is counted. Errors are in the shared
 * vocabulary with the native privcmd status as `cause`: a paged-out frame
 * (-ENOENT; Xen started a populate) is EAGAIN, a hole or shared frame
 * (-EINVAL) EINVAL, a failed unshare (-ENOMEM) ENOMEM, a domain that is gone
 * or crashed ESRCH; `index` and `gfn` name the first failing frame.
 *
 * An unpin of a frame that is not pinned changes nothing and is counted in
 * `underflows`.
 *
 * Invariants: count[gfn] > 0 iff Dom0 holds exactly one reference on mfn[gfn]
 * for this table; `pinnedFrames` = #{gfn : count > 0}; `pins` = sum(count).
 */
import { ERRNO, errnoName, type ErrnoName, type GuestPinPort } from "@vgpu-iommu/core";
import type { XenDomain } from "./xen-domain.js";
import type { Privcmd } from "./privcmd.js";
import { errnoStatus, xenError } from "./xen-error.js";

const PIN_MAX = 0xfffe;
const MARK = 0xffff;

export class PinTable {
  readonly count: Uint16Array;
  readonly mfn: Uint32Array;
  pinnedFrames = 0;
  pins = 0;
  /** Unpins of frames that were not pinned (a caller's bug; nothing is changed). */
  underflows = 0;

  constructor(readonly domain: XenDomain) {
    this.count = new Uint16Array(domain.maxGfn);
    this.mfn = new Uint32Array(domain.maxGfn);
  }
}

const PRIVCMD_CODE: Readonly<Record<number, ErrnoName>> = { [-ERRNO.ENOENT]: "EAGAIN", [-ERRNO.EINVAL]: "EINVAL", [-ERRNO.ENOMEM]: "ENOMEM", [-ERRNO.ESRCH]: "ESRCH" };

export class XenGuestPins implements GuestPinPort {
  #scratchGfn = new Float64Array(64);
  #scratchMfn = new Uint32Array(64);
  #scratchErr = new Int32Array(64);

  constructor(
    readonly privcmd: Privcmd,
    readonly table: PinTable,
  ) {}

  get domain(): XenDomain {
    return this.table.domain;
  }

  pin(gfns: ArrayLike<number>, n: number, write: boolean, out: Uint32Array): void {
    const t = this.table;
    const d = t.domain;
    if (d.state !== "running") throw xenError("ESRCH", "guest-not-running", errnoStatus("privcmd", -ERRNO.ESRCH), { domid: d.domid, state: d.state });
    const count = t.count;
    if (this.#scratchGfn.length < n) this.#grow(n);
    const fresh = this.#scratchGfn;
    let k = 0;
    for (let i = 0; i < n; i++) {
      const gfn = gfns[i]!;
      if (!(Number.isInteger(gfn) && gfn >= 0 && gfn < d.maxGfn)) {
        this.#unmark(fresh, k);
        throw xenError("EINVAL", "gfn-outside-guest", errnoStatus("privcmd", -ERRNO.EINVAL), { index: i, gfn, maxGfn: d.maxGfn });
      }
      const c = count[gfn]!;
      if (c === 0) {
        count[gfn] = MARK;
        fresh[k++] = gfn;
      } else if (c >= PIN_MAX && c !== MARK) {
        this.#unmark(fresh, k);
        throw xenError("EBUSY", "pin-count-overflow", undefined, { index: i, gfn });
      }
    }
    if (k > 0) {
      const failed = this.privcmd.mapBatch(d.domid, fresh, 0, k, write, this.#scratchMfn, this.#scratchErr);
      if (failed > 0) {
        let first = -1;
        for (let j = 0; j < k; j++) {
          if (this.#scratchErr[j] === 0) this.privcmd.unmap(this.#scratchMfn, j, 1);
          else if (first < 0) first = j;
        }
        const gfn = fresh[first]!;
        const status = this.#scratchErr[first]!;
        this.#unmark(fresh, k);
        let index = 0;
        while (gfns[index] !== gfn) index++;
        throw xenError(PRIVCMD_CODE[status] ?? errnoName(status) ?? "EIO", status === -ERRNO.ENOENT ? "guest-frame-paged-out" : "guest-frame-not-mappable", errnoStatus("privcmd", status), {
          index,
          gfn,
          domid: d.domid,
        });
      }
      for (let j = 0; j < k; j++) {
        const gfn = fresh[j]!;
        count[gfn] = 0;
        t.mfn[gfn] = this.#scratchMfn[j]!;
      }
      t.pinnedFrames += k;
    }
    const mfn = t.mfn;
    for (let i = 0; i < n; i++) {
      const gfn = gfns[i]!;
      count[gfn]!++;
      out[i] = mfn[gfn]!;
    }
    t.pins += n;
  }

  unpin(gfns: ArrayLike<number>, n: number): void {
    const t = this.table;
    const count = t.count;
    for (let i = 0; i < n; i++) {
      const gfn = gfns[i]!;
      const c = count[gfn]!;
      if (c === 0) {
        t.underflows++;
        continue;
      }
      count[gfn] = c - 1;
      t.pins--;
      if (c === 1) {
        this.privcmd.unmap(t.mfn, gfn, 1);
        t.mfn[gfn] = 0;
        t.pinnedFrames--;
      }
    }
  }

  /**
   * Drops every pin of the table at once, as the device model's exit unmaps
   * its privcmd mappings; returns the pins dropped (what its users leaked).
   */
  releaseAll(): number {
    const t = this.table;
    const count = t.count;
    const dropped = t.pins;
    for (let gfn = 0; gfn < count.length && t.pinnedFrames > 0; gfn++) {
      if (count[gfn] === 0) continue;
      this.privcmd.unmap(t.mfn, gfn, 1);
      count[gfn] = 0;
      t.mfn[gfn] = 0;
      t.pinnedFrames--;
    }
    t.pins = 0;
    return dropped;
  }

  #unmark(fresh: Float64Array, k: number): void {
    for (let j = 0; j < k; j++) this.table.count[fresh[j]!] = 0;
  }

  #grow(n: number): void {
    this.#scratchGfn = new Float64Array(n);
    this.#scratchMfn = new Uint32Array(n);
    this.#scratchErr = new Int32Array(n);
  }
}
