/**
 * A process address space (mm_struct) and the get_user_pages family.
 *
 * Model: a sorted list of VMAs, each mapping a window of a MemoryObject. Pages
 * are faulted in on first touch. `lockedVm` and `pinnedVm` are the mm's
 * counters in pages; `baselineLockedVm` stands for charges made by other
 * subsystems (mlock, io_uring), which the model treats as opaque.
 *
 * `users` mirrors mm_users: it is 1 while the owning process lives and drops to
 * 0 at exit, after which mmget_not_zero() fails. The struct itself stays
 * reachable (mmgrab) by whoever still holds it.
 */
import { HostError } from "../errors/kernel-error.js";
import type { MemoryObject } from "./memory-object.js";
import type { PhysicalMemory } from "./physical-memory.js";

export interface VmaProt {
  readonly read: boolean;
  readonly write: boolean;
}

export class Vma {
  constructor(
    readonly startPage: number,
    readonly npages: number,
    readonly object: MemoryObject,
    /** Page offset of the VMA's first page inside the object. */
    readonly pgoff: number,
    readonly prot: VmaProt,
  ) {}

  get endPage(): number {
    return this.startPage + this.npages;
  }
}

/** Result of following a PFNMAP VMA: the first frame and how many contiguous frames follow. */
export interface PfnmapRun {
  readonly pfn: number;
  readonly npages: number;
}

// Process mappings start high in the 47-bit user space, 2 MiB aligned.
const MMAP_BASE_PAGE = 0x7f00_0000_0000 / 4096;

/** Filled by pinUserPages: how many of the frames it returned, from the first, are known to be consecutive (at least 1). */
export interface ContiguityHint {
  contiguous: number;
}

export class Mm {
  readonly vmas: Vma[] = [];
  lockedVm = 0;
  pinnedVm = 0;
  baselineLockedVm = 0;
  /** Changes whenever a VMA comes or goes: lookups may cache a VMA while it stays the same. */
  layoutGeneration = 0;
  users = 1;
  #nextPage = MMAP_BASE_PAGE;
  #lastVma: Vma | undefined;

  constructor(
    readonly id: number,
    private readonly phys: PhysicalMemory,
  ) {}

  get alive(): boolean {
    return this.users > 0;
  }

  /** mmget_not_zero. */
  get(): boolean {
    if (this.users === 0) return false;
    this.users++;
    return true;
  }

  /** mmput. */
  put(): void {
    this.users--;
  }

  /** The VMA containing page `hvaPage`, if any. */
  findVma(hvaPage: number): Vma | undefined {
    const last = this.#lastVma;
    if (last !== undefined && hvaPage >= last.startPage && hvaPage < last.endPage) return last;
    const vmas = this.vmas;
    let lo = 0;
    let hi = vmas.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = vmas[mid]!;
      if (hvaPage < v.startPage) hi = mid - 1;
      else if (hvaPage >= v.endPage) lo = mid + 1;
      else return (this.#lastVma = v);
    }
    return undefined;
  }

