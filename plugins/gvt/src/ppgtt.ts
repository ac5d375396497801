/**
 * Lazy PPGTT shadowing (vendors.md 1.3, 1.5, 1.6; gtt.c).
 *
 * Model. The guest keeps 4-level page tables in its RAM (PML4 -> PDP -> PD ->
 * PT, 512 gen8 entries per page). GVT shadows them on demand: a PPGTT mm per
 * guest root, and one shadow page-table object (an `Spt`) per guest
 * page-table page, found by the guest GFN (the page-track record) or by its
 * shadow id (the `spt_tree`; a shadow page is a GVT-owned host page, not a
 * guest frame, so its "mfn" is a synthetic id here). Shadow entries are typed
 * arrays per Spt: a kind, a value (a DMA page from the vGPU's cache, or a
 * child Spt id) and the 64K-split flag.
 *
 * Shadowing a root (`shadowMm`, at workload submission) walks the guest tables
 * with dmaRw, which pins nothing. Each new Spt write-protects its guest page
 * (`services.protect`) before its entries are read, so no write goes unseen.
 * Leaves are pinned and mapped through the DMA cache:
 * - 4K: one 4K mapping; failure is -ENXIO;
 * - 64K (a PT whose PDE has IPS): always split into 16 4K mappings;
 * - 2M (PDE with PS): one 2M mapping when the GPU has 2M GTT pages and the
 *   512 host frames are contiguous, else a vendor-only sub-table of 512 4K
 *   mappings (all released if one fails);
 * - 1G: -EINVAL ("GVT doesn't support 1GB entry").
 * A directory entry whose guest page already has an Spt takes a reference on
 * it and does not recurse: a table that points at itself (or any loop) ends.
 * A failure anywhere aborts the root: the mm is invalidated.
 *
 * Guest writes to a protected page (`handleGuestWrite`): 8 bytes shadow the
 * new entry first and then release the old (the table stays valid in
 * between); 4 bytes release the old entry, point the slot at scratch and set
 * its post-shadow bit, resolved by `flushPostShadow` before the next workload;
 * a non-present entry points at scratch; other sizes are -EINVAL; writes to
 * the unused slots of a 64K table are ignored.
 *
 * Invariants: an Spt lives while its refcount is positive (one per shadow
 * entry or mm root that points at it); every live Spt with a guest page keeps
 * that page protected; every leaf shadow entry holds one kref of its cache
 * entry. Where the kernel leaks (a failed populate frees the Spt without
 * releasing its entries; `ppgtt_free_all_spt` likewise), this model releases
 * them, so reset and close leave nothing; two kernel quirks can be reproduced
 * with `upstreamQuirks`: a 2M shadow entry is not released when its Spt dies,
 * and rewriting a split 64K entry releases only the first of its 16 pages.
 */
import { ERRNO, type VgpuServices } from "@vgpu-iommu/core";
import type { GvtDmaCache } from "./dma-cache.js";
import { gfnOf } from "./ggtt.js";
import { GEN8_PAGE_PRESENT, GEN8_PDE_IPS_64K, GEN8_PDE_PS, GTT_64K_PTE_STRIDE, GTT_ENTRIES_PER_PAGE, PAGE_SIZE, PAGES_PER_2M, PAGES_PER_64K } from "./gvt-params.js";

/** Shadow entry kinds (the `kind` array of an Spt). */
export const Se = {
  /** Never written: not present. */
  None: 0,
  /** Points at the scratch page or table. */
  Scratch: 1,
  /** A 4K leaf: `val` is a DMA page. */
  Leaf4K: 2,
  /** A whole 2M leaf: `val` is the DMA page of the 2 MiB mapping. */
  Leaf2M: 3,
  /** A directory entry (or a split 2M): `val` is the child Spt's id. */
  Dir: 4,
} as const;

/** Page-table levels. */
export const PML4 = 4;
export const PDP = 3;
export const PD = 2;
export const PT = 1;

export class Spt {
  refcount = 1;
  dead = false;
  /** Entries whose post-shadow bit is set; allocated on the first 4-byte write. */
  postShadow: Uint8Array | undefined;
  onPostList = false;
  readonly kind = new Uint8Array(GTT_ENTRIES_PER_PAGE);
  readonly val = new Float64Array(GTT_ENTRIES_PER_PAGE);
  readonly split64 = new Uint8Array(GTT_ENTRIES_PER_PAGE);

