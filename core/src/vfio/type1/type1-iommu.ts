/**
 * The VFIO type1 IOMMU backend of one container (`struct vfio_iommu`).
 *
 * Model, following drivers/vfio/vfio_iommu_type1.c (2025):
 * - `dmas`: the vfio_dma tree, keyed by IOVA page; entries never overlap.
 * - `domains`: one IommuDomain per compatible group of IOMMU-backed groups;
 *   every mapping is pinned once per vfio_dma and mapped into every domain. PFNs
 *   of IOMMU mappings are not stored: they are read back from the first domain.
 * - `emulatedGroups`: mdev groups; they have no domain. A container without a
 *   domain pins nothing at MAP_DMA: vendors pin lazily with pinPages.
 * - `devices`: emulated devices that supplied a dmaUnmap callback; `notifiers`:
 *   the Gen A/B notifier chain. Either lets a device pin.
 * - Accounting (section 3.1): pages are charged to dma.mm against the RLIMIT of
 *   dma.task, bypassed by the lock_cap snapshotted at MAP_DMA; external pins are
 *   charged only while no domain exists; reserved frames are never charged; an
 *   IOVA pinned both ways is charged once.
 *
 * Locking: one lock (`iommu->lock`) guards everything and is never held across
 * an await. The only await points are the invalidation callbacks of UNMAP_DMA,
 * which run with the lock dropped, exactly where the kernel drops it: other
 * operations (a pin, another map) may run there, and the unmap re-scans.
 *
 * Invariants 1-16 of linux-vfio.md section 7 are checked by assertInvariants().
 */
import sortedBtree from "sorted-btree";
import { Observable } from "../../events/emitter.js";
import { VfioError } from "../../errors/kernel-error.js";
import { ERRNO, errnoName, type ErrnoName } from "../../errors/errno.js";
import { IommuDomain, UnmappedRuns, type ReservedRegion } from "../../iommu/iommu-domain.js";
import type { IommuGroup } from "../../iommu/iommu-group.js";
import type { KernelLog } from "../../host/kernel-log.js";
import type { FaultInjector } from "../../host/fault-injector.js";
import type { Accounting } from "../../host/accounting.js";
import type { PhysicalMemory } from "../../host/physical-memory.js";
import type { Process } from "../../host/process.js";
import type { Mm } from "../../host/mm.js";
import type { Type1Params } from "./type1-params.js";
import { IOMMU_READ, IOMMU_WRITE, VfioDma, setBit, setBits } from "./vfio-dma.js";
import { PAGE_SIZE, U64_MAX, addrOfPage, pageOf, type Iova } from "../../address/address.js";
import type { Range } from "../../address/range.js";

export { IOMMU_READ, IOMMU_WRITE };

/** Invalidation callback of a Gen C emulated device: `vfio_device_ops.dma_unmap`. */
export interface Type1Device {
  readonly name: string;
  readonly group: IommuGroup;
  readonly dmaUnmap?: (iova: Iova, length: bigint) => void | Promise<void>;
}

/** Gen A/B blocking notifier for VFIO_IOMMU_NOTIFY_DMA_UNMAP. */
export type DmaUnmapNotifier = (action: number, data: { readonly iova: bigint; readonly size: bigint }) => void | Promise<void>;
export const VFIO_IOMMU_NOTIFY_DMA_UNMAP = 1;

export interface Type1Events {
  dmaMapped(e: { iova: bigint; length: bigint; vaddr: bigint; prot: number; pinned: number }): void;
  dmaUnmapped(e: { iova: bigint; length: bigint; unpinned: number }): void;
  vaddrInvalidated(e: { iova: bigint; length: bigint }): void;
  vaddrUpdated(e: { iova: bigint; length: bigint; ownerChanged: boolean }): void;
  pagesPinned(e: { device: string; iova: bigint; npage: number; newPins: number }): void;
  pagesUnpinned(e: { device: string; iova: bigint; npage: number; released: number }): void;
  lockedVmCharged(e: { pid: number; pages: number; lockedVm: number; limit: number }): void;
  invalidationSent(e: { iova: bigint; length: bigint; retry: number; devices: number }): void;
  invalidationAnswered(e: { iova: bigint; length: bigint; retry: number; pinsLeft: number }): void;
  groupAttached(e: { group: number; type: string; domain: number | null; replayedPages: number }): void;
  groupDetached(e: { group: number; type: string }): void;
  dirtyTrackingChanged(e: { on: boolean }): void;
}

interface Type1Group {
  readonly group: IommuGroup;
  pinnedPageDirtyScope: boolean;
}

interface Type1Domain {
  readonly domain: IommuDomain;
  readonly groups: Type1Group[];
  readonly enforceCacheCoherency: boolean;
}

export interface Type1Deps {
  readonly log: KernelLog;
  readonly faults: FaultInjector;
  readonly accounting: Accounting;
  readonly phys: PhysicalMemory;
  readonly params: Type1Params;
}

/** The fields of `struct vfio_iommu_type1_dma_map` after copy_from_user. */
export interface DmaMapRequest {
  readonly flags: number;
  readonly vaddr: bigint;
  readonly iova: bigint;
  readonly size: bigint;
}

export interface DmaUnmapRequest {
  readonly flags: number;
  readonly iova: bigint;
  readonly size: bigint;
  /** With GET_DIRTY_BITMAP: the user bitmap, already validated. */
  readonly bitmap?: UserBitmap;
}

export interface UserBitmap {
  readonly pgsize: bigint;
  readonly size: bigint;
  readonly data: Uint8Array;
}

export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
export const VFIO_DMA_MAP_FLAG_VADDR = 1 << 2;
export const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
export const VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1;
export const VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2;

export const VFIO_PIN_PAGES_MAX_ENTRIES = 512;
const VFIO_BATCH_MAX_CAPACITY = 512;
const VFIO_IOMMU_TLB_SYNC_MAX = 512;
const UNMAP_RETRIES_BEFORE_BUG = 10;
export const DIRTY_BITMAP_PAGES_MAX = 0x7fffffff;
export const dirtyBitmapBytes = (npages: bigint): bigint => ((npages + 63n) / 64n) * 8n;
export const DIRTY_BITMAP_SIZE_MAX = dirtyBitmapBytes(BigInt(DIRTY_BITMAP_PAGES_MAX));

const fail = (code: ErrnoName, reason: string, fields: Record<string, unknown> = {}): never => {
  throw new VfioError(code, reason, fields);
};

const failErrno = (errno: number, reason: string, fields: Record<string, unknown> = {}): never => {
  throw new VfioError(errnoName(errno) ?? "EIO", reason, fields);
};

/** Index of the lowest set bit (`__ffs`) of a non-zero bigint. */
const ffs = (v: bigint): number => {
  let n = 0;
  while (((v >> BigInt(n)) & 1n) === 0n) n++;
  return n;
};

/**
 * How many frames from `frames[offset]` on, at most `size`, are physically
 * contiguous (>= 1); the first `known` of them are known to be already.
 */
const contiguousFrames = (frames: Uint32Array, offset: number, size: number, known: number): number => {
  const first = frames[offset]! - offset;
  let i = offset + Math.max(1, Math.min(known, size));
  const end = offset + size;
  while (i < end && frames[i] === first + i) i++;
  return i - offset;
};

/** GUP scratch space carried between vfio_pin_pages_remote calls (`struct vfio_batch`). */
class Batch {
  readonly frames: Uint32Array;
  size = 0;
  offset = 0;
  /** From the last refill: how many frames from index 0 GUP knows to be consecutive (a huge page). */
  contiguous = 1;
  constructor(capacity: number) {
    this.frames = new Uint32Array(capacity);
  }
}

export class Type1Iommu extends Observable<Type1Events> {
  readonly v2: boolean;
  readonly dmas = new sortedBtree.default<number, VfioDma>();
  readonly domains: Type1Domain[] = [];
  readonly emulatedGroups: Type1Group[] = [];
  readonly devices: Type1Device[] = [];
  readonly notifiers: DmaUnmapNotifier[] = [];
  /** Valid IOVA ranges (inclusive); empty means any IOVA, as in an mdev-only container. */
  iovaList: Range[] = [];
  dmaAvail: number;
  readonly dmaEntryLimit: number;
  vaddrInvalidCount = 0;
  pgsizeBitmap = ~0xfffn & U64_MAX;
  numNonPinnedGroups = 0;
  dirtyPageTracking = false;
  #locked = false;
  readonly #log: KernelLog;
  readonly #faults: FaultInjector;
  readonly #accounting: Accounting;
  readonly #phys: PhysicalMemory;
  readonly #params: Type1Params;
  /** GUP result scratch: written by #vaddrGetPfns and read right after (never across an await). */
  readonly #gup = { pfn: 0 };
  /** The one-page batch of vfio_pin_page_external. */
  readonly #batch1 = new Batch(1);
  /** The frames of one vfio_pin_pages call taken by the fast path, before they are committed. */
  readonly #pinScratch = new Uint32Array(VFIO_PIN_PAGES_MAX_ENTRIES);
  /** vfio_unmap_unpin's list of unmapped regions awaiting the IOTLB sync (iova page, pfn, length). */
  readonly #regions = new UnmappedRuns(VFIO_IOMMU_TLB_SYNC_MAX);

