/**
 * A Xen domain: its memory (the P2M of an auto-translated domain, or the
 * Linux-side P2M array of a PV one), its run state, and the memory operations
 * that change its physmap.
 *
 * Model:
 * - HVM guests and a PVH Dom0 are auto-translated: GFN -> MFN in a P2m with a
 *   type per frame. A PV domain names machine frames itself; its Linux P2M
 *   (PFN -> MFN with marker bits) is kept for Dom0, whose DMA layer reads it.
 * - Guest RAM frames come from the host's PhysicalMemory, so MFN == host frame;
 *   populate takes 2 MiB blocks (superpages) or scattered 4 KiB frames.
 * - `getPageFromGfn` is Xen's referenced lookup (get_page_from_gfn): it takes
 *   a page reference or says why not. A paged-out frame starts a populate
 *   (the type becomes paging_in and the pager is asked) and answers "paged"
 *   until `pageIn` brings it back; a shared frame is refused.
 * - `decreaseReservation` (a balloon-out) removes RAM from the physmap; a
 *   referenced frame stays allocated until its last reference goes, and the
 *   change is announced (`p2mChanged`) so users of those frames can let go.
 * - A crashed domain (an emulation failure, or `crash`) stays in the domain
 *   list but answers no more lookups; its vCPUs do not run.
 *
 * Invariants: every MFN in the P2M (or PV P2M, markers stripped) is owned by
 * this domain, except grant and foreign entries; a frame with references is
 * never paged out or shared; destroy releases every frame the domain owns.
 */
import { ERRNO, Observable, PAGE_SIZE } from "@vgpu-iommu/core";
import type { MachineFrames } from "./machine-frames.js";
import { P2m, P2mType, p2mHasPage, p2mIsPaging } from "./p2m.js";
import { PvP2m } from "./pv-p2m.js";
import { xenError } from "./xen-error.js";

export type DomainKind = "pv" | "hvm" | "pvh";
export type DomainState = "running" | "crashed" | "destroyed";

/** Outcomes of a referenced lookup that found no page (get_page_from_gfn returning NULL). */
export const LOOKUP_PAGED = -1;
export const LOOKUP_SHARED = -2;
export const LOOKUP_MISSING = -3;

/** DOMID_SELF. */
export const DOMID_SELF = 0x7ff0;

export interface XenDomainEvents {
  p2mChanged(e: { domid: number; firstGfn: number; npages: number; reason: string }): void;
  populateRequested(e: { domid: number; gfn: number }): void;
  crashed(e: { domid: number; reason: string }): void;
}

/** Receives the vCPU writes to frames of type ioreq_server (see ioreq-server.ts). */
export interface WriteInterceptor {
  /** Emulates the write; returns false when emulation failed (the domain is then crashed). */
  interceptWrite(domain: XenDomain, gpa: bigint, data: Uint8Array): boolean;
}

export interface XenDomainInit {
  readonly domid: number;
  readonly name: string;
  readonly kind: DomainKind;
  readonly isHardwareDomain: boolean;
  /** Size of the frame space (XENMEM_maximum_gpfn + 1). */
  readonly maxGfn: number;
}

export class XenDomain extends Observable<XenDomainEvents> {
  readonly domid: number;
  readonly name: string;
  readonly kind: DomainKind;
  readonly isHardwareDomain: boolean;
  readonly maxGfn: number;
  readonly p2m: P2m | undefined;
  readonly pvP2m: PvP2m | undefined;
  #state: DomainState = "running";
  #crashReason: string | undefined;
  /** The pager's store: contents of evicted frames. */
  readonly #pagedContents = new Map<number, Uint8Array>();
  readonly #populateRequests = new Set<number>();
  writeInterceptor: WriteInterceptor | undefined;

  constructor(
    readonly frames: MachineFrames,
    init: XenDomainInit,
  ) {
    super();
    this.domid = init.domid;
    this.name = init.name;
    this.kind = init.kind;
    this.isHardwareDomain = init.isHardwareDomain;
    this.maxGfn = init.maxGfn;
    if (init.kind === "pv") this.pvP2m = new PvP2m(init.maxGfn);
    else this.p2m = new P2m();
  }

  get state(): DomainState {
    return this.#state;
  }

  get crashReason(): string | undefined {
    return this.#crashReason;
  }

  /** paging_mode_translate: the domain's frames are GFNs Xen translates. */
  get autoTranslated(): boolean {
    return this.kind !== "pv";
  }