  /** Maps `npages` of `object` from page `pgoff`; returns the first page of the new VMA. */
  mmap(object: MemoryObject, pgoff: number, npages: number, prot: VmaProt): number {
    this.layoutGeneration++;
    if (npages <= 0 || pgoff + npages > object.npages) throw new HostError("EINVAL", "mmap-bad-length", { npages });
    // 2 MiB alignment keeps THP and hugetlbfs windows aligned in both spaces.
    const start = Math.ceil(this.#nextPage / 512) * 512;
    this.#nextPage = start + npages + 512;
    const vma = new Vma(start, npages, object, pgoff, prot);
    object.attach();
    this.vmas.push(vma);
    return start;
  }

  /** munmap of whole VMAs starting at `startPage`. */
  munmap(startPage: number): void {
    this.layoutGeneration++;
    const i = this.vmas.findIndex((v) => v.startPage === startPage);
    if (i < 0) throw new HostError("EINVAL", "munmap-no-vma", { startPage });
    const [vma] = this.vmas.splice(i, 1);
    if (this.#lastVma === vma) this.#lastVma = undefined;
    vma!.object.detach();
  }

  /** Drops every VMA, as exit_mmap does. */
  teardown(): void {
    this.layoutGeneration++;
    for (const vma of this.vmas.splice(0)) vma.object.detach();
    this.#lastVma = undefined;
  }

  /**
   * pin_user_pages_remote(FOLL_LONGTERM): pins up to `npages` pages from
   * `hvaPage`, stopping at the end of the VMA, and writes their frames to
   * `out[outAt..]`. Returns the count pinned (> 0), 0 when the first page is not
   * in a pageable VMA (a hole or a PFNMAP VMA), or a negative errno.
   */
  pinUserPages(hvaPage: number, npages: number, write: boolean, out: Uint32Array, outAt: number, hint?: ContiguityHint): number {
    const vma = this.findVma(hvaPage);
    if (vma === undefined || vma.object.isPfnmap) return 0;
    if ((write && !vma.prot.write) || !vma.prot.read) return -14;
    const n = Math.min(npages, vma.endPage - hvaPage);
    const object = vma.object;
    const frames = object.frames;
    const phys = this.phys;
    const base = vma.pgoff + (hvaPage - vma.startPage);
    let i = 0;
    if (hint !== undefined) hint.contiguous = 1;
    for (;;) {
      // Present pages in one sweep, or a huge page at a time where the window
      // maps one; stop at a hole (fault it in) or a refcount that would overflow.
      const at = base + i;
      const huge = object.hugeRunAt(at);
      let want: number;
      let got: number;
      if (huge !== 0) {
        want = Math.min(huge, n - i);
        got = phys.pinContiguous(frames, at, want, out, outAt + i);
        if (i === 0 && got !== 0 && hint !== undefined) hint.contiguous = got;
      } else {
        want = n - i;
        got = phys.pinFrames(frames, at, want, out, outAt + i);
      }
      i += got;
      if (i === n) return n;
      if (got === want) continue;
      let f = frames[base + i]!;
      if (f === 0) f = object.faultIn(base + i);
      if (f === 0 || !phys.pin(f)) {
        for (let j = 0; j < i; j++) phys.unpin(out[outAt + j]!);
        return -12;
      }
      out[outAt + i] = f;
      i++;
    }
  }

  /**
   * get_user_pages_fast_only(FOLL_PIN): pins up to `npages` pages from
   * `hvaPage` that are already present, stopping at the first that is not,
   * at the end of the VMA, or at a refcount that would overflow; writes their
   * frames to `out[outAt..]`. Never faults a page in and never fails: returns
   * the count pinned, 0 when the first page cannot be taken this way (a hole,
   * a PFNMAP VMA, a protection mismatch), leaving the caller to take the slow
   * path, which reports what went wrong.
   */
  pinPresentPages(hvaPage: number, npages: number, write: boolean, out: Uint32Array, outAt: number): number {
    const vma = this.findVma(hvaPage);
    if (vma === undefined || vma.object.isPfnmap || (write && !vma.prot.write) || !vma.prot.read) return 0;
    const n = Math.min(npages, vma.endPage - hvaPage);
    return this.phys.pinFrames(vma.object.frames, vma.pgoff + (hvaPage - vma.startPage), n, out, outAt);
  }

  /** follow_pfnmap_start: the MMIO frame behind a PFNMAP page and the contiguous run after it. */
  followPfnmap(hvaPage: number, write: boolean): PfnmapRun | number {
    const vma = this.findVma(hvaPage);
    if (vma === undefined || !vma.object.isPfnmap) return -14;
    if (write && !vma.prot.write) return -14;
    const index = vma.pgoff + (hvaPage - vma.startPage);
    return { pfn: vma.object.mmioBase + index, npages: vma.endPage - hvaPage };
  }

  /** The frame currently mapped at `hvaPage`, faulting it in; 0 for a hole. */
  translate(hvaPage: number): number {
    const vma = this.findVma(hvaPage);
    if (vma === undefined) return 0;
    const object = vma.object;
    const index = vma.pgoff + (hvaPage - vma.startPage);
    if (object.isPfnmap) return object.mmioBase + index;
    const present = object.frames[index]!;
    return present !== 0 ? present : object.faultIn(index);
  }

  /** madvise(MADV_DONTNEED): the next touch of these pages faults in new frames. */
  madviseDontNeed(hvaPage: number, npages: number): void {
    for (let page = hvaPage; page < hvaPage + npages; ) {
      const vma = this.findVma(page);
      if (vma === undefined) throw new HostError("ENOMEM", "madvise-hole", { page });
      const n = Math.min(vma.endPage - page, hvaPage + npages - page);
      if (!vma.object.isPfnmap) vma.object.drop(vma.pgoff + (page - vma.startPage), n);
      page += n;
    }
  }
}