  constructor(
    /** The shadow page's id (its "mfn"). */
    readonly id: number,
    /** The guest page-table page, or -1 for a split-2M sub-table. */
    readonly guestGfn: number,
    readonly level: number,
    /** The guest table uses 64K entries (its PDE had IPS). */
    public ips: boolean,
  ) {}
}

export class PpgttMm {
  shadowed = false;
  root: Spt | undefined;
  /** Workloads currently using it (intel_vgpu_pin_mm). */
  pincount = 0;
  constructor(readonly rootGfn: number) {}
}

export interface PpgttOptions {
  /** HAS_PAGE_SIZES(2M): shadow 2M guest pages with 2M entries when possible. */
  readonly huge2M: boolean;
  /** vgpu_ips_enabled: honour the IPS bit (64K pages). */
  readonly ips64K: boolean;
  /** Reproduce the two upstream leaks described above. */
  readonly upstreamQuirks: boolean;
}

export interface PpgttCounters {
  sptsAllocated: number;
  sptsFreed: number;
  /** 4K leaf mappings made (including the pieces of 64K and split 2M entries). */
  leafMaps: number;
  /** 2M entries shadowed whole. */
  hugeMaps: number;
  /** 2M entries split into 512 4K mappings. */
  splits2M: number;
  /** 64K entries split into 16. */
  splits64K: number;
  /** 1G entries refused. */
  refused1G: number;
  /** Guest page-table writes handled, and those deferred as 4-byte halves. */
  guestWrites: number;
  postShadowed: number;
  /** Spts left by a loop when their mms were destroyed (the kernel's "Why we still has spt not freed?" WARN). */
  orphans: number;
}

type Warn = (site: string, message: string) => void;

export class GvtPpgtt {
  readonly counters: PpgttCounters = { sptsAllocated: 0, sptsFreed: 0, leafMaps: 0, hugeMaps: 0, splits2M: 0, splits64K: 0, refused1G: 0, guestWrites: 0, postShadowed: 0, orphans: 0 };
  readonly mms: PpgttMm[] = [];
  readonly #byGfn = new Map<number, Spt>();
  readonly #byId = new Map<number, Spt>();
  readonly #postList: Spt[] = [];
  readonly #entry = new Uint8Array(8);
  readonly #entryView = new DataView(this.#entry.buffer);
  #nextId = 1;
  readonly #pieces = new Float64Array(PAGES_PER_64K);

  constructor(
    private readonly services: VgpuServices,
    private readonly cache: GvtDmaCache,
    private readonly options: PpgttOptions,
    private readonly warn: Warn,
  ) {}

  /** Live shadow page tables, and the guest pages they protect. */
  get sptCount(): number {
    return this.#byId.size;
  }

  get protectedPages(): number {
    return this.#byGfn.size;
  }

  /** The Spt shadowing guest page `gfn`, if any. */
  sptOfGfn(gfn: number): Spt | undefined {
    return this.#byGfn.get(gfn);
  }

  sptOfId(id: number): Spt | undefined {
    return this.#byId.get(id);
  }

  /** intel_vgpu_get_ppgtt_mm without the shadowing: the mm for a root, made if needed. */
  findOrCreateMm(rootGfn: number): { mm: PpgttMm; created: boolean } {
    const found = this.mms.find((m) => m.rootGfn === rootGfn);
    if (found !== undefined) return { mm: found, created: false };
    const mm = new PpgttMm(rootGfn);
    this.mms.push(mm);
    return { mm, created: true };
  }

  /** shadow_ppgtt_mm: 0 or a negative errno; on failure the mm is left invalidated. */
  shadowMm(mm: PpgttMm): number {
    if (mm.shadowed) return 0;
    if (!this.cache.attached) return -ERRNO.EINVAL;
    mm.shadowed = true;
    // An L4 root entry is present when non-zero.
    if (mm.rootGfn === 0) return 0;
    const s = this.#populateByGuestEntry(PML4, mm.rootGfn, false);
    if (typeof s === "number") {
      this.invalidateMm(mm);
      return s;
    }
    mm.root = s;
    return 0;
  }