  /** Frames whose populate was requested and not yet served by the pager. */
  get pendingPopulates(): readonly number[] {
    return [...this.#populateRequests];
  }

  /** Throws ESRCH unless the domain is running. */
  assertRunning(): void {
    if (this.#state !== "running") throw xenError("ESRCH", this.#state === "crashed" ? "domain-crashed" : "domain-destroyed", { api: "domain", status: -ERRNO.ESRCH, name: "-ESRCH" }, { domid: this.domid });
  }

  /**
   * XENMEM_populate_physmap: backs [firstGfn, firstGfn + npages) with fresh
   * frames, 2 MiB blocks where `superpages` and the GFN is aligned; returns the
   * number of frames populated (fewer when host memory ran out).
   */
  populatePhysmap(firstGfn: number, npages: number, superpages = false): number {
    let done = 0;
    while (done < npages) {
      const gfn = firstGfn + done;
      if (superpages && gfn % 512 === 0 && npages - done >= 512) {
        const base = this.frames.allocBlock(this.domid, gfn);
        if (base === 0) break;
        for (let i = 0; i < 512; i++) this.#setRam(gfn + i, base + i);
        done += 512;
      } else {
        const mfn = this.frames.allocFrame(this.domid, gfn);
        if (mfn === 0) break;
        this.#setRam(gfn, mfn);
        done++;
      }
    }
    return done;
  }

  #setRam(gfn: number, mfn: number): void {
    if (this.p2m !== undefined) this.p2m.set(gfn, mfn, P2mType.ram_rw);
    else this.pvP2m!.set(gfn, mfn);
  }

  /**
   * get_page_from_gfn(d, gfn, unshare ? P2M_UNSHARE : P2M_ALLOC): the MFN with
   * a page reference taken, or LOOKUP_PAGED (a populate was started),
   * LOOKUP_SHARED or LOOKUP_MISSING. For a PV domain the "gfn" is an MFN the
   * domain must own.
   */
  getPageFromGfn(gfn: number, _unshare = false): number {
    if (this.#state !== "running" || !Number.isInteger(gfn) || gfn < 0) return LOOKUP_MISSING;
    if (this.p2m === undefined) return this.frames.getPage(gfn, this.domid) ? gfn : LOOKUP_MISSING;
    const t = this.p2m.table.attr(gfn);
    if (t === P2mType.ram_rw || t === P2mType.ioreq_server) {
      const mfn = this.p2m.table.value(gfn);
      return this.frames.getPage(mfn) ? mfn : LOOKUP_MISSING;
    }
    if (p2mIsPaging(t)) {
      this.#requestPopulate(gfn);
      return LOOKUP_PAGED;
    }
    if (t === P2mType.shared) return LOOKUP_SHARED;
    if (!p2mHasPage(t)) return LOOKUP_MISSING;
    const mfn = this.p2m.table.value(gfn);
    return this.frames.getPage(mfn) ? mfn : LOOKUP_MISSING;
  }

  /** Why the last lookupRange stopped early (a LOOKUP_* value), 0 when it did not. */
  lastLookupFailure = 0;

  /**
   * The lookups of get_page_from_gfn over [gfn0, gfn0 + n) without taking
   * references (the caller takes them in bulk): writes each MFN to `out[i]`,
   * stops at the first frame that cannot be referenced and returns the count
   * before it, with the reason in `lastLookupFailure` (a paged frame starts a
   * populate, as the lookup does).
   */
  lookupRange(gfn0: number, n: number, out: Uint32Array): number {
    this.lastLookupFailure = 0;
    if (this.#state !== "running") return this.#stop(0, LOOKUP_MISSING);
    const owner = this.frames.owner;
    if (this.p2m === undefined) {
      for (let i = 0; i < n; i++) {
        const mfn = gfn0 + i;
        if (!(mfn < owner.length && owner[mfn] === this.domid + 1)) return this.#stop(i, LOOKUP_MISSING);
        out[i] = mfn;
      }
      return n;
    }
    const table = this.p2m.table;
    for (let i = 0; i < n; ) {
      const g = gfn0 + i;
      const start = g % 512;
      const span = Math.min(512 - start, n - i);
      const leaf = table.leafOf(g);
      if (leaf === undefined) return this.#stop(i, LOOKUP_MISSING);
      const a = leaf.attr;
      const v = leaf.value;
      for (let k = 0; k < span; k++) {
        const t = a[start + k]!;
        if (t === P2mType.map_foreign || t === P2mType.ram_rw || t === P2mType.ioreq_server || t === P2mType.grant_map_rw || t === P2mType.grant_map_ro || t === P2mType.ram_ro) {
          // A P2M entry of these types always names an allocated frame (its own, or one a grant or foreign map holds a reference on).
          out[i + k] = v[start + k]!;
          continue;
        }
        if (p2mIsPaging(t)) {
          this.#requestPopulate(g + k);
          return this.#stop(i + k, LOOKUP_PAGED);
        }
        return this.#stop(i + k, t === P2mType.shared ? LOOKUP_SHARED : LOOKUP_MISSING);
      }
      i += span;
    }
    return n;
  }

  #stop(done: number, why: number): number {
    this.lastLookupFailure = why;
    return done;
  }

  /** put_page of a reference taken by getPageFromGfn. */
  putPage(mfn: number): void {
    this.frames.putPage(mfn);
  }

  /** p2m_mem_paging_populate: ask the pager for the frame (once per frame until served). */
  #requestPopulate(gfn: number): void {
    if (this.p2m!.type(gfn) === P2mType.paged_out) this.p2m!.set(gfn, 0, P2mType.paging_in);
    if (this.#populateRequests.has(gfn)) return;
    this.#populateRequests.add(gfn);
    this.emit("populateRequested", { domid: this.domid, gfn });
  }

  /**
   * The pager evicts a frame: -EINVAL unless it is plain RAM of an HVM domain,
   * -EBUSY while anything holds a reference to it (p2m_mem_paging_nominate).
   */
  pageOut(gfn: number): number {
    if (this.p2m === undefined || this.p2m.type(gfn) !== P2mType.ram_rw) return -ERRNO.EINVAL;
    const mfn = this.p2m.mfn(gfn);
    if (this.frames.refs(mfn) > 0) return -ERRNO.EBUSY;
    const saved = new Uint8Array(PAGE_SIZE);
    this.frames.phys.read(mfn, 0, saved);
    this.#pagedContents.set(gfn, saved);
    this.p2m.set(gfn, 0, P2mType.paged_out);
    this.frames.release(mfn);
    return 0;
  }

  /** The pager brings a frame back (p2m_mem_paging_prep + resume): -EINVAL unless paged, -ENOMEM without memory. */
  pageIn(gfn: number): number {
    if (this.p2m === undefined || !p2mIsPaging(this.p2m.type(gfn))) return -ERRNO.EINVAL;
    const mfn = this.frames.allocFrame(this.domid, gfn);
    if (mfn === 0) return -ERRNO.ENOMEM;
    const saved = this.#pagedContents.get(gfn);
    if (saved !== undefined) this.frames.phys.write(mfn, 0, saved);
    this.#pagedContents.delete(gfn);
    this.#populateRequests.delete(gfn);
    this.p2m.set(gfn, mfn, P2mType.ram_rw);
    return 0;
  }

  /** mem_sharing_nominate_page: the frame becomes shared; -EINVAL unless RAM, -EBUSY while referenced. */
  share(gfn: number): number {
    if (this.p2m === undefined || this.p2m.type(gfn) !== P2mType.ram_rw) return -ERRNO.EINVAL;
    if (this.frames.refs(this.p2m.mfn(gfn)) > 0) return -ERRNO.EBUSY;
    this.p2m.retype(gfn, P2mType.shared);
    return 0;
  }

  /**
   * XENMEM_decrease_reservation (a balloon-out): removes the RAM frames of
   * [firstGfn, firstGfn + npages) from the physmap and returns how many it
   * removed. Grant, foreign and MMIO entries are left alone. Frames still
   * referenced stay allocated until their last reference goes.
   */
  decreaseReservation(firstGfn: number, npages: number): number {
    let removed = 0;
    for (let gfn = firstGfn; gfn < firstGfn + npages; gfn++) {
      if (this.p2m !== undefined) {
        const t = this.p2m.type(gfn);
        if (p2mIsPaging(t)) {
          this.#pagedContents.delete(gfn);
          this.#populateRequests.delete(gfn);
        } else if (t === P2mType.ram_rw || t === P2mType.ram_ro || t === P2mType.ioreq_server || t === P2mType.shared) {
          this.frames.release(this.p2m.mfn(gfn));
        } else continue;
        this.p2m.clear(gfn);
      } else {
        const p2m = this.pvP2m!;
        if (p2m.isInvalid(gfn) || p2m.isForeign(gfn) || p2m.isIdentity(gfn)) continue;
        this.frames.release(p2m.mfn(gfn));
        p2m.clear(gfn);
      }
      removed++;
    }
    if (removed > 0) this.emit("p2mChanged", { domid: this.domid, firstGfn, npages, reason: "decrease_reservation" });
    return removed;
  }

  /** The domain's own CPU reads guest memory (no interception); -EFAULT where no frame backs it. */
  readGuest(gpa: bigint, out: Uint8Array): number {
    return this.#copy(gpa, out, false);
  }

  /** The domain's own CPU writes guest memory without interception (setup and tests); -EFAULT where no frame. */
  writeGuest(gpa: bigint, data: Uint8Array): number {
    return this.#copy(gpa, data, true);
  }

  /**
   * A vCPU write: lands in memory, except on frames of type ioreq_server,
   * which are forwarded to the ioreq server claiming that type. -ESRCH when
   * the domain is not running; -EFAULT for a hole; when emulation fails the
   * domain is crashed and -EIO returned.
   */
  vcpuWrite(gpa: bigint, data: Uint8Array): number {
    if (this.#state !== "running") return -ERRNO.ESRCH;
    for (let done = 0; done < data.length; ) {
      const at = gpa + BigInt(done);
      const gfn = Number(at >> 12n);
      const n = Math.min(data.length - done, PAGE_SIZE - Number(at & 0xfffn));
      const part = data.subarray(done, done + n);
      if (this.p2m?.type(gfn) === P2mType.ioreq_server && this.writeInterceptor !== undefined) {
        if (!this.writeInterceptor.interceptWrite(this, at, part)) return -ERRNO.EIO;
      } else if (this.#copy(at, part, true) !== 0) return -ERRNO.EFAULT;
      done += n;
    }
    return 0;
  }

  /** A vCPU read: never intercepted, even on ioreq_server frames. */
  vcpuRead(gpa: bigint, out: Uint8Array): number {
    if (this.#state !== "running") return -ERRNO.ESRCH;
    return this.#copy(gpa, out, false);
  }

  #copy(gpa: bigint, buf: Uint8Array, write: boolean): number {
    for (let done = 0; done < buf.length; ) {
      const at = gpa + BigInt(done);
      const gfn = Number(at >> 12n);
      const offset = Number(at & 0xfffn);
      const n = Math.min(buf.length - done, PAGE_SIZE - offset);
      const mfn = this.p2m !== undefined ? this.p2m.mfn(gfn) : this.pvP2m!.mfn(gfn);
      if (mfn < 0 || mfn >= this.frames.ramFrames) return -ERRNO.EFAULT;
      const part = buf.subarray(done, done + n);
      if (write) this.frames.phys.write(mfn, offset, part);
      else this.frames.phys.read(mfn, offset, part);
      done += n;
    }
    return 0;
  }

  /** domain_crash: the domain stops; later operations on it fail. */
  crash(reason: string): void {
    if (this.#state !== "running") return;
    this.#state = "crashed";
    this.#crashReason = reason;
    this.emit("crashed", { domid: this.domid, reason });
  }

  /** Releases every frame the domain owns (frames still referenced are freed with their last reference). */
  destroy(): void {
    if (this.#state === "destroyed") return;
    if (this.p2m !== undefined) {
      const owned: number[] = [];
      this.p2m.table.forEachIn(0, Number.MAX_SAFE_INTEGER, (gfn, mfn, t) => {
        if (t === P2mType.ram_rw || t === P2mType.ram_ro || t === P2mType.ioreq_server || t === P2mType.shared) owned.push(mfn);
        void gfn;
      });
      for (const mfn of owned) this.frames.release(mfn);
      this.p2m.table.reset();
    } else {
      const p2m = this.pvP2m!;
      for (let pfn = 0; pfn < p2m.maxPfn; pfn++) {
        if (p2m.isInvalid(pfn) || p2m.isForeign(pfn) || p2m.isIdentity(pfn)) continue;
        this.frames.release(p2m.mfn(pfn));
        p2m.clear(pfn);
      }
    }
    this.#pagedContents.clear();
    this.#populateRequests.clear();
    this.#state = "destroyed";
  }
}