  constructor(type: "TYPE1" | "TYPE1v2", deps: Type1Deps) {
    super();
    this.v2 = type === "TYPE1v2";
    this.#log = deps.log;
    this.#faults = deps.faults;
    this.#accounting = deps.accounting;
    this.#phys = deps.phys;
    this.#params = deps.params;
    this.dmaEntryLimit = deps.params.dmaEntryLimit;
    this.dmaAvail = this.dmaEntryLimit;
  }

  /** Smallest supported IOMMU page, in bytes (`1 << __ffs(pgsize_bitmap)`). */
  get pgsize(): bigint {
    return 1n << BigInt(ffs(this.pgsizeBitmap));
  }

  get hasEmulated(): boolean {
    return this.emulatedGroups.length > 0;
  }

  // ---------------------------------------------------------------- lookups

  /** vfio_find_dma: any mapping intersecting [startPage, startPage + npages). */
  findDma(startPage: number, npages: number): VfioDma | undefined {
    const below = this.dmas.nextLowerPair(startPage + npages);
    if (below === undefined) return undefined;
    const dma = below[1];
    return dma.iovaPage + dma.npages > startPage ? dma : undefined;
  }

  /** vfio_find_dma with byte arguments, where `size` 0 asks for the mapping containing `start`. */
  #findDmaBytes(start: bigint, size: bigint): VfioDma | undefined {
    // A mapping is page-aligned, so page-granular intersection equals byte intersection.
    const first = pageOf(start);
    const last = size === 0n ? first : pageOf(start + size - 1n);
    return this.findDma(first, last - first + 1);
  }

  #dmasFrom(startPage: number): VfioDma[] {
    const out: VfioDma[] = [];
    const first = this.findDma(startPage, 1);
    this.dmas.forRange(first?.iovaPage ?? startPage, Number.MAX_SAFE_INTEGER, false, (_k: number, dma: VfioDma) => {
      out.push(dma);
    });
    return out;
  }

  // ---------------------------------------------------------------- lock

  #lock(): void {
    if (this.#locked) fail("EDEADLK", "type1-lock-recursion");
    this.#locked = true;
  }

  #unlock(): void {
    this.#locked = false;
  }

  #withLock<T>(fn: () => T): T {
    this.#lock();
    try {
      return fn();
    } finally {
      this.#unlock();
    }
  }

  // ---------------------------------------------------------------- accounting

  /** vfio_lock_acct: charge (npage > 0) or uncharge dma.mm; `async` requires the mm to be alive. */
  #lockAcct(dma: VfioDma, npage: number, async: boolean): number {
    if (npage === 0) return 0;
    const mm = dma.mm;
    if (async && !mm.get()) return -ERRNO.ESRCH;
    const ret = this.#accounting.mmLockAcct(dma.task, mm, dma.lockCap, npage);
    if (ret === 0) dma.lockedVm += npage;
    if (async) mm.put();
    if (ret === 0 && this.hasListeners("lockedVmCharged")) {
      this.emit("lockedVmCharged", { pid: dma.task.pid, pages: npage, lockedVm: mm.lockedVm, limit: dma.task.memlockLimitPages });
    }
    return ret;
  }

  #isInvalidReserved(pfn: number): boolean {
    return this.#phys.isInvalidOrReserved(pfn);
  }

  /** put_pfn: unpin a page-backed frame; 1 if it was a counted (non-reserved) page. */
  #putPfn(pfn: number): number {
    if (this.#isInvalidReserved(pfn)) return 0;
    this.#phys.unpin(pfn);
    return 1;
  }

  // ---------------------------------------------------------------- GUP

  /**
   * vaddr_get_pfns: refill the batch from `mm` at page `index` of the mapping's
   * vaddr range (page numbers of an HVA do not fit a small integer, so the
   * offset travels instead); returns the count
   * obtained (> 0) with the first frame in `out.pfn`, or a negative errno. A
   * PFNMAP run returns its length with an empty batch.
   */
  #vaddrGetPfns(mm: Mm, dma: VfioDma, index: number, npages: number, batch: Batch, out: { pfn: number }): number {
    const prot = dma.prot;
    const vaddrPage = dma.vaddrPage + index;
    const write = (prot & IOMMU_WRITE) !== 0;
    const want = Math.min(npages, batch.frames.length);
    let ret = this.#faults.shouldFail("gup") ? -ERRNO.ENOMEM : mm.pinUserPages(vaddrPage, want, write, batch.frames, 0, batch);
    if (ret > 0) {
      out.pfn = batch.frames[0]!;
      batch.size = ret;
      batch.offset = 0;
      return ret;
    }
    if (ret === 0) ret = -ERRNO.EFAULT;
    const vma = mm.findVma(vaddrPage);
    if (vma !== undefined && vma.object.isPfnmap) {
      const run = mm.followPfnmap(vaddrPage, write);
      if (typeof run === "number") return run;
      if (!this.#isInvalidReserved(run.pfn)) return -ERRNO.EFAULT;
      out.pfn = run.pfn;
      return Math.min(npages, run.npages);
    }
    return ret;
  }

  /** vfio_batch_unpin: release frames left in the batch. */
  #batchUnpin(batch: Batch): void {
    while (batch.size > 0) {
      this.#putPfn(batch.frames[batch.offset]!);
      batch.offset++;
      batch.size--;
    }
  }

  /**
   * vfio_pin_pages_remote: pin the largest physically contiguous run starting
   * at page `index` of the mapping (at most `npage` pages), charging it in one
   * go. Returns the run length and its first frame in `out.pfn`, or a negative
   * errno.
   */
  #pinPagesRemote(dma: VfioDma, index: number, npage: number, limit: number, batch: Batch, current: Process, out: { pfn: number }): number {
    const size = batch.size;
    const nr = size === 0 ? 0 : contiguousFrames(batch.frames, batch.offset, size, batch.offset === 0 ? batch.contiguous : 1);
    if (nr !== 0 && nr < size) {
      const n = this.#pinRunInBatch(dma, index, npage, nr, limit, batch, current, out);
      if (n !== 0) return n;
    }
    return this.#pinPagesRemoteBatches(dma, index, npage, limit, batch, current, out, nr);
  }

  /**
   * vfio_pin_pages_remote when the batch already holds the whole run of `nr`
   * frames, i.e. the run ends before the batch does (every run of scattered
   * 4 KiB pages): the general loop's first pass, without its refill and PFNMAP
   * arms. Returns 0 without changing anything when the general path must run
   * instead (no pages asked, hugepages disabled, mm gone, memlock exceeded);
   * that path then runs from the start and reports what the kernel would.
   */
  #pinRunInBatch(dma: VfioDma, index: number, npage: number, nr: number, limit: number, batch: Batch, current: Process, out: { pfn: number }): number {
    if (npage <= 0 || this.#params.disableHugepages) return 0;
    const mm = current.mm;
    if (!mm.alive) return 0;
    const offset = batch.offset;
    const pfnBase = batch.frames[offset]!;
    const rsvd = this.#isInvalidReserved(pfnBase);
    let acct = 0;
    if (!rsvd) {
      acct = dma.vpfnCount === 0 ? nr : nr - dma.vpfnPages(index, nr);
      if (acct !== 0 && !dma.lockCap && mm.lockedVm + mm.baselineLockedVm + acct > limit) return 0;
    }
    batch.offset = offset + nr;
    batch.size -= nr;
    const ret = this.#lockAcct(dma, acct, false);
    if (ret < 0) return this.#unwindRemote(batch, pfnBase, nr, rsvd, ret);
    out.pfn = pfnBase;
    return nr;
  }

  /**
   * vfio_pin_pages_remote, the general loop: refills the batch and follows the
   * run across batches and PFNMAP VMAs. `firstNr` is the length of the
   * contiguous frames at the batch's offset when the caller already counted
   * them (0: not counted).
   */
  #pinPagesRemoteBatches(dma: VfioDma, index: number, npage: number, limit: number, batch: Batch, current: Process, out: { pfn: number }, firstNr: number): number {
    const mm = current.mm;
    if (!mm.alive) return -ERRNO.ENODEV;
    let pinned = 0;
    let lockAcct = 0;
    let pfnBase = 0;
    let rsvd = false;
    let pfn = 0;
    let ret: number;
    if (batch.size > 0) {
      pfnBase = batch.frames[batch.offset]!;
      pfn = pfnBase;
      rsvd = this.#isInvalidReserved(pfnBase);
    }
    if (this.#params.disableHugepages) npage = 1;
    const got = this.#gup;
    outer: while (npage > 0) {
      if (batch.size === 0) {
        ret = this.#vaddrGetPfns(mm, dma, index, npage, batch, got);
        if (ret < 0) return this.#unwindRemote(batch, pfnBase, pinned, rsvd, ret);
        pfn = got.pfn;
        if (pfnBase === 0) {
          pfnBase = pfn;
          rsvd = this.#isInvalidReserved(pfnBase);
        }
        if (batch.size === 0) {
          // A PFNMAP run: contiguous by construction.
          if (pfn !== pfnBase + pinned || !rsvd) break;
          pinned += ret;
          npage -= ret;
          index += ret;
          continue;
        }
      }
      for (;;) {
        if (pfn !== pfnBase + pinned || rsvd !== this.#isInvalidReserved(pfn)) break outer;
        const frames = batch.frames;
        let nr = firstNr;
        if (nr === 0) nr = contiguousFrames(frames, batch.offset, batch.size, batch.offset === 0 ? batch.contiguous : 1);
        firstNr = 0;
        if (!rsvd) {
          const acct = dma.vpfnCount === 0 ? nr : nr - dma.vpfnPages(index, nr);
          if (acct !== 0) {
            if (!dma.lockCap && mm.lockedVm + mm.baselineLockedVm + lockAcct + acct > limit) {
              this.#log.prWarn(`vfio_pin_pages_remote: RLIMIT_MEMLOCK (${BigInt(limit) << 12n}) exceeded`);
              return this.#unwindRemote(batch, pfnBase, pinned, rsvd, -ERRNO.ENOMEM);
            }
            lockAcct += acct;
          }
        }
        pinned += nr;
        npage -= nr;
        index += nr;
        batch.offset += nr;
        batch.size -= nr;
        if (batch.size === 0) break;
        pfn = frames[batch.offset]!;
      }
    }
    ret = this.#lockAcct(dma, lockAcct, false);
    if (ret < 0) return this.#unwindRemote(batch, pfnBase, pinned, rsvd, ret);
    out.pfn = pfnBase;
    return pinned;
  }

  #unwindRemote(batch: Batch, pfnBase: number, pinned: number, rsvd: boolean, ret: number): number {
    if (pinned > 0 && !rsvd) this.#phys.unpinRun(pfnBase, pinned);
    this.#batchUnpin(batch);
    return ret;
  }

  /** vfio_unpin_pages_remote: unpin a run; charges back `locked - unlocked` when accounting. */
  #unpinPagesRemote(dma: VfioDma, iovaPage: number, pfn: number, npage: number, doAccounting: boolean): number {
    const locked = dma.vpfnCount === 0 ? 0 : dma.vpfnPages(iovaPage - dma.iovaPage, npage);
    const unlocked = this.#phys.unpinRun(pfn, npage);
    if (doAccounting) this.#lockAcct(dma, locked - unlocked, true);
    return unlocked;
  }

  // ---------------------------------------------------------------- IOMMU map/unmap

  /** vfio_iommu_map: map a run into every domain, undoing the ones done on failure. */
  #iommuMap(iovaPage: number, pfn: number, npage: number): number {
    for (let i = 0; i < this.domains.length; i++) {
      const ret = this.domains[i]!.domain.map(iovaPage, pfn, npage);
      if (ret !== 0) {
        for (let j = i - 1; j >= 0; j--) this.domains[j]!.domain.unmap(iovaPage, npage);
        return ret;
      }
    }
    return 0;
  }

  /**
   * vfio_unmap_unpin: unmap every domain but the first, then walk the first one
   * in physically contiguous chunks, syncing the IOTLB at least every 512
   * regions and unpinning only after the sync. Returns the pages unpinned, or 0
   * after uncharging them itself when `doAccounting`.
   */
  #unmapUnpin(dma: VfioDma, doAccounting: boolean): number {
    if (dma.npages === 0 || this.domains.length === 0) return 0;
    const first = this.domains[0]!.domain;
    for (let i = 1; i < this.domains.length; i++) this.domains[i]!.domain.unmap(dma.iovaPage, dma.npages);
    const end = dma.iovaPage + dma.npages;
    const regions = this.#regions;
    regions.count = 0;
    let unlocked = 0;
    for (let page = dma.iovaPage; page < end; ) {
      // iommu_iova_to_phys + the contiguity walk + iommu_unmap, region after region.
      page = first.unmapRuns(page, end, regions);
      if (regions.full) {
        unlocked += this.#syncUnpin(first, regions);
      } else if (page < end) {
        this.#log.warnOn(true, "vfio_unmap_unpin", "IOVA not mapped in the first domain", { page });
        page++;
      }
    }
    dma.iommuMapped = false;
    if (regions.count > 0) unlocked += this.#syncUnpin(first, regions);
    if (doAccounting) {
      this.#lockAcct(dma, -unlocked, true);
      return 0;
    }
    return unlocked;
  }

  /** vfio_sync_unpin: flush the IOTLB, then unpin the regions listed (put_pfn over each; no accounting here); returns the pages unpinned. */
  #syncUnpin(domain: IommuDomain, regions: UnmappedRuns): number {
    domain.iotlbSync();
    const unlocked = this.#phys.unpinRuns(regions.pfn, regions.len, regions.count);
    regions.count = 0;
    return unlocked;
  }

  /** vfio_remove_dma. */
  #removeDma(dma: VfioDma): void {
    this.#log.warnOn(dma.vpfnCount !== 0, "vfio_remove_dma", "removing a mapping with external pins", { iova: addrOfPage(dma.iovaPage) });
    this.#unmapUnpin(dma, true);
    this.dmas.delete(dma.iovaPage);
    dma.bitmap = null;
    if (dma.vaddrInvalid) this.vaddrInvalidCount--;
    this.dmaAvail++;
  }

  // ---------------------------------------------------------------- MAP_DMA

  /** vfio_dma_do_map, after the ioctl layer's copy and argsz/flag checks. */
  mapDma(map: DmaMapRequest, current: Process): void {
    const setVaddr = (map.flags & VFIO_DMA_MAP_FLAG_VADDR) !== 0;
    let prot = 0;
    if (map.flags & VFIO_DMA_MAP_FLAG_WRITE) prot |= IOMMU_WRITE;
    if (map.flags & VFIO_DMA_MAP_FLAG_READ) prot |= IOMMU_READ;
    if ((prot !== 0 && setVaddr) || (prot === 0 && !setVaddr)) fail("EINVAL", "map-prot-and-vaddr-flags", { flags: map.flags });
    this.#withLock(() => this.#doMap(map, prot, setVaddr, current));
  }

  #doMap(map: DmaMapRequest, prot: number, setVaddr: boolean, current: Process): void {
    const { iova, vaddr, size } = map;
    const pgsize = this.pgsize;
    const range = { start: iova, last: iova + size - 1n };
    if (size === 0n || ((size | iova | vaddr) & (pgsize - 1n)) !== 0n) fail("EINVAL", "map-unaligned", { range, pgsize });
    if (iova + size - 1n > U64_MAX || vaddr + size - 1n > U64_MAX) fail("EINVAL", "map-wraps", { range });
    const existing = this.#findDmaBytes(iova, size);
    if (setVaddr) {
      if (existing === undefined) fail("ENOENT", "vaddr-no-mapping", { range });
      const dma = existing!;
      if (!dma.vaddrInvalid || addrOfPage(dma.iovaPage) !== iova || addrOfPage(dma.npages) !== size) fail("EINVAL", "vaddr-mapping-mismatch", { range });
      const ownerChanged = this.#changeDmaOwner(dma, current);
      dma.vaddrPage = pageOf(vaddr);
      dma.vaddrInvalid = false;
      this.vaddrInvalidCount--;
      this.emit("vaddrUpdated", { iova, length: size, ownerChanged });
      return;
    }
    if (existing !== undefined) fail("EEXIST", "map-overlaps", { range, existing: addrOfPage(existing.iovaPage) });
    if (this.dmaAvail === 0) fail("ENOSPC", "dma-entry-limit", { limit: this.dmaEntryLimit });
    if (!this.#iovaDmaValid(iova, range.last)) fail("EINVAL", "map-outside-iova-ranges", { range });
    if (this.#faults.shouldFail("kzalloc")) fail("ENOMEM", "vfio-dma-alloc", { range });
    this.dmaAvail--;
    const dma = new VfioDma(pageOf(iova), pageOf(vaddr), prot, current, current.mm, current.capable("CAP_IPC_LOCK"));
    this.dmas.set(dma.iovaPage, dma);
    const npages = Number(size / BigInt(PAGE_SIZE));
    let ret = 0;
    if (this.domains.length === 0) dma.npages = npages;
    else ret = this.#pinMapDma(dma, npages, current);
    if (ret === 0 && this.dirtyPageTracking) {
      ret = this.#bitmapAlloc(dma);
      if (ret !== 0) this.#removeDma(dma);
    }
    if (ret !== 0) failErrno(ret, "map-pin-failed", { range });
    this.emit("dmaMapped", { iova, length: size, vaddr, prot, pinned: dma.iommuMapped ? npages : 0 });
  }

  /** vfio_pin_map_dma: pin and map run by run; on failure remove everything done. */
  #pinMapDma(dma: VfioDma, npages: number, current: Process): number {
    const batch = new Batch(this.#params.disableHugepages ? 1 : VFIO_BATCH_MAX_CAPACITY);
    const limit = current.memlockLimitPages;
    const out = { pfn: 0 };
    let ret = 0;
    let left = npages;
    while (left > 0) {
      const runs = this.#pinMapRunsInBatch(dma, left, limit, batch, current);
      if (runs > 0) {
        left -= runs;
        dma.npages += runs;
        continue;
      }
      const n = this.#pinPagesRemote(dma, dma.npages, left, limit, batch, current, out);
      if (n <= 0) {
        this.#log.warnOn(n === 0, "vfio_pin_map_dma", "pinned nothing");
        ret = n;
        break;
      }
      ret = this.#iommuMap(dma.iovaPage + dma.npages, out.pfn, n);
      if (ret !== 0) {
        this.#unpinPagesRemote(dma, dma.iovaPage + dma.npages, out.pfn, n, true);
        this.#batchUnpin(batch);
        break;
      }
      left -= n;
      dma.npages += n;
    }
    dma.iommuMapped = true;
    if (ret !== 0) this.#removeDma(dma);
    return ret;
  }

  /**
   * The loop of vfio_pin_map_dma over every run that ends inside the batch, in
   * one step: for scattered 4 KiB pages that is every page of the batch but
   * the last. Taken only when nothing can tell it from the run-by-run loop:
   * no fault armed (no fallible step can fail, and none is counted), no
   * lockedVmCharged listener (the per-run charges are not seen one by one), no
   * external pin in the mapping (each run charges its whole length), every
   * frame a counted page, and both memlock checks passing for the sum (they
   * are monotone, so every run's check passes too). The frames then land at
   * consecutive IOVAs exactly as run-by-run mapping writes them. Returns the
   * pages done, or 0 without changing anything when it does not apply.
   */
  #pinMapRunsInBatch(dma: VfioDma, left: number, limit: number, batch: Batch, current: Process): number {
    const size = batch.size;
    if (size < 2 || size > left || this.#faults.armed || this.#params.disableHugepages || dma.vpfnCount !== 0 || this.hasListeners("lockedVmCharged")) return 0;
    const frames = batch.frames;
    const offset = batch.offset;
    const end = offset + size;
    // One run to the end of the batch (a huge page): nothing ends inside it.
    if (frames[end - 1] === frames[offset]! + size - 1) return 0;
    const mm = current.mm;
    if (!mm.alive) return 0;
    const phys = this.#phys;
    let lastStart = offset;
    let prev = frames[offset]!;
    if (phys.isInvalidOrReserved(prev)) return 0;
    for (let i = offset + 1; i < end; i++) {
      const f = frames[i]!;
      if (f !== prev + 1) {
        lastStart = i;
        if (phys.isInvalidOrReserved(f)) break;
      }
      prev = f;
    }
    const n = lastStart - offset;
    if (n === 0) return 0;
    if (!dma.lockCap && (mm.lockedVm + mm.baselineLockedVm + n > limit || dma.mm.lockedVm + dma.mm.baselineLockedVm + n > dma.task.memlockLimitPages)) return 0;
    const iovaPage = dma.iovaPage + dma.npages;
    const domains = this.domains;
    for (let d = 0; d < domains.length; d++) {
      if (domains[d]!.domain.mapFrames(iovaPage, frames, offset, n) !== 0) {
        for (let j = d - 1; j >= 0; j--) domains[j]!.domain.unmap(iovaPage, n);
        return 0;
      }
    }
    batch.offset = lastStart;
    batch.size = size - n;
    // Cannot fail: the checks above passed and no fault is armed.
    this.#lockAcct(dma, n, false);
    return n;
  }

  #iovaDmaValid(start: bigint, last: bigint): boolean {
    if (this.iovaList.length === 0) return true;
    return this.iovaList.some((r) => start >= r.start && last <= r.last);
  }

  /** vfio_change_dma_owner: move the mapping's charge to the caller's mm; true if it moved. */
  #changeDmaOwner(dma: VfioDma, current: Process): boolean {
    const mm = current.mm;
    if (mm === dma.mm) return false;
    const lockCap = current.capable("CAP_IPC_LOCK");
    const npage = dma.lockedVm;
    const ret = this.#accounting.mmLockAcct(current, mm, lockCap, npage);
    if (ret !== 0) failErrno(ret, "vaddr-owner-charge-failed", { pages: npage });
    if (dma.mm.get()) {
      this.#accounting.mmLockAcct(dma.task, dma.mm, dma.lockCap, -npage);
      dma.mm.put();
    }
    dma.task = current;
    dma.mm = mm;
    dma.lockCap = lockCap;
    return true;
  }

  // ---------------------------------------------------------------- UNMAP_DMA

  /**
   * vfio_dma_do_unmap. Returns the bytes unmapped. Throws on error; as in the
   * kernel, mappings removed before the error stay removed.
   */
  async unmapDma(unmap: DmaUnmapRequest): Promise<bigint> {
    const unmapAll = (unmap.flags & VFIO_DMA_UNMAP_FLAG_ALL) !== 0;
    const invalidateVaddr = (unmap.flags & VFIO_DMA_UNMAP_FLAG_VADDR) !== 0;
    const getBitmap = (unmap.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) !== 0;
    const iova = unmap.iova;
    let size = unmap.size;
    let unmapped = 0n;
    let retries = 0;
    let dmaLast: VfioDma | undefined;
    this.#lock();
    try {
      if (invalidateVaddr && this.hasEmulated) fail("EBUSY", "vaddr-with-emulated-groups");
      const pgsize = this.pgsize;
      if ((iova & (pgsize - 1n)) !== 0n) fail("EINVAL", "unmap-unaligned", { iova });
      if (unmapAll) {
        if (iova !== 0n || size !== 0n) fail("EINVAL", "unmap-all-with-range", { iova, size });
        size = U64_MAX;
      } else if (size === 0n || (size & (pgsize - 1n)) !== 0n || iova + size - 1n > U64_MAX) {
        fail("EINVAL", "unmap-bad-size", { iova, size });
      }
      if (getBitmap && (!this.dirtyPageTracking || unmap.bitmap!.pgsize !== pgsize)) fail("EINVAL", "unmap-bitmap-not-tracking-or-pgsize", {});
      const range = { start: iova, last: unmapAll ? U64_MAX : iova + size - 1n };
      again: for (;;) {
        if (this.v2 && !unmapAll) {
          const head = this.#findDmaBytes(iova, 1n);
          if (head !== undefined && addrOfPage(head.iovaPage) !== iova) fail("EINVAL", "unmap-bisects-mapping", { range, mapping: addrOfPage(head.iovaPage) });
          const tail = this.#findDmaBytes(range.last, 0n);
          if (tail !== undefined && addrOfPage(tail.iovaPage + tail.npages) - 1n !== range.last) fail("EINVAL", "unmap-bisects-mapping", { range, mapping: addrOfPage(tail.iovaPage) });
        }
        const startPage = pageOf(iova);
        const candidates = this.#dmasFrom(startPage);
        const marked: VfioDma[] = [];
        for (const dma of candidates) {
          const dmaStart = addrOfPage(dma.iovaPage);
          if (dmaStart > range.last) break;
          if (!this.v2 && iova > dmaStart) break;
          if (invalidateVaddr) {
            if (dma.vaddrInvalid) {
              for (const m of marked) {
                m.vaddrInvalid = false;
                this.vaddrInvalidCount--;
              }
              unmapped = 0n;
              fail("EINVAL", "vaddr-already-invalid", { range, mapping: dmaStart });
            }
            dma.vaddrInvalid = true;
            this.vaddrInvalidCount++;
            marked.push(dma);
            unmapped += addrOfPage(dma.npages);
            continue;
          }
          if (dma.vpfnCount !== 0) {
            if (dmaLast === dma) this.#log.bugOn(++retries > UNMAP_RETRIES_BEFORE_BUG, "vfio_dma_do_unmap", "vendor driver did not unpin after dma_unmap", { iova: dmaStart, retries });
            else {
              dmaLast = dma;
              retries = 0;
            }
            await this.#notifyDmaUnmap(dma, retries);
            continue again;
          }
          if (getBitmap) this.#updateUserBitmap(unmap.bitmap!.data, dma, iova, pgsize);
          unmapped += addrOfPage(dma.npages);
          const unpinned = dma.iommuMapped ? dma.npages : 0;
          this.#removeDma(dma);
          this.emit("dmaUnmapped", { iova: dmaStart, length: addrOfPage(dma.npages), unpinned });
        }
        if (invalidateVaddr && marked.length > 0) this.emit("vaddrInvalidated", { iova, length: unmapped });
        return unmapped;
      }
    } finally {
      this.#unlock();
    }
  }

  /** vfio_notify_dma_unmap: drop the lock, call every registered device with the whole mapping, retake it. */
  async #notifyDmaUnmap(dma: VfioDma, retry: number): Promise<void> {
    const iova = addrOfPage(dma.iovaPage);
    const length = addrOfPage(dma.npages);
    const devices = [...this.devices];
    const notifiers = [...this.notifiers];
    if (devices.length === 0 && notifiers.length === 0) return;
    this.#unlock();
    try {
      this.emit("invalidationSent", { iova, length, retry, devices: devices.length + notifiers.length });
      for (const device of devices) await this.#callVendor(device.name, () => device.dmaUnmap!(iova as Iova, length));
      for (const nb of notifiers) await this.#callVendor("notifier", () => nb(VFIO_IOMMU_NOTIFY_DMA_UNMAP, { iova, size: length }));
    } finally {
      this.#lock();
    }
    this.emit("invalidationAnswered", { iova, length, retry, pinsLeft: dma.vpfnCount });
  }

  /** A vendor callback returns void in the kernel: an exception from it is a WARN, never a failure of the unmap. */
  async #callVendor(who: string, call: () => void | Promise<void>): Promise<void> {
    try {
      await call();
    } catch (e) {
      this.#log.warnOn(true, "dma_unmap", `invalidation callback of ${who} threw`, { error: String(e) });
    }
  }

  // ---------------------------------------------------------------- vendor pinning

  /** vfio_iommu_type1_pin_pages (contiguous-IOVA form, Gen C/D) from IOVA page `startPage`, host frames into `pages[at..]`. Returns npage. */
  pinPages(device: Type1Device, startPage: number, npage: number, prot: number, pages: Uint32Array, at: number): number {
    if (!this.v2) fail("EACCES", "pin-on-type1-v1");
    return this.#withLock(() => {
      if (this.#log.warnOnce(this.vaddrInvalidCount !== 0, "vfio_pin_pages", "vfio_pin_pages not allowed with VFIO_UPDATE_VADDR")) fail("EBUSY", "pin-while-vaddr-invalid");
      if (this.devices.length === 0) fail("EINVAL", "pin-without-dma-unmap-device");
      let newPins = this.#pinNewRange(startPage, npage, prot, pages, at);
      if (newPins < 0) {
        const iovaAt = (i: number): number => startPage + i;
        newPins = this.#pinLoop(npage, prot, pages, at, iovaAt);
      }
      this.#promoteDirtyScope(device.group);
      if (this.hasListeners("pagesPinned")) this.emit("pagesPinned", { device: device.name, iova: addrOfPage(startPage), npage, newPins });
      return npage;
    });
  }

  /** vfio_pin_pages array form (Gen A/B): arbitrary IOVA pfns, duplicates each take a reference. */
  pinPagesArray(device: Type1Device, userPfns: ArrayLike<number>, npage: number, prot: number, physPfns: Uint32Array): number {
    if (!this.v2) fail("EACCES", "pin-on-type1-v1");
    return this.#withLock(() => {
      if (this.#log.warnOnce(this.vaddrInvalidCount !== 0, "vfio_pin_pages", "vfio_pin_pages not allowed with VFIO_UPDATE_VADDR")) fail("EBUSY", "pin-while-vaddr-invalid");
      if (!this.hasEmulated || this.notifiers.length === 0) fail("EINVAL", "pin-without-notifier");
      const newPins = this.#pinLoop(npage, prot, physPfns, 0, (i) => userPfns[i]!);
      this.#promoteDirtyScope(device.group);
      if (this.hasListeners("pagesPinned")) this.emit("pagesPinned", { device: device.name, iova: addrOfPage(userPfns[0]!), npage, newPins });
      return npage;
    });
  }

  /**
   * vfio_iommu_type1_pin_pages when every page of the range is new to one
   * mapping and already present: the pages are taken in one
   * get_user_pages_fast_only sweep and charged in one go. Taken only when
   * nothing can tell it from the page-by-page loop: no fault armed (no
   * fallible step can fail, and none is counted), no lockedVmCharged listener
   * (the per-page charges are not seen one by one), and the memlock check
   * passing for the sum (it is monotone, so each page's check passes too).
   * Returns the new pins, or -1 without changing anything when it does not
   * apply; the page-by-page loop then runs and reports any error.
   */
  #pinNewRange(startPage: number, npage: number, prot: number, pages: Uint32Array, at: number): number {
    const scratch = this.#pinScratch;
    if (npage > scratch.length || this.#faults.armed || this.hasListeners("lockedVmCharged")) return -1;
    const dma = this.findDma(startPage, 1);
    if (dma === undefined || startPage + npage - 1 > dma.lastIovaPage || (dma.prot & prot) !== prot) return -1;
    const index = startPage - dma.iovaPage;
    if (dma.vpfnCount !== 0 && dma.vpfnPages(index, npage) !== 0) return -1;
    const mm = dma.mm;
    if (!mm.alive) return -1;
    const doAccounting = this.domains.length === 0;
    if (doAccounting && !dma.lockCap && mm.lockedVm + mm.baselineLockedVm + npage > dma.task.memlockLimitPages) return -1;
    const phys = this.#phys;
    const got = mm.pinPresentPages(dma.vaddrPage + index, npage, (dma.prot & IOMMU_WRITE) !== 0, scratch, 0);
    if (got !== npage) {
      for (let i = 0; i < got; i++) phys.unpin(scratch[i]!);
      return -1;
    }
    let counted = 0;
    for (let i = 0; i < npage; i++) {
      const pfn = scratch[i]!;
      dma.addVpfn(index + i, pfn);
      pages[at + i] = pfn;
      if (!phys.isInvalidOrReserved(pfn)) counted++;
    }
    if (this.dirtyPageTracking) {
      const pp = this.#pgsizePages;
      for (let i = 0; i < npage; i++) setBit(dma.bitmap!, Math.floor((index + i) / pp));
    }
    // Cannot fail: the check above passed and no fault is armed.
    if (doAccounting) this.#lockAcct(dma, counted, false);
    return npage;
  }

  /** The shared body of both pin forms: all or nothing. Returns how many IOVAs got a new pin. */
  #pinLoop(npage: number, prot: number, pages: Uint32Array, at: number, iovaAt: (i: number) => number): number {
    const doAccounting = this.domains.length === 0;
    let newPins = 0;
    let i = 0;
    let err: VfioError | undefined;
    let dma: VfioDma | undefined;
    const gup = new Uint32Array(1);
    for (; i < npage; i++) {
      const page = iovaAt(i);
      if (dma === undefined || page < dma.iovaPage || page > dma.lastIovaPage) dma = this.findDma(page, 1);
      if (dma === undefined) {
        err = new VfioError("EINVAL", "pin-outside-mappings", { iova: addrOfPage(page), done: i });
        break;
      }
      if ((dma.prot & prot) !== prot) {
        err = new VfioError("EPERM", "pin-prot-not-allowed", { iova: addrOfPage(page), prot, mappingProt: dma.prot, done: i });
        break;
      }
      const index = page - dma.iovaPage;
      if (dma.refsAt(index) !== 0) {
        pages[at + i] = dma.getVpfn(index);
        continue;
      }
      const ret = this.#pinPageExternal(dma, index, doAccounting, gup);
      if (ret !== 0) {
        err = new VfioError(errnoName(ret) ?? "EIO", "pin-external-failed", { iova: addrOfPage(page), done: i });
        break;
      }
      const pfn = gup[0]!;
      if (!this.#phys.isValid(pfn)) {
        err = new VfioError("EINVAL", "pin-pfn-without-struct-page", { iova: addrOfPage(page), done: i });
        break;
      }
      if (this.#faults.shouldFail("kzalloc")) {
        if (this.#putPfn(pfn) !== 0 && doAccounting) this.#lockAcct(dma, -1, true);
        err = new VfioError("ENOMEM", "vfio-pfn-alloc", { iova: addrOfPage(page), done: i });
        break;
      }
      dma.addVpfn(index, pfn);
      newPins++;
      pages[at + i] = pfn;
      if (this.dirtyPageTracking) setBit(dma.bitmap!, Math.floor(index / this.#pgsizePages));
    }
    if (err === undefined) return newPins;
    pages[at + i] = 0;
    for (let j = 0; j < i; j++) {
      const page = iovaAt(j);
      this.#unpinPageExternal(this.findDma(page, 1)!, page, doAccounting);
      pages[at + j] = 0;
    }
    throw err;
  }

  get #pgsizePages(): number {
    return Number(this.pgsize / BigInt(PAGE_SIZE));
  }

  /** vfio_pin_page_external: GUP one page through dma.mm; 0 or a negative errno. */
  #pinPageExternal(dma: VfioDma, index: number, doAccounting: boolean, out: Uint32Array): number {
    const mm = dma.mm;
    if (!mm.get()) return -ERRNO.ENODEV;
    try {
      const batch = this.#batch1;
      batch.size = 0;
      batch.offset = 0;
      const got = this.#gup;
      const ret = this.#vaddrGetPfns(mm, dma, index, 1, batch, got);
      if (ret !== 1) return ret < 0 ? ret : -ERRNO.EFAULT;
      out[0] = got.pfn;
      if (doAccounting && !this.#isInvalidReserved(got.pfn)) {
        const acct = this.#lockAcct(dma, 1, false);
        if (acct !== 0) {
          this.#putPfn(got.pfn);
          if (acct === -ERRNO.ENOMEM) this.#log.prWarn(`vfio_pin_page_external: Task ${dma.task.comm} (${dma.task.pid}) RLIMIT_MEMLOCK (${dma.task.rlimitMemlock}) exceeded`);
          return acct;
        }
      }
      return 0;
    } finally {
      mm.put();
    }
  }

  /**
   * vfio_iommu_type1_unpin_pages over a range inside one mapping, uncharging
   * in one go. Taken only when nothing can tell it from the page-by-page loop:
   * no fault armed, no lockedVmCharged listener, and (when charging) a live mm
   * holding at least `npage` pages, so no step of the loop would WARN. Returns
   * the pins released, or -1 without changing anything when it does not apply.
   */
  #unpinRange(startPage: number, npage: number): number {
    if (this.#faults.armed || this.hasListeners("lockedVmCharged")) return -1;
    const dma = this.findDma(startPage, 1);
    if (dma === undefined || startPage + npage - 1 > dma.lastIovaPage) return -1;
    const doAccounting = this.domains.length === 0;
    const mm = dma.mm;
    if (doAccounting && (!mm.alive || mm.lockedVm < npage)) return -1;
    const phys = this.#phys;
    const index = startPage - dma.iovaPage;
    const before = dma.vpfnCount;
    let unlocked = 0;
    for (let i = index; i < index + npage; i++) {
      if (dma.refsAt(i) === 0) continue;
      const frame = dma.putVpfn(i);
      if (frame === 0 || phys.isInvalidOrReserved(frame)) continue;
      phys.unpin(frame);
      unlocked++;
    }
    if (doAccounting && unlocked !== 0) this.#lockAcct(dma, -unlocked, true);
    return before - dma.vpfnCount;
  }

  /** vfio_unpin_page_external: drop one reference; release and uncharge at zero. Returns pages uncharged. */
  #unpinPageExternal(dma: VfioDma, iovaPage: number, doAccounting: boolean): number {
    const index = iovaPage - dma.iovaPage;
    if (dma.refsAt(index) === 0) return 0;
    const frame = dma.putVpfn(index);
    if (frame === 0) return 0;
    const unlocked = this.#putPfn(frame);
    if (doAccounting && unlocked !== 0) this.#lockAcct(dma, -unlocked, true);
    return unlocked;
  }

  #promoteDirtyScope(group: IommuGroup): void {
    const g = this.#findGroup(group);
    if (g !== undefined && !g.pinnedPageDirtyScope) {
      g.pinnedPageDirtyScope = true;
      this.numNonPinnedGroups--;
    }
  }

  /** vfio_iommu_type1_unpin_pages (Gen C): void; a page outside every mapping stops the loop with a WARN. */
  unpinPages(device: Type1Device, startPage: number, npage: number): void {
    if (this.#log.warnOn(!this.v2, "vfio_unpin_pages", "unpin on a type1 v1 container")) return;
    let released = 0;
    let i = 0;
    this.#withLock(() => {
      const doAccounting = this.domains.length === 0;
      const inRange = this.#unpinRange(startPage, npage);
      if (inRange >= 0) {
        released = inRange;
        i = npage;
        return;
      }
      let dma: VfioDma | undefined;
      for (; i < npage; i++) {
        const page = startPage + i;
        // vfio_find_dma; the mapping found last still answers while it holds the page.
        if (dma === undefined || !(page >= dma.iovaPage && page <= dma.lastIovaPage)) dma = this.findDma(page, 1);
        if (dma === undefined) break;
        const before = dma.vpfnCount;
        this.#unpinPageExternal(dma, page, doAccounting);
        released += before - dma.vpfnCount;
      }
    });
    if (i !== npage) this.#log.warnOn(true, "vfio_unpin_pages", "unpin outside every mapping", { iova: addrOfPage(startPage), npage, done: i });
    if (this.hasListeners("pagesUnpinned")) this.emit("pagesUnpinned", { device: device.name, iova: addrOfPage(startPage), npage, released });
  }

  /** Gen A/B vfio_unpin_pages: returns the count unpinned, or throws -EINVAL when none could be. */
  unpinPagesArray(device: Type1Device, userPfns: ArrayLike<number>, npage: number): number {
    if (!this.v2) fail("EACCES", "unpin-on-type1-v1");
    let released = 0;
    const i = this.#withLock(() => {
      const doAccounting = this.domains.length === 0;
      let k = 0;
      let dma: VfioDma | undefined;
      for (; k < npage; k++) {
        const page = userPfns[k]!;
        if (dma === undefined || !(page >= dma.iovaPage && page <= dma.lastIovaPage)) dma = this.findDma(page, 1);
        if (dma === undefined) break;
        const before = dma.vpfnCount;
        this.#unpinPageExternal(dma, page, doAccounting);
        released += before - dma.vpfnCount;
      }
      return k;
    });
    if (this.hasListeners("pagesUnpinned") && npage > 0) this.emit("pagesUnpinned", { device: device.name, iova: addrOfPage(userPfns[0]!), npage, released });
    if (i > 0) return i;
    return fail("EINVAL", "unpin-outside-mappings", { done: 0 });
  }

  // ---------------------------------------------------------------- dma_rw

  /**
   * vfio_iommu_type1_dma_rw: copy through the mapping's vaddr in chunks that
   * end at mapping boundaries. `current` undefined means a kthread, which may
   * borrow any mm; a process may only copy within its own mm.
   */
  dmaRw(iova: bigint, data: Uint8Array, write: boolean, current: Process | undefined): void {
    this.#withLock(() => {
      if (this.#log.warnOnce(this.vaddrInvalidCount !== 0, "vfio_dma_rw", "vfio_dma_rw not allowed with VFIO_UPDATE_VADDR")) fail("EBUSY", "rw-while-vaddr-invalid");
      let done = 0;
      while (done < data.length) {
        const at = iova + BigInt(done);
        const dma = this.#findDmaBytes(at, 1n);
        if (dma === undefined) fail("EINVAL", "rw-outside-mappings", { iova: at, done });
        const d = dma!;
        if ((write && (d.prot & IOMMU_WRITE) === 0) || (d.prot & IOMMU_READ) === 0) fail("EPERM", "rw-prot-not-allowed", { iova: at, done });
        if (!d.mm.get()) fail("EPERM", "rw-mm-gone", { iova: at, done });
        try {
          if (current !== undefined && current.mm !== d.mm) fail("EFAULT", "rw-foreign-mm", { iova: at, done });
          const offset = at - addrOfPage(d.iovaPage);
          const count = Math.min(data.length - done, Number(addrOfPage(d.npages) - offset));
          if (!this.#copyUser(d, offset, data.subarray(done, done + count), write)) fail("EFAULT", "rw-copy-failed", { iova: at, done });
          if (write && this.dirtyPageTracking) {
            const shift = BigInt(ffs(this.pgsizeBitmap));
            const firstBit = Number(offset >> shift);
            setBits(d.bitmap!, firstBit, Number((offset + BigInt(count) - 1n) >> shift) - firstBit + 1);
          }
          done += count;
        } finally {
          d.mm.put();
        }
      }
    });
  }

  /** copy_to_user / copy_from_user through the mapping's vaddr: all or nothing. */
  #copyUser(dma: VfioDma, offset: bigint, buf: Uint8Array, write: boolean): boolean {
    const mm = dma.mm;
    const vaddr = addrOfPage(dma.vaddrPage) + offset;
    const lastPage = pageOf(vaddr + BigInt(buf.length) - 1n);
    for (let page = pageOf(vaddr); page <= lastPage; page++) {
      const vma = mm.findVma(page);
      if (vma === undefined || (write ? !vma.prot.write : !vma.prot.read)) return false;
    }
    for (let done = 0; done < buf.length; ) {
      const addr = vaddr + BigInt(done);
      const inPage = Number(addr & 0xfffn);
      const n = Math.min(buf.length - done, PAGE_SIZE - inPage);
      const frame = mm.translate(pageOf(addr));
      if (frame === 0) return false;
      const part = buf.subarray(done, done + n);
      if (write) this.#phys.write(frame, inPage, part);
      else this.#phys.read(frame, inPage, part);
      done += n;
    }
    return true;
  }

  // ---------------------------------------------------------------- groups and domains

  #findGroup(group: IommuGroup): Type1Group | undefined {
    for (const d of this.domains) {
      const g = d.groups.find((x) => x.group === group);
      if (g !== undefined) return g;
    }
    return this.emulatedGroups.find((x) => x.group === group);
  }

  /** vfio_iommu_type1_attach_group. */
  attachGroup(group: IommuGroup, current: Process): void {
    this.#withLock(() => {
      if (this.vaddrInvalidCount !== 0) fail("EBUSY", "attach-while-vaddr-invalid");
      if (this.#findGroup(group) !== undefined) fail("EINVAL", "group-already-attached", { group: group.id });
      if (this.#faults.shouldFail("kzalloc")) fail("ENOMEM", "vfio-iommu-group-alloc");
      const g: Type1Group = { group, pinnedPageDirtyScope: false };
      if (group.type === "emulated") {
        g.pinnedPageDirtyScope = true;
        this.emulatedGroups.push(g);
        this.emit("groupAttached", { group: group.id, type: group.type, domain: null, replayedPages: 0 });
        return;
      }
      const hw = group.hw!;
      if (this.#aperConflict(hw.aperture.start, hw.aperture.last)) fail("EINVAL", "aperture-conflict", { range: hw.aperture });
      if (this.#resvConflict(group.reservedRegions)) fail("EINVAL", "reserved-region-conflict", { group: group.id });
      const iovaCopy = this.#aperResize(this.iovaList.map((r) => ({ ...r })), hw.aperture.start, hw.aperture.last);
      const excluded = this.#resvExclude(iovaCopy, group.reservedRegions);
      if (excluded === undefined) fail("EINVAL", "no-iova-left", { group: group.id });
      if (!this.#params.allowUnsafeInterrupts && !hw.msiIsolation) {
        this.#log.prWarn('vfio_iommu_type1_attach_group: No interrupt remapping support.  Use the module param "allow_unsafe_interrupts" to enable VFIO IOMMU support on this platform');
        fail("EPERM", "no-msi-isolation", { group: group.id });
      }
      const compatible = this.domains.find((d) => d.domain.hw.driver === hw.driver && d.enforceCacheCoherency === hw.enforceCacheCoherency);
      let replayedPages = 0;
      let domainId: number;
      if (compatible !== undefined) {
        compatible.groups.push(g);
        domainId = compatible.domain.id;
      } else {
        const domain: Type1Domain = { domain: new IommuDomain(hw, this.#faults), groups: [g], enforceCacheCoherency: hw.enforceCacheCoherency };
        const ret = this.#replay(domain.domain, current);
        if (ret < 0) failErrno(ret, "replay-failed", { group: group.id });
        replayedPages = ret;
        this.domains.unshift(domain);
        this.#updatePgsizeBitmap();
        domainId = domain.domain.id;
      }
      this.iovaList = excluded!;
      this.numNonPinnedGroups++;
      this.emit("groupAttached", { group: group.id, type: group.type, domain: domainId, replayedPages });
    });
  }

  /** vfio_iommu_replay: map every mapping into a new domain, pinning (and charging) what is not mapped yet. */
  #replay(domain: IommuDomain, current: Process): number {
    const first = this.domains[0]?.domain;
    const batch = new Batch(this.#params.disableHugepages ? 1 : VFIO_BATCH_MAX_CAPACITY);
    const limit = current.memlockLimitPages;
    const list = [...this.dmas.values()];
    const out = { pfn: 0 };
    let pages = 0;
    let n = 0;
    let ret = 0;
    replay: for (; n < list.length; n++) {
      const dma = list[n]!;
      const end = dma.iovaPage + dma.npages;
      for (let page = dma.iovaPage; page < end; ) {
        let pfn: number;
        let size: number;
        if (dma.iommuMapped) {
          if (first === undefined) {
            this.#log.warnOn(true, "vfio_iommu_replay", "mapped without a domain");
            ret = -ERRNO.EINVAL;
            break replay;
          }
          pfn = first.iovaToPfn(page);
          if (this.#log.warnOn(pfn === 0, "vfio_iommu_replay", "IOVA not mapped in the first domain", { page })) {
            page++;
            continue;
          }
          size = first.contiguousRun(page, pfn, end - page);
        } else {
          const got = this.#pinPagesRemote(dma, page - dma.iovaPage, end - page, limit, batch, current, out);
          if (got <= 0) {
            this.#log.warnOn(got === 0, "vfio_iommu_replay", "pinned nothing");
            ret = got;
            break replay;
          }
          pfn = out.pfn;
          size = got;
          pages += got;
        }
        ret = domain.map(page, pfn, size);
        if (ret !== 0) {
          if (!dma.iommuMapped) {
            this.#unpinPagesRemote(dma, page, pfn, size, true);
            this.#batchUnpin(batch);
          }
          break replay;
        }
        page += size;
      }
    }
    if (ret === 0) {
      for (const dma of list) dma.iommuMapped = true;
      return pages;
    }
    for (let k = Math.min(n, list.length - 1); k >= 0; k--) {
      const dma = list[k]!;
      if (dma.iommuMapped) {
        domain.unmap(dma.iovaPage, dma.npages);
        continue;
      }
      const end = dma.iovaPage + dma.npages;
      for (let page = dma.iovaPage; page < end; ) {
        const pfn = domain.iovaToPfn(page);
        if (pfn === 0) {
          page++;
          continue;
        }
        const size = domain.contiguousRun(page, pfn, end - page);
        domain.unmap(page, size);
        this.#unpinPagesRemote(dma, page, pfn, size, true);
        page += size;
      }
    }
    return ret;
  }

  #aperConflict(start: bigint, last: bigint): boolean {
    const list = this.iovaList;
    if (list.length === 0) return false;
    const first = list[0]!;
    const lastR = list[list.length - 1]!;
    if (start > lastR.last || last < first.start) return true;
    if (start > first.start && this.#findDmaBytes(first.start, start - first.start) !== undefined) return true;
    if (last < lastR.last && this.#findDmaBytes(last + 1n, lastR.last - last) !== undefined) return true;
    return false;
  }

  /** vfio_iommu_aper_resize: clip the list to a new aperture. */
  #aperResize(list: Range[], start: bigint, last: bigint): Range[] {
    if (list.length === 0) return [{ start, last }];
    const out: Range[] = [];
    let i = 0;
    for (; i < list.length; i++) {
      const node = list[i]!;
      if (start < node.start) break;
      if (start < node.last) {
        list[i] = { start, last: node.last };
        break;
      }
    }
    for (; i < list.length; i++) {
      const node = list[i]!;
      if (last > node.last) out.push(node);
      else if (last > node.start) out.push({ start: node.start, last });
    }
    return out;
  }

  #resvConflict(regions: readonly ReservedRegion[]): boolean {
    return regions.some((r) => r.type !== "direct-relaxable" && this.#findDmaBytes(r.start, r.length) !== undefined);
  }

  /** vfio_iommu_resv_exclude: punch reserved regions out of the list; undefined when nothing is left. */
  #resvExclude(list: Range[], regions: readonly ReservedRegion[]): Range[] | undefined {
    let out = list;
    for (const resv of regions) {
      if (resv.type === "direct-relaxable") continue;
      const start = resv.start;
      const last = resv.start + resv.length - 1n;
      out = out.flatMap((n) => {
        if (start > n.last || last < n.start) return [n];
        const parts: Range[] = [];
        if (start > n.start) parts.push({ start: n.start, last: start - 1n });
        if (last < n.last) parts.push({ start: last + 1n, last: n.last });
        return parts;
      });
    }
    return out.length === 0 ? undefined : out;
  }

  #updatePgsizeBitmap(): void {
    let bitmap = U64_MAX;
    for (const d of this.domains) bitmap &= d.domain.pgsizeBitmap;
    if ((bitmap & 0xfffn) !== 0n) bitmap = (bitmap & ~0xfffn) | 0x1000n;
    this.pgsizeBitmap = bitmap;
  }

  /** vfio_iommu_type1_detach_group. Never fails. */
  detachGroup(group: IommuGroup): void {
    this.#withLock(() => {
      let updateDirtyScope = false;
      const emulated = this.emulatedGroups.findIndex((g) => g.group === group);
      if (emulated >= 0) {
        updateDirtyScope = !this.emulatedGroups[emulated]!.pinnedPageDirtyScope;
        this.emulatedGroups.splice(emulated, 1);
        if (this.emulatedGroups.length === 0 && this.domains.length === 0) {
          this.#log.warnOn(this.devices.length !== 0, "vfio_iommu_type1_detach_group", "devices still registered");
          this.#unmapUnpinAll();
        }
      } else {
        let iovaCopy = this.iovaList.map((r) => ({ ...r }));
        for (let di = 0; di < this.domains.length; di++) {
          const d = this.domains[di]!;
          const gi = d.groups.findIndex((g) => g.group === group);
          if (gi < 0) continue;
          updateDirtyScope = !d.groups[gi]!.pinnedPageDirtyScope;
          d.groups.splice(gi, 1);
          if (d.groups.length === 0) {
            if (this.domains.length === 1) {
              if (this.emulatedGroups.length === 0) {
                this.#log.warnOn(this.devices.length !== 0, "vfio_iommu_type1_detach_group", "devices still registered");
                this.#unmapUnpinAll();
              } else {
                this.#unmapUnpinReaccount();
              }
            }
            this.domains.splice(di, 1);
            iovaCopy = this.#aperExpand(iovaCopy);
            this.#updatePgsizeBitmap();
          }
          break;
        }
        const refreshed = this.#resvRefresh(iovaCopy);
        if (refreshed !== undefined) this.iovaList = refreshed;
      }
      if (updateDirtyScope) {
        this.numNonPinnedGroups--;
        if (this.dirtyPageTracking) for (const dma of this.dmas.values()) setBits(dma.bitmap!, 0, Math.floor(dma.npages / this.#pgsizePages));
      }
      this.emit("groupDetached", { group: group.id, type: group.type });
    });
  }

  #aperExpand(list: Range[]): Range[] {
    if (list.length === 0) return list;
    let start = 0n;
    let last = U64_MAX;
    for (const d of this.domains) {
      if (d.domain.hw.aperture.start > start) start = d.domain.hw.aperture.start;
      if (d.domain.hw.aperture.last < last) last = d.domain.hw.aperture.last;
    }
    const out = [...list];
    out[0] = { start, last: out[0]!.last };
    out[out.length - 1] = { start: out[out.length - 1]!.start, last };
    return out;
  }

  #resvRefresh(list: Range[]): Range[] | undefined {
    if (list.length === 0) return undefined;
    const regions = this.domains.flatMap((d) => d.groups.flatMap((g) => g.group.reservedRegions));
    return this.#resvExclude([{ start: list[0]!.start, last: list[list.length - 1]!.last }], regions);
  }

  #unmapUnpinAll(): void {
    for (const dma of [...this.dmas.values()]) {
      const length = addrOfPage(dma.npages);
      this.#removeDma(dma);
      this.emit("dmaUnmapped", { iova: addrOfPage(dma.iovaPage), length, unpinned: 0 });
    }
  }

  /** vfio_iommu_unmap_unpin_reaccount: the last domain left while mdevs remain. */
  #unmapUnpinReaccount(): void {
    for (const dma of this.dmas.values()) {
      const unlocked = this.#unmapUnpin(dma, false);
      let locked = 0;
      dma.forEachVpfn((_i: number, frame: number) => {
        if (!this.#isInvalidReserved(frame)) locked++;
      });
      this.#lockAcct(dma, locked - unlocked, true);
    }
  }

  /** Gen A/B: register a VFIO_IOMMU_NOTIFY_DMA_UNMAP notifier; `events` is in/out like the kernel's. */
  registerNotifier(events: { value: number }, nb: DmaUnmapNotifier): void {
    events.value &= ~VFIO_IOMMU_NOTIFY_DMA_UNMAP;
    if (events.value !== 0) fail("EINVAL", "notifier-unknown-events", { events: events.value });
    this.notifiers.push(nb);
  }

  unregisterNotifier(nb: DmaUnmapNotifier): void {
    const i = this.notifiers.indexOf(nb);
    if (i < 0) fail("ENOENT", "notifier-not-registered");
    this.notifiers.splice(i, 1);
  }

  /** vfio_iommu_type1_register_device: only devices with dma_unmap join the list. */
  registerDevice(device: Type1Device): void {
    if (device.dmaUnmap === undefined) return;
    this.#withLock(() => this.devices.push(device));
  }

  unregisterDevice(device: Type1Device): void {
    if (device.dmaUnmap === undefined) return;
    this.#withLock(() => {
      const i = this.devices.indexOf(device);
      if (i >= 0) this.devices.splice(i, 1);
    });
  }

  /** vfio_iommu_type1_release: the container lost its last group. Never fails. */
  release(): void {
    this.#withLock(() => {
      this.emulatedGroups.length = 0;
      this.#unmapUnpinAll();
      this.domains.length = 0;
      this.iovaList = [];
    });
  }

  // ---------------------------------------------------------------- info

  /** vfio_iommu_type1_check_extension with this container's state. */
  checkExtension(ext: number): number {
    return checkExtension(this, ext);
  }

  get enforcesCacheCoherency(): boolean {
    return this.domains.every((d) => d.enforceCacheCoherency);
  }

  // ---------------------------------------------------------------- dirty tracking

  #bitmapAlloc(dma: VfioDma): number {
    const npages = Math.floor(dma.npages / this.#pgsizePages);
    if (npages > DIRTY_BITMAP_PAGES_MAX) return -ERRNO.EINVAL;
    if (this.#faults.shouldFail("kzalloc")) return -ERRNO.ENOMEM;
    dma.bitmap = new Uint8Array(Number(dirtyBitmapBytes(BigInt(npages))) + 8);
    return 0;
  }

  #populateBitmap(dma: VfioDma): void {
    const pp = this.#pgsizePages;
    dma.forEachVpfn((index) => setBit(dma.bitmap!, Math.floor(index / pp)));
  }

  /** VFIO_IOMMU_DIRTY_PAGES_FLAG_START: allocate and prime every bitmap; idempotent. */
  startDirtyTracking(): void {
    this.#withLock(() => {
      if (this.dirtyPageTracking) return;
      const list = [...this.dmas.values()];
      for (let i = 0; i < list.length; i++) {
        const ret = this.#bitmapAlloc(list[i]!);
        if (ret !== 0) {
          for (let j = i - 1; j >= 0; j--) list[j]!.bitmap = null;
          failErrno(ret, "dirty-bitmap-alloc");
        }
        this.#populateBitmap(list[i]!);
      }
      this.dirtyPageTracking = true;
      this.emit("dirtyTrackingChanged", { on: true });
    });
  }

  stopDirtyTracking(): void {
    this.#withLock(() => {
      if (!this.dirtyPageTracking) return;
      this.dirtyPageTracking = false;
      for (const dma of this.dmas.values()) dma.bitmap = null;
      this.emit("dirtyTrackingChanged", { on: false });
    });
  }

  /** The GET_BITMAP body after the ioctl's argument checks (taken under the lock here). */
  getDirtyBitmap(iova: bigint, size: bigint, bitmap: UserBitmap): void {
    this.#withLock(() => {
      const pgsize = this.pgsize;
      if (bitmap.pgsize !== pgsize) fail("EINVAL", "bitmap-pgsize", { pgsize: bitmap.pgsize });
      if ((iova & (pgsize - 1n)) !== 0n) fail("EINVAL", "bitmap-iova-unaligned", { iova });
      if (size === 0n || (size & (pgsize - 1n)) !== 0n) fail("EINVAL", "bitmap-size-bad", { size });
      if (!this.dirtyPageTracking) fail("EINVAL", "bitmap-not-tracking");
      const head = this.#findDmaBytes(iova, 1n);
      if (head !== undefined && addrOfPage(head.iovaPage) !== iova) fail("EINVAL", "bitmap-bisects-mapping", { iova });
      const last = iova + size - 1n;
      const tail = this.#findDmaBytes(last, 0n);
      if (tail !== undefined && addrOfPage(tail.iovaPage + tail.npages) !== iova + size) fail("EINVAL", "bitmap-bisects-mapping", { iova: last });
      for (const dma of this.#dmasFrom(pageOf(iova))) {
        if (addrOfPage(dma.iovaPage) < iova) continue;
        if (addrOfPage(dma.iovaPage) > last) break;
        this.#updateUserBitmap(bitmap.data, dma, iova, pgsize);
        dma.bitmap!.fill(0);
        this.#populateBitmap(dma);
      }
    });
  }

  /**
   * update_user_bitmap: shift the mapping's bits to its place relative to
   * `baseIova`, OR the first u64 word with what the user already has there
   * (adjacent mappings may share a word), and copy whole words out.
   */
  #updateUserBitmap(user: Uint8Array, dma: VfioDma, baseIova: bigint, pgsize: bigint): void {
    const pgshift = BigInt(ffs(pgsize));
    const nbits = Number(addrOfPage(dma.npages) >> pgshift);
    const bitOffset = Number((addrOfPage(dma.iovaPage) - baseIova) >> pgshift);
    const copyOffset = Math.floor(bitOffset / 64);
    const shift = bitOffset % 64;
    if (this.numNonPinnedGroups !== 0 && dma.iommuMapped) setBits(dma.bitmap!, 0, nbits);
    const bytes = Number(dirtyBitmapBytes(BigInt(nbits + shift)));
    const out = new Uint8Array(bytes);
    const src = dma.bitmap!;
    for (let b = 0; b < nbits; b++) if ((src[b >>> 3]! & (1 << (b & 7))) !== 0) setBit(out, b + shift);
    const at = copyOffset * 8;
    if (shift !== 0) {
      if (at + 8 > user.length) fail("EFAULT", "bitmap-copy-from-user");
      for (let k = 0; k < 8; k++) out[k]! |= user[at + k]!;
    }
    if (at + bytes > user.length) fail("EFAULT", "bitmap-copy-to-user", { need: at + bytes, have: user.length });
    user.set(out, at);
    // The kernel shifts dma->bitmap in place before copying; the caller re-populates it.
    if (shift !== 0) {
      src.fill(0);
      for (let b = 0; b < nbits + shift; b++) if ((out[b >>> 3]! & (1 << (b & 7))) !== 0) setBit(src, b);
    }
  }
}

/** VFIO_CHECK_EXTENSION answered by type1, with or without a container (`iommu` NULL). */
export function checkExtension(iommu: Type1Iommu | undefined, ext: number): number {
  switch (ext) {
    case VFIO_TYPE1_IOMMU:
    case VFIO_TYPE1v2_IOMMU:
    case VFIO_UNMAP_ALL:
      return 1;
    case VFIO_UPDATE_VADDR:
      return iommu !== undefined && !iommu.hasEmulated ? 1 : 0;
    case VFIO_DMA_CC_IOMMU:
      return iommu === undefined ? 0 : iommu.enforcesCacheCoherency ? 1 : 0;
    default:
      return 0;
  }
}

export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_DMA_CC_IOMMU = 4;
export const VFIO_UNMAP_ALL = 9;
export const VFIO_UPDATE_VADDR = 10;