  /** invalidate_ppgtt_mm: drops the shadow; the mm object stays. */
  invalidateMm(mm: PpgttMm): void {
    if (!mm.shadowed) return;
    const root = mm.root;
    mm.root = undefined;
    mm.shadowed = false;
    if (root !== undefined) this.#put(root);
  }

  destroyMm(mm: PpgttMm): void {
    this.invalidateMm(mm);
    const at = this.mms.indexOf(mm);
    if (at >= 0) this.mms.splice(at, 1);
  }

  /** intel_vgpu_invalidate_ppgtt: every mm's shadow goes, the mms stay. */
  invalidateAll(): void {
    for (const mm of this.mms) this.invalidateMm(mm);
  }

  /**
   * intel_vgpu_destroy_all_ppgtt_mm; then Spts kept alive only by a loop are
   * reported (WARN) and freed, their entries released.
   */
  destroyAll(): void {
    for (const mm of [...this.mms]) this.destroyMm(mm);
    if (this.#byId.size > 0) {
      this.counters.orphans += this.#byId.size;
      this.warn("intel_vgpu_destroy_all_ppgtt_mm", "Why we still has spt not freed?");
      for (const s of [...this.#byId.values()]) if (!s.dead) this.#destroy(s, false);
    }
    this.#postList.length = 0;
  }

  /**
   * The write-protection handler for a guest page-table write (already
   * emulated into guest memory): 0 or a negative errno.
   */
  handleGuestWrite(gpa: bigint, bytes: number): number {
    const gfn = Number(gpa >> 12n);
    const spt = this.#byGfn.get(gfn);
    if (spt === undefined) return 0;
    if (bytes !== 4 && bytes !== 8) return -ERRNO.EINVAL;
    const index = Number(gpa & 0xfffn) >> 3;
    if (spt.level === PT && spt.ips && index % GTT_64K_PTE_STRIDE !== 0) return 0;
    this.counters.guestWrites++;
    if (bytes === 8) {
      const r = this.#readEntry(spt, index);
      if (r < 0) return r;
      return this.#writePageTable(spt, index, this.#lo, this.#hi);
    }
    if (spt.postShadow === undefined || spt.postShadow[index] === 0) {
      const r = this.#removeEntry(spt, index, spt.kind[index]!, spt.val[index]!);
      if (r < 0) return r;
      this.#setScratch(spt, index);
    }
    (spt.postShadow ??= new Uint8Array(GTT_ENTRIES_PER_PAGE))[index] = 1;
    if (!spt.onPostList) {
      spt.onPostList = true;
      this.#postList.push(spt);
    }
    this.counters.postShadowed++;
    return 0;
  }

  /** intel_vgpu_flush_post_shadow: re-reads and shadows every entry left by a 4-byte write. */
  flushPostShadow(): number {
    while (this.#postList.length > 0) {
      const spt = this.#postList[0]!;
      const bits = spt.postShadow!;
      for (let i = 0; i < GTT_ENTRIES_PER_PAGE; i++) {
        if (bits[i] === 0) continue;
        if (spt.dead) break;
        let r = this.#readEntry(spt, i);
        if (r >= 0) r = this.#writePageTable(spt, i, this.#lo, this.#hi);
        if (r < 0) return r;
        bits[i] = 0;
      }
      spt.onPostList = false;
      this.#postList.shift();
    }
    return 0;
  }

  /** Pending post-shadow entries. */
  pendingPostShadow(): number {
    let n = 0;
    for (const s of this.#postList) for (let i = 0; i < GTT_ENTRIES_PER_PAGE; i++) n += s.postShadow![i]!;
    return n;
  }

  /** Whether a guest page is a shadowed page table (its writes are ours to handle). */
  tracks(gfn: number): boolean {
    return this.#byGfn.has(gfn);
  }

  /** Shadowed page-table pages in [firstGfn, firstGfn + npages). */
  trackedIn(firstGfn: number, npages: number): number {
    let n = 0;
    for (const gfn of this.#byGfn.keys()) if (gfn >= firstGfn && gfn < firstGfn + npages) n++;
    return n;
  }

  /** Failsafe: the handler only drops write protection of the page. */
  unprotect(gfn: number): void {
    if (this.#byGfn.has(gfn)) this.services.unprotect(gfn);
  }

  /** The DMA pages of every leaf shadow entry, for the isolation check. */
  collectLeafDma(out: number[]): void {
    for (const s of this.#byId.values()) {
      for (let i = 0; i < GTT_ENTRIES_PER_PAGE; i++) {
        const k = s.kind[i];
        if (k === Se.Leaf4K) out.push(s.val[i]!);
        else if (k === Se.Leaf2M) for (let p = 0; p < PAGES_PER_2M; p++) out.push(s.val[i]! + p);
      }
    }
  }

  /** Leaf shadow entries (a whole 2M entry counts one). */
  leafEntries(): number {
    let n = 0;
    for (const s of this.#byId.values()) for (let i = 0; i < GTT_ENTRIES_PER_PAGE; i++) if (s.kind[i] === Se.Leaf4K || s.kind[i] === Se.Leaf2M) n++;
    return n;
  }

  /**
   * gma -> gpa through the guest's own tables of a shadowed mm (intel_vgpu_gma_to_gpa
   * walks the shadow to find each Spt and reads the guest entry): the guest
   * physical address, or -1 when the address is not mapped.
   */
  gmaToGpa(mm: PpgttMm, gma: number): number {
    let spt = mm.root;
    if (spt === undefined) return -1;
    for (let level = PML4; ; level--) {
      const index = Math.floor(gma / 2 ** (12 + 9 * (level - 1))) % GTT_ENTRIES_PER_PAGE;
      if (this.#readEntry(spt, index) < 0) return -1;
      const lo = this.#lo;
      const hi = this.#hi;
      if ((lo & GEN8_PAGE_PRESENT) === 0) return -1;
      const leafSize = level === PT ? PAGE_SIZE : (level === PD || level === PDP) && (lo & GEN8_PDE_PS) !== 0 ? 2 ** (12 + 9 * (level - 1)) : 0;
      if (leafSize !== 0) {
        const frame = gfnOf(lo, hi) * PAGE_SIZE;
        return frame - (frame % leafSize) + (gma % leafSize);
      }
      if (spt.kind[index] !== Se.Dir) return -1;
      const next = this.#byId.get(spt.val[index]!);
      if (next === undefined) return -1;
      spt = next;
    }
  }

  // --- populate -----------------------------------------------------------

  /** ppgtt_populate_spt_by_guest_entry: the Spt for a directory entry, or a negative errno. */
  #populateByGuestEntry(level: number, gfn: number, ips: boolean): Spt | number {
    const found = this.#byGfn.get(gfn);
    if (found !== undefined) {
      found.refcount++;
      if (found.ips !== ips) {
        found.ips = ips;
        this.#releaseEntries(found, false);
        const r = this.#populate(found);
        if (r < 0) {
          this.#put(found);
          return r;
        }
      }
      return found;
    }
    const spt = this.#alloc(level, gfn, ips);
    const r = this.services.protect(gfn);
    if (r < 0) {
      this.#free(spt);
      return r;
    }
    const p = this.#populate(spt);
    if (p < 0) {
      this.#destroy(spt, false);
      return p;
    }
    return spt;
  }

  /** ppgtt_populate_spt: shadows every present guest entry of `spt`. */
  #populate(spt: Spt): number {
    const page = new Uint8Array(PAGE_SIZE);
    try {
      this.services.dmaRw(BigInt(spt.guestGfn) * 4096n, page, false);
    } catch (_e) {
      // for_each_present_guest_entry skips entries it cannot read.
      return 0;
    }
    const view = new DataView(page.buffer);
    const step = spt.level === PT && spt.ips ? GTT_64K_PTE_STRIDE : 1;
    for (let i = 0; i < GTT_ENTRIES_PER_PAGE; i += step) {
      const lo = view.getUint32(i * 8, true);
      if ((lo & GEN8_PAGE_PRESENT) === 0) continue;
      const hi = view.getUint32(i * 8 + 4, true);
      const r = this.#addEntry(spt, i, lo, hi);
      if (r < 0) return r;
      if (spt.dead) return -ERRNO.ENXIO;
    }
    return 0;
  }

  /** ppgtt_handle_guest_entry_add: a present guest entry into the shadow slot. */
  #addEntry(spt: Spt, index: number, lo: number, hi: number): number {
    const gfn = gfnOf(lo, hi);
    if (spt.level === PT) return spt.ips ? this.#split64K(spt, index, gfn) : this.#leaf4K(spt, index, gfn);
    if (spt.level === PD && (lo & GEN8_PDE_PS) !== 0) return this.#leaf2M(spt, index, gfn - (gfn % PAGES_PER_2M));
    if (spt.level === PDP && (lo & GEN8_PDE_PS) !== 0) {
      this.counters.refused1G++;
      return -ERRNO.EINVAL;
    }
    const ips = spt.level === PD && this.options.ips64K && (lo & GEN8_PDE_IPS_64K) !== 0;
    const child = this.#populateByGuestEntry(spt.level - 1, gfn, ips);
    if (typeof child === "number") return child;
    spt.kind[index] = Se.Dir;
    spt.val[index] = child.id;
    spt.split64[index] = 0;
    return 0;
  }

  #leaf4K(spt: Spt, index: number, gfn: number): number {
    const r = this.cache.map(gfn, 1);
    if (r < 0) return -ERRNO.ENXIO;
    this.counters.leafMaps++;
    spt.kind[index] = Se.Leaf4K;
    spt.val[index] = r;
    spt.split64[index] = 0;
    return 0;
  }

  /**
   * split_64KB_gtt_entry: 16 4K shadow entries. The kernel writes each piece as
   * it is mapped and leaves them on failure; here a failure releases the
   * pieces mapped so far and leaves the 16 slots as they were.
   */
  #split64K(spt: Spt, index: number, gfn: number): number {
    const first = gfn - (gfn % PAGES_PER_64K);
    const pieces = this.#pieces;
    for (let i = 0; i < PAGES_PER_64K; i++) {
      const r = this.cache.map(first + i, 1);
      if (r < 0) {
        for (let j = 0; j < i; j++) this.cache.unmapByDma(pieces[j]!);
        return r;
      }
      pieces[i] = r;
    }
    for (let i = 0; i < PAGES_PER_64K; i++) {
      spt.kind[index + i] = Se.Leaf4K;
      spt.val[index + i] = pieces[i]!;
      spt.split64[index + i] = 1;
    }
    this.counters.leafMaps += PAGES_PER_64K;
    this.counters.splits64K++;
    return 0;
  }

  #leaf2M(spt: Spt, index: number, gfn: number): number {
    if (this.options.huge2M) {
      const r = this.cache.map(gfn, PAGES_PER_2M);
      if (r >= 0) {
        this.counters.hugeMaps++;
        spt.kind[index] = Se.Leaf2M;
        spt.val[index] = r;
        spt.split64[index] = 0;
        return 0;
      }
    }
    return this.#split2M(spt, index, gfn);
  }

  /** split_2MB_gtt_entry: a vendor-only PT of 512 4K entries; a failure releases what was mapped. */
  #split2M(spt: Spt, index: number, gfn: number): number {
    const sub = this.#alloc(PT, -1, false);
    for (let i = 0; i < PAGES_PER_2M; i++) {
      const r = this.cache.map(gfn + i, 1);
      if (r < 0) {
        this.#destroy(sub, false);
        return r;
      }
      this.counters.leafMaps++;
      sub.kind[i] = Se.Leaf4K;
      sub.val[i] = r;
    }
    this.counters.splits2M++;
    spt.kind[index] = Se.Dir;
    spt.val[index] = sub.id;
    spt.split64[index] = 0;
    return 0;
  }

  // --- guest writes -------------------------------------------------------

  /** ppgtt_handle_guest_write_page_table: add the new entry, then remove the old. */
  #writePageTable(spt: Spt, index: number, lo: number, hi: number): number {
    const oldKind = spt.kind[index]!;
    const oldVal = spt.val[index]!;
    // In a 64K table the entry owns 16 slots; the add below overwrites the 15
    // other pieces of the old split entry, released after it (the kernel
    // releases only the first: `upstreamQuirks`).
    const is64 = spt.level === PT && spt.ips;
    let others: Float64Array | undefined;
    if (is64) {
      others = new Float64Array(PAGES_PER_64K - 1).fill(-1);
      for (let i = 1; i < PAGES_PER_64K; i++) if (spt.kind[index + i] === Se.Leaf4K && spt.split64[index + i] === 1) others[i - 1] = spt.val[index + i]!;
    }
    const present = (lo & GEN8_PAGE_PRESENT) !== 0;
    if (present) {
      const r = this.#addEntry(spt, index, lo, hi);
      if (r < 0) return r;
    }
    const r = this.#removeEntry(spt, index, oldKind, oldVal);
    if (r < 0) return r;
    if (others !== undefined && !this.options.upstreamQuirks) for (const d of others) if (d >= 0) this.cache.unmapByDma(d);
    if (!present) {
      if (is64) for (let i = 0; i < PAGES_PER_64K; i++) this.#setScratch(spt, index + i);
      else this.#setScratch(spt, index);
    }
    return 0;
  }

  /** ppgtt_handle_guest_entry_removal for an old shadow entry. */
  #removeEntry(_spt: Spt, _index: number, kind: number, val: number): number {
    if (kind === Se.Leaf4K || kind === Se.Leaf2M) this.cache.unmapByDma(val);
    else if (kind === Se.Dir) {
      const child = this.#byId.get(val);
      if (child === undefined) return -ERRNO.ENXIO;
      this.#put(child);
    }
    return 0;
  }

  #setScratch(spt: Spt, index: number): void {
    spt.kind[index] = Se.Scratch;
    spt.val[index] = 0;
    spt.split64[index] = 0;
  }

  // --- lifetime -----------------------------------------------------------

  #alloc(level: number, gfn: number, ips: boolean): Spt {
    const spt = new Spt(this.#nextId++, gfn, level, ips);
    this.#byId.set(spt.id, spt);
    if (gfn >= 0) this.#byGfn.set(gfn, spt);
    this.counters.sptsAllocated++;
    return spt;
  }

  /** ppgtt_invalidate_spt: drop a reference; at zero the Spt is destroyed. */
  #put(spt: Spt): void {
    if (spt.dead || --spt.refcount > 0) return;
    this.#destroy(spt, this.options.upstreamQuirks);
  }

  /**
   * Frees `spt` whatever its refcount, then releases its entries. It leaves
   * the indexes first, so a loop back to it finds nothing and ends.
   */
  #destroy(spt: Spt, skip2M: boolean): void {
    this.#free(spt);
    this.#releaseEntries(spt, skip2M);
  }

  /** Releases every present shadow entry of `spt`: leaves are unmapped, children put. `skip2M`: the upstream leak. */
  #releaseEntries(spt: Spt, skip2M: boolean): void {
    for (let i = 0; i < GTT_ENTRIES_PER_PAGE; i++) {
      const k = spt.kind[i];
      if (k === Se.None || k === Se.Scratch) continue;
      const v = spt.val[i]!;
      spt.kind[i] = Se.None;
      spt.val[i] = 0;
      spt.split64[i] = 0;
      if (k === Se.Leaf4K || (k === Se.Leaf2M && !skip2M)) this.cache.unmapByDma(v);
      else if (k === Se.Dir) {
        const child = this.#byId.get(v);
        if (child !== undefined) this.#put(child);
      }
    }
  }

  /** ppgtt_free_spt: out of both indexes, guest page unprotected, off the post-shadow list. */
  #free(spt: Spt): void {
    spt.dead = true;
    this.#byId.delete(spt.id);
    if (spt.guestGfn >= 0 && this.#byGfn.get(spt.guestGfn) === spt) {
      this.#byGfn.delete(spt.guestGfn);
      this.services.unprotect(spt.guestGfn);
    }
    if (spt.onPostList) {
      spt.onPostList = false;
      const at = this.#postList.indexOf(spt);
      if (at >= 0) this.#postList.splice(at, 1);
    }
    this.counters.sptsFreed++;
  }

  #lo = 0;
  #hi = 0;

  /** Reads guest entry `index` of `spt` into #lo/#hi: 0, or -EFAULT. */
  #readEntry(spt: Spt, index: number): number {
    if (spt.guestGfn < 0) return -ERRNO.EFAULT;
    try {
      this.services.dmaRw(BigInt(spt.guestGfn) * 4096n + BigInt(index * 8), this.#entry, false);
    } catch (_e) {
      return -ERRNO.EFAULT;
    }
    this.#lo = this.#entryView.getUint32(0, true);
    this.#hi = this.#entryView.getUint32(4, true);
    return 0;
  }
}
