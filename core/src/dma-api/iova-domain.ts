/**
 * The IOVA allocator of the DMA API: `struct iova_domain` of
 * drivers/iommu/iova.c (mainline 6.x: the rbtree allocator with cached nodes,
 * and the per-CPU rcache whose depot is an unbounded list trimmed by delayed
 * work).
 *
 * Model. Allocated ranges `[pfnLo, pfnHi]` (in granules) are the nodes of an
 * AVL tree keyed by `pfnLo`, stored in typed arrays (no object per range), with
 * parent links. As in the kernel an anchor node sits above every usable page
 * (IOVA_ANCHOR, ~0UL in the kernel, 2^53 - 1 here). Each node owns the free gap
 * below it, `[prev.pfnHi + 1, pfnLo - 1]` (from 0 for the lowest node), and the
 * tree is augmented with, per subtree, the longest gap and the best "aligned
 * capacity" of its gaps, so a top-down first-fit search is O(log n). The bottom
 * gap (from pfn 0, below the lowest range) is left out of the summaries and
 * tested last: top-down allocation carves it at its top once the space above
 * is full, and as the largest gap its every change would climb to the root.
 * A new range is linked as a leaf next to the node whose gap it takes, and an
 * erase splices its node out; both then rebalance bottom-up and stop at the
 * first node, above the one whose gap changed, that keeps its height and
 * summary. Lookups by pfn descend from the root, except that free_iova of a
 * range held by a cached node (typically the latest allocation) takes it directly.
 *
 * `alloc_iova` keeps the kernel's cached-node state machine exactly:
 * `cached_node` / `cached32_node` (where the next top-down search starts,
 * chosen by whether the limit is above `dma_32bit_pfn`), updated on insert as
 * `__cached_rbnode_insert_update` and on free as `__cached_rbnode_delete_update`
 * (via rb_next of the freed node); the one retry from the limit (searching
 * `(cached.pfn_hi, limit)`) when the first pass fails; and the
 * `max32_alloc_size` fast-fail hint, set to the failing size on every failed
 * walk and reset to `dma_32bit_pfn` by any free that starts below 4 GiB.
 *
 * Why the augmented search returns the walk's address. The walk of
 * `__alloc_and_insert_iova_range` starts at node C with `high = min(limit,
 * C.pfn_lo)` and steps to rb_prev while the candidate `new = (high - size) &
 * align_mask` (with `high` lowered to each visited `pfn_lo`) is `<= prev.pfn_hi`
 * and `>= low`. For the gap below each visited node the candidate is the
 * highest aligned start whose end is at most the gap's top (clipped to the
 * limit); it fits iff it lies above the node below. Gaps are visited in
 * descending order and their candidates decrease, so the walk stops at the
 * highest gap (below `high`) that has an aligned fit, and succeeds iff that
 * gap's candidate is `>= low`; it fails when `high < size` or when a candidate
 * drops below `low` first, which can only happen if every lower gap's candidate
 * is below `low` too. Hence walk(C, limit, low) = max{x aligned : x >= low,
 * x + size <= min(limit, C.pfn_lo), [x, x + size) free}, or failure. Nodes
 * above `high` are irrelevant, nodes between C and the limit are skipped with
 * `high = limit` (the same set of gaps), and iova_find_limit's start for the
 * retry yields the same maximum. `#search(upper, low, size, aligned, C)`
 * computes exactly that maximum: the highest aligned x with x + size <= upper
 * is taken at once when it lies in C's own gap (the common case, O(1));
 * otherwise the gap straddling `upper` is tested directly, then the rightmost
 * gap wholly below it that fits, found through the augmentation, and last the
 * bottom gap.
 *
 * Aligned capacity of a gap [a, b]: k = the largest order such that an aligned
 * 2^k block fits in it, and e = b + 1 - m where m is the only multiple of
 * 2^(k+1) in the gap (0 if none). A size-aligned request of `size` (order
 * o = fls(size - 1), so 2^(o-1) < size <= 2^o) fits in the gap iff k >= o, or
 * k = o - 1 and e >= size: with k >= o an aligned 2^o block hosts it; with
 * k <= o - 2 any fit would contain an aligned 2^(k+1) block. The pair (k, e)
 * is compared lexicographically, so its subtree maximum prunes exactly. An
 * unaligned request fits iff the gap length is >= size.
 *
 * rcache: 6 size classes (1..32 granules), per CPU a `loaded` and a `prev`
 * magazine of IOVA_MAG_SIZE = 127 pfns, and per class a depot list of full
 * magazines (LIFO). The delayed work that trims a depot every IOVA_DEPOT_DELAY
 * (100 ms) is `trimDepot()`: one call runs each pending work item once, which
 * frees one magazine while the depot holds more than the online CPU count and
 * then reschedules itself. `cpus` and `cpu` select the per-CPU caches.
 *
 * Invariants (assertInvariants): allocated ranges never overlap and every
 * gap and subtree summary matches the ranges (linux-vfio.md invariant 26); an
 * rcache entry is the pfn_lo of a live range whose roundup_pow_of_two(length)
 * is its size class (invariant 27); the cached nodes are live.
 */
import { KernelLog } from "../host/kernel-log.js";
import type { FaultInjector } from "../host/fault-injector.js";

export const IOVA_MAG_SIZE = 127;
/** log2 of the largest cached range size, plus one: classes 1, 2, 4, 8, 16, 32 granules. */
export const IOVA_RANGE_CACHE_MAX_SIZE = 6;
/** IOVA_ANCHOR: stands for ~0UL; above every page of a 64-bit space of 4 KiB granules. */
export const IOVA_ANCHOR = Number.MAX_SAFE_INTEGER;

const NIL = -1;
const TWO_32 = 0x1_0000_0000;
const MAX_DEPTH = 128;
/** POW2[k] = 2^k, exact up to 2^63. */
const POW2 = Float64Array.from({ length: 64 }, (_, k) => 2 ** k);

/** floor(log2(x)) for an integer 1 <= x < 2^53. */
export function floorLog2(x: number): number {
  return x < TWO_32 ? 31 - Math.clz32(x) : 32 + floorLog2(Math.floor(x / TWO_32));
}

/** fls_long: 1-based index of the highest set bit, 0 for 0. */
export const fls = (x: number): number => (x === 0 ? 0 : floorLog2(x) + 1);

/** order_base_2(n): ceil(log2(n)), 0 for n <= 1. */
export const orderBase2 = (n: number): number => (n <= 1 ? 0 : fls(n - 1));

/** roundup_pow_of_two(n). */
export const roundupPowOfTwo = (n: number): number => 2 ** orderBase2(n);

export interface IovaRange {
  readonly pfnLo: number;
  readonly pfnHi: number;
}

/** struct iova_magazine: a stack of up to IOVA_MAG_SIZE cached pfns. */
class Magazine {
  size = 0;
  readonly pfns = new Float64Array(IOVA_MAG_SIZE);
}

export interface IovaDomainOptions {
  /** Online CPUs, each with its own magazines; 1 when omitted. */
  readonly cpus?: number;
  /** `dma_32bit_pfn`; `1 << (32 - shift)` when omitted (2016-era domains passed it). */
  readonly dma32BitPfn?: number;
  /** Where WARNs go; a private log when omitted. */
  readonly log?: KernelLog;
  /** Fails `alloc_iova_mem` and GFP_ATOMIC magazine allocations at site "kzalloc". */
  readonly faults?: FaultInjector;
}

export class IovaDomain {
  readonly granule: number;
  readonly shift: number;
  readonly startPfn: number;
  readonly dma32BitPfn: number;
  readonly cpus: number;
  /** Largest pfn reserve_iova accepts: ULLONG_MAX >> shift. */
  readonly maxPfn: number;
  /** `max32_alloc_size`: requests this large or larger below 4 GiB fail at once. */
  max32AllocSize: number;

  readonly #log: KernelLog;
  readonly #faults: FaultInjector | undefined;
  #cpu = 0;

  // Tree of allocated ranges, one slot per node.
  #capacity = 0;
  #lo = new Float64Array(0);
  #hi = new Float64Array(0);
  #gapLo = new Float64Array(0);
  #left = new Int32Array(0);
  #right = new Int32Array(0);
  #parent = new Int32Array(0);
  #height = new Int8Array(0);
  #ownK = new Int8Array(0);
  #ownE = new Float64Array(0);
  #ownLen = new Float64Array(0);
  #aggK = new Int8Array(0);
  #aggE = new Float64Array(0);
  #aggLen = new Float64Array(0);
  #freeSlots = new Int32Array(0);
  #freeCount = 0;
  #used = 0;
  #root = NIL;
  #nodes = 0;
  /** Set by #search: the node whose gap holds the range it found. */
  #gapOwner = NIL;
  readonly #path = new Int32Array(MAX_DEPTH * 2);
  readonly #anchor: number;
  #cached: number;
  #cached32: number;

  // rcache: [class][cpu] magazines, and a depot per class.
  readonly #loaded: Magazine[][] = [];
  readonly #prev: Magazine[][] = [];
  readonly #depot: Magazine[][] = [];
  readonly #depotWork: boolean[] = [];

  /** init_iova_domain(iovad, granule, start_pfn), plus iova_domain_init_rcaches for `cpus` CPUs. */
  constructor(granule: number, startPfn: number, options: IovaDomainOptions = {}) {
    if (!(granule >= 2048 && granule <= 4096 && (granule & (granule - 1)) === 0)) {
      // init_iova_domain BUG_ONs above PAGE_SIZE or a non-power of two; below 2 KiB pfns would pass 2^53.
      throw new RangeError(`IOVA granule ${granule} must be a power of two in [2048, 4096]`);
    }
    this.granule = granule;
    this.shift = floorLog2(granule);
    this.startPfn = startPfn;
    this.dma32BitPfn = options.dma32BitPfn ?? 2 ** (32 - this.shift);
    this.max32AllocSize = this.dma32BitPfn;
    this.maxPfn = 2 ** (64 - this.shift) - 1;
    this.cpus = options.cpus ?? 1;
    if (!(Number.isInteger(this.cpus) && this.cpus >= 1)) throw new RangeError(`cpus must be a positive integer, got ${this.cpus}`);
    this.#log = options.log ?? new KernelLog();
    this.#faults = options.faults;
    this.#grow(64);
    this.#anchor = this.#newNode(IOVA_ANCHOR, IOVA_ANCHOR, 0);
    this.#root = this.#anchor;
    this.#cached = this.#anchor;
    this.#cached32 = this.#anchor;
    for (let c = 0; c < IOVA_RANGE_CACHE_MAX_SIZE; c++) {
      const loaded: Magazine[] = [];
      const prev: Magazine[] = [];
      for (let cpu = 0; cpu < this.cpus; cpu++) {
        loaded.push(new Magazine());
        prev.push(new Magazine());
      }
      this.#loaded.push(loaded);
      this.#prev.push(prev);
      this.#depot.push([]);
      this.#depotWork.push(false);
    }
  }

  /** The CPU the next rcache operation runs on (raw_cpu_ptr). */
  get cpu(): number {
    return this.#cpu;
  }

  set cpu(cpu: number) {
    if (!(Number.isInteger(cpu) && cpu >= 0 && cpu < this.cpus)) throw new RangeError(`cpu ${cpu} is not online (0..${this.cpus - 1})`);
    this.#cpu = cpu;
  }

  /** Allocated ranges, reserved ones included, the anchor excluded. */
  get rangeCount(): number {
    return this.#nodes - 1;
  }

  // ---------------------------------------------------------------- alloc_iova

  /**
   * alloc_iova: `size` granules at or below `limitPfn` (inclusive), searched
   * top-down; with `sizeAligned`, pfn_lo is aligned to roundup_pow_of_two(size).
   * Returns pfn_lo, or -1 when no range fits (NULL in the kernel).
   */
  allocIova(size: number, limitPfn: number, sizeAligned: boolean): number {
    if (!(Number.isInteger(size) && size >= 1)) throw new RangeError(`IOVA size ${size} must be a positive integer`);
    if (this.#faults?.shouldFail("kzalloc")) return -1; // alloc_iova_mem
    const limit = limitPfn + 1;
    if (limit <= this.dma32BitPfn && size >= this.max32AllocSize) return -1; // iova32_full
    const start = limit <= this.dma32BitPfn ? this.#cached32 : this.#cached;
    const retryPfn = this.#hi[start]!;
    let pfn = this.#search(Math.min(limit, this.#lo[start]!), this.startPfn, size, sizeAligned, start);
    if (pfn < 0 && retryPfn < limit) pfn = this.#search(limit, retryPfn + 1, size, sizeAligned, start);
    if (pfn < 0) {
      this.max32AllocSize = size;
      return -1;
    }
    const node = this.#insertInGap(this.#gapOwner, pfn, pfn + size - 1);
    // __cached_rbnode_insert_update
    if (this.#hi[node]! < this.dma32BitPfn) this.#cached32 = node;
    else this.#cached = node;
    return pfn;
  }

  /** find_iova: the allocated range containing `pfn`. */
  findIova(pfn: number): IovaRange | undefined {
    const node = this.#findContaining(pfn);
    return node === NIL || node === this.#anchor ? undefined : { pfnLo: this.#lo[node]!, pfnHi: this.#hi[node]! };
  }

  /** free_iova: frees the range containing `pfn`; nothing when there is none. */
  freeIova(pfn: number): void {
    // Freeing the latest allocation above or below 4 GiB (a cached node) needs no lookup.
    const node = this.#contains(this.#cached, pfn) ? this.#cached : this.#contains(this.#cached32, pfn) ? this.#cached32 : this.#findContaining(pfn);
    if (node !== NIL && node !== this.#anchor) this.#privateFree(node);
  }

  /**
   * reserve_iova: keeps [pfnLo, pfnHi] out of allocation. Overlapping ranges are
   * extended down in place and the remainder above them inserted, as the kernel
   * does; returns the range that covers pfnHi, or undefined (a WARN for pfns
   * beyond ULLONG_MAX >> shift, or an allocation failure).
   */
  reserveIova(pfnLo: number, pfnHi: number): IovaRange | undefined {
    if (this.#log.warnOn(pfnLo > this.maxPfn || pfnHi > this.maxPfn, "reserve_iova", "WARN_ON((pfn_hi | pfn_lo) > (ULLONG_MAX >> iova_shift(iovad)))", { pfnLo, pfnHi })) return undefined;
    let lo = pfnLo;
    for (let v = this.#firstHiAtLeast(lo); v !== NIL && v !== this.#anchor && this.#lo[v]! <= pfnHi && this.#hi[v]! >= lo; v = this.#successor(v)) {
      // __adjust_overlap_range
      if (lo < this.#lo[v]!) {
        this.#lo[v] = lo;
        this.#computeOwn(v);
        for (let u = v; u !== NIL; u = this.#parent[u]!) this.#pull(u);
      }
      if (pfnHi > this.#hi[v]!) lo = this.#hi[v]! + 1;
      if (lo >= this.#lo[v]! && pfnHi <= this.#hi[v]!) return { pfnLo: this.#lo[v]!, pfnHi: this.#hi[v]! };
    }
    if (this.#faults?.shouldFail("kzalloc")) return undefined;
    this.#insertInGap(this.#firstLoAbove(pfnHi), lo, pfnHi);
    return { pfnLo: lo, pfnHi };
  }

  // ---------------------------------------------------------------- fast path

  /**
   * alloc_iova_fast: the rcache first, then alloc_iova(size_aligned); on failure
   * with `flushRcache`, frees every CPU's and the depot's cached IOVAs and
   * retries once. Sizes below 32 granules are rounded up to a power of two.
   * Returns pfn_lo, or 0 on failure.
   */
  allocIovaFast(size: number, limitPfn: number, flushRcache: boolean): number {
    if (size < 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)) size = roundupPowOfTwo(size);
    const cached = this.#rcacheGet(size, limitPfn + 1);
    if (cached !== 0) return cached;
    for (;;) {
      const pfn = this.allocIova(size, limitPfn, true);
      if (pfn >= 0) return pfn;
      if (!flushRcache) return 0;
      flushRcache = false;
      for (let cpu = 0; cpu < this.cpus; cpu++) this.freeCpuCachedIovas(cpu);
      this.freeGlobalCachedIovas();
    }
  }

  /** free_iova_fast: into the current CPU's rcache, else free_iova. */
  freeIovaFast(pfn: number, size: number): void {
    if (this.#rcacheInsert(pfn, size)) return;
    this.freeIova(pfn);
  }

  /** free_cpu_cached_iovas: returns a CPU's magazines' IOVAs to the tree. */
  freeCpuCachedIovas(cpu: number): void {
    for (let c = 0; c < IOVA_RANGE_CACHE_MAX_SIZE; c++) {
      this.#magazineFreePfns(this.#loaded[c]![cpu]!);
      this.#magazineFreePfns(this.#prev[c]![cpu]!);
    }
  }

  /** free_global_cached_iovas: empties every depot. */
  freeGlobalCachedIovas(): void {
    for (const depot of this.#depot) {
      for (let mag = depot.pop(); mag !== undefined; mag = depot.pop()) this.#magazineFreePfns(mag);
    }
  }

  /**
   * One run of each pending iova_depot_work_func (the 100 ms delayed work):
   * frees one magazine of a depot that holds more than `cpus`, and reschedules
   * itself when it did. Returns how many magazines it freed.
   */
  trimDepot(): number {
    let freed = 0;
    for (let c = 0; c < IOVA_RANGE_CACHE_MAX_SIZE; c++) {
      if (!this.#depotWork[c]) continue;
      this.#depotWork[c] = false;
      const depot = this.#depot[c]!;
      if (depot.length > this.cpus) {
        this.#magazineFreePfns(depot.pop()!);
        freed++;
        this.#depotWork[c] = true;
      }
    }
    return freed;
  }

  /** Full magazines in the depot of size class `c`. */
  depotSize(c: number): number {
    return this.#depot[c]!.length;
  }

  /** Whether class `c`'s depot work is scheduled. */
  depotWorkPending(c: number): boolean {
    return this.#depotWork[c]!;
  }

  /** Fill of `cpu`'s loaded and prev magazines of class `c`. */
  magazineFill(c: number, cpu: number): { readonly loaded: number; readonly prev: number } {
    return { loaded: this.#loaded[c]![cpu]!.size, prev: this.#prev[c]![cpu]!.size };
  }

  /** IOVAs held by every rcache (they stay allocated in the tree). */
  get cachedIovas(): number {
    let n = 0;
    for (let c = 0; c < IOVA_RANGE_CACHE_MAX_SIZE; c++) {
      for (let cpu = 0; cpu < this.cpus; cpu++) n += this.#loaded[c]![cpu]!.size + this.#prev[c]![cpu]!.size;
      n += this.#depot[c]!.length * IOVA_MAG_SIZE;
    }
    return n;
  }

  /** `cached_node`, as a range (the anchor is [IOVA_ANCHOR, IOVA_ANCHOR]). */
  get cachedNode(): IovaRange {
    return { pfnLo: this.#lo[this.#cached]!, pfnHi: this.#hi[this.#cached]! };
  }

  /** `cached32_node`, as a range. */
  get cached32Node(): IovaRange {
    return { pfnLo: this.#lo[this.#cached32]!, pfnHi: this.#hi[this.#cached32]! };
  }

  /** Calls `fn` for every allocated range in ascending order (the anchor excluded). */
  forEachRange(fn: (pfnLo: number, pfnHi: number) => void): void {
    const stack = this.#path;
    let n = 0;
    let v = this.#root;
    while (v !== NIL || n > 0) {
      while (v !== NIL) {
        stack[n++] = v;
        v = this.#left[v]!;
      }
      v = stack[--n]!;
      if (v !== this.#anchor) fn(this.#lo[v]!, this.#hi[v]!);
      v = this.#right[v]!;
    }
  }

  /** put_iova_domain: drops every range and cached IOVA. */
  destroy(): void {
    for (let c = 0; c < IOVA_RANGE_CACHE_MAX_SIZE; c++) {
      for (let cpu = 0; cpu < this.cpus; cpu++) {
        this.#loaded[c]![cpu]!.size = 0;
        this.#prev[c]![cpu]!.size = 0;
      }
      this.#depot[c]!.length = 0;
      this.#depotWork[c] = false;
    }
    this.#freeCount = 0;
    this.#used = 0;
    this.#nodes = 0;
    const anchor = this.#newNode(IOVA_ANCHOR, IOVA_ANCHOR, 0);
    this.#root = anchor;
    this.#cached = anchor;
    this.#cached32 = anchor;
    this.max32AllocSize = this.dma32BitPfn;
  }

  /** Checks invariants 26 and 27 and the tree's own bookkeeping; throws on a violation. */
  assertInvariants(): void {
    const fail = (msg: string): never => {
      throw new Error(`iova_domain invariant violated: ${msg}`);
    };
    let prevHi = -1;
    let count = 0;
    const check = (v: number, lowerHi: number): number => {
      if (v === NIL) return 0;
      const hl = check(this.#left[v]!, lowerHi);
      if (this.#lo[v]! > this.#hi[v]!) fail(`range [${this.#lo[v]}, ${this.#hi[v]}] is inverted`);
      if (this.#lo[v]! <= prevHi) fail(`ranges overlap at pfn ${this.#lo[v]} (previous ends at ${prevHi}) (invariant 26)`);
      if (this.#gapLo[v] !== prevHi + 1) fail(`gap below pfn ${this.#lo[v]} starts at ${this.#gapLo[v]}, expected ${prevHi + 1}`);
      prevHi = this.#hi[v]!;
      count++;
      for (const child of [this.#left[v]!, this.#right[v]!]) {
        if (child !== NIL && this.#parent[child] !== v) fail(`stale parent link below pfn ${this.#lo[v]}`);
      }
      const hr = check(this.#right[v]!, lowerHi);
      if (Math.abs(hl - hr) > 1) fail(`tree unbalanced at pfn ${this.#lo[v]}`);
      if (this.#height[v] !== 1 + Math.max(hl, hr)) fail(`stale height at pfn ${this.#lo[v]}`);
      const k = this.#aggK[v];
      const e = this.#aggE[v];
      const len = this.#aggLen[v];
      const ownK = this.#ownK[v];
      const ownE = this.#ownE[v];
      const ownLen = this.#ownLen[v];
      this.#computeOwn(v);
      if (this.#ownK[v] !== ownK || this.#ownE[v] !== ownE || this.#ownLen[v] !== ownLen) fail(`stale gap summary at pfn ${this.#lo[v]}`);
      this.#pull(v);
      if (this.#aggK[v] !== k || this.#aggE[v] !== e || this.#aggLen[v] !== len) fail(`stale subtree summary at pfn ${this.#lo[v]}`);
      return 1 + Math.max(hl, hr);
    };
    if (this.#parent[this.#root] !== NIL) fail("the root has a parent");
    check(this.#root, -1);
    if (count !== this.#nodes) fail(`${count} nodes reachable, ${this.#nodes} counted`);
    if (prevHi !== IOVA_ANCHOR) fail("the anchor is not the last node");
    for (const node of [this.#cached, this.#cached32]) {
      if (this.#findContaining(this.#lo[node]!) !== node) fail(`a cached node (pfn ${this.#lo[node]}) is not in the tree`);
    }
    const seen = new Set<number>();
    const checkMag = (mag: Magazine, c: number): void => {
      for (let i = 0; i < mag.size; i++) {
        const pfn = mag.pfns[i]!;
        const node = this.#findContaining(pfn);
        if (node === NIL || this.#lo[node] !== pfn) fail(`rcache class ${c} holds pfn ${pfn}, which starts no allocated range`);
        const len = this.#hi[node]! - pfn + 1;
        if (orderBase2(len) !== c) fail(`rcache class ${c} holds pfn ${pfn} of length ${len} (invariant 27)`);
        if (seen.has(pfn)) fail(`pfn ${pfn} is cached twice`);
        seen.add(pfn);
      }
    };
    for (let c = 0; c < IOVA_RANGE_CACHE_MAX_SIZE; c++) {
      for (let cpu = 0; cpu < this.cpus; cpu++) {
        checkMag(this.#loaded[c]![cpu]!, c);
        checkMag(this.#prev[c]![cpu]!, c);
      }
      for (const mag of this.#depot[c]!) {
        if (mag.size !== IOVA_MAG_SIZE) fail(`depot of class ${c} holds a magazine of ${mag.size}`);
        checkMag(mag, c);
      }
    }
  }

  // ---------------------------------------------------------------- rcache

  #rcacheInsert(pfn: number, size: number): boolean {
    const c = orderBase2(size);
    if (c >= IOVA_RANGE_CACHE_MAX_SIZE) return false;
    const cpu = this.#cpu;
    const loadedRow = this.#loaded[c]!;
    const prevRow = this.#prev[c]!;
    let loaded = loadedRow[cpu]!;
    if (loaded.size === IOVA_MAG_SIZE) {
      const prev = prevRow[cpu]!;
      if (prev.size < IOVA_MAG_SIZE) {
        prevRow[cpu] = loaded;
        loadedRow[cpu] = prev;
        loaded = prev;
      } else {
        if (this.#faults?.shouldFail("kzalloc")) return false; // iova_magazine_alloc(GFP_ATOMIC)
        this.#depot[c]!.push(loaded);
        this.#depotWork[c] = true;
        loaded = new Magazine();
        loadedRow[cpu] = loaded;
      }
    }
    loaded.pfns[loaded.size++] = pfn;
    return true;
  }

  /** iova_rcache_get(iovad, size, limit_pfn): `limitPfn` is alloc_iova_fast's limit plus one. */
  #rcacheGet(size: number, limitPfn: number): number {
    const c = orderBase2(size);
    if (c >= IOVA_RANGE_CACHE_MAX_SIZE) return 0;
    const cpu = this.#cpu;
    const loadedRow = this.#loaded[c]!;
    let loaded = loadedRow[cpu]!;
    if (loaded.size === 0) {
      const prevRow = this.#prev[c]!;
      const prev = prevRow[cpu]!;
      if (prev.size !== 0) {
        prevRow[cpu] = loaded;
        loadedRow[cpu] = prev;
        loaded = prev;
      } else {
        const mag = this.#depot[c]!.pop();
        if (mag === undefined) return 0;
        loadedRow[cpu] = mag;
        loaded = mag;
      }
    }
    // iova_magazine_pop(mag, limit_pfn - size): only a fit for the limit is taken
    const limit = limitPfn - size;
    const pfns = loaded.pfns;
    let i = loaded.size - 1;
    while (pfns[i]! > limit) {
      if (i === 0) return 0;
      i--;
    }
    const pfn = pfns[i]!;
    pfns[i] = pfns[--loaded.size]!;
    return pfn;
  }

  #magazineFreePfns(mag: Magazine): void {
    for (let i = 0; i < mag.size; i++) {
      const node = this.#findContaining(mag.pfns[i]!);
      if (this.#log.warnOn(node === NIL, "iova_magazine_free_pfns", "WARN_ON(!iova)", { pfn: mag.pfns[i] })) continue;
      this.#privateFree(node);
    }
    mag.size = 0;
  }

  // ---------------------------------------------------------------- free

  /** private_free_iova: __cached_rbnode_delete_update, then rb_erase. */
  #privateFree(node: number): void {
    const next = this.#successor(node);
    const lo = this.#lo[node]!;
    const hi = this.#hi[node]!;
    const c32 = this.#cached32;
    if (node === c32 || (hi < this.dma32BitPfn && lo >= this.#lo[c32]!)) this.#cached32 = next;
    if (lo < this.dma32BitPfn) this.max32AllocSize = this.dma32BitPfn;
    if (lo >= this.#lo[this.#cached]!) this.#cached = next;
    this.#removeNode(node, next);
  }

  // ---------------------------------------------------------------- search

  /**
   * The highest `x` with `x >= low`, `x + size <= upper`, `[x, x + size)` free
   * and (when aligned) x a multiple of roundup_pow_of_two(size); -1 if none.
   * `hint` (the cached node the walk starts from) is tried first: when the
   * highest aligned x with x + size <= upper lies in its own gap, it is the answer.
   * Leaves in #gapOwner the node whose gap holds the result.
   */
  #search(upper: number, low: number, size: number, aligned: boolean, hint: number): number {
    if (upper < size) return -1;
    const order = aligned ? fls(size - 1) : 0;
    const align = POW2[order]!;
    let x = Math.floor((upper - size) / align) * align;
    if (upper <= this.#lo[hint]! && x >= this.#gapLo[hint]!) {
      this.#gapOwner = hint;
      return x >= low ? x : -1;
    }
    const stack = this.#path;
    const lo = this.#lo;
    let n = 0;
    let floor = NIL;
    let ceiling = NIL;
    for (let v = this.#root; v !== NIL; ) {
      if (lo[v]! <= upper) {
        const l = this.#left[v]!;
        if (l !== NIL) stack[n++] = -2 - l;
        stack[n++] = v;
        floor = v;
        v = this.#right[v]!;
      } else {
        ceiling = v;
        v = this.#left[v]!;
      }
    }
    // The gap straddling `upper` (below `ceiling`) is the highest; it is clipped, so test it directly.
    const topGapLo = floor === NIL ? 0 : this.#hi[floor]! + 1;
    if (x >= topGapLo) {
      this.#gapOwner = ceiling;
      return x >= low ? x : -1;
    }
    for (let j = n - 1; j >= 0; j--) {
      const item = stack[j]!;
      let found = NIL;
      if (item >= 0) {
        if (this.#fitsOwn(item, size, order, aligned)) found = item;
      } else {
        let t = -2 - item;
        if (this.#fitsSubtree(t, size, order, aligned)) {
          for (;;) {
            const r = this.#right[t]!;
            if (r !== NIL && this.#fitsSubtree(r, size, order, aligned)) t = r;
            else if (this.#fitsOwn(t, size, order, aligned)) break;
            else t = this.#left[t]!;
          }
          found = t;
        }
      }
      if (found !== NIL) {
        this.#gapOwner = found;
        x = Math.floor((lo[found]! - size) / align) * align;
        return x >= low ? x : -1;
      }
    }
    // The bottom gap, left out of the summaries, is the lowest of all; it lies below `upper` (floor is not NIL).
    let bottom = this.#root;
    while (this.#left[bottom] !== NIL) bottom = this.#left[bottom]!;
    this.#gapOwner = bottom;
    x = Math.floor((lo[bottom]! - size) / align) * align;
    return x >= 0 && x >= low ? x : -1;
  }

  #fitsOwn(v: number, size: number, order: number, aligned: boolean): boolean {
    if (!aligned) return this.#ownLen[v]! >= size;
    const k = this.#ownK[v]!;
    return k >= order || (k === order - 1 && this.#ownE[v]! >= size);
  }

  #fitsSubtree(v: number, size: number, order: number, aligned: boolean): boolean {
    if (!aligned) return this.#aggLen[v]! >= size;
    const k = this.#aggK[v]!;
    return k >= order || (k === order - 1 && this.#aggE[v]! >= size);
  }

  // ---------------------------------------------------------------- tree

  #grow(capacity: number): void {
    const grow64 = (a: Float64Array): Float64Array<ArrayBuffer> => {
      const b = new Float64Array(capacity);
      b.set(a);
      return b;
    };
    const grow32 = (a: Int32Array): Int32Array<ArrayBuffer> => {
      const b = new Int32Array(capacity);
      b.set(a);
      return b;
    };
    const grow8 = (a: Int8Array): Int8Array<ArrayBuffer> => {
      const b = new Int8Array(capacity);
      b.set(a);
      return b;
    };
    this.#lo = grow64(this.#lo);
    this.#hi = grow64(this.#hi);
    this.#gapLo = grow64(this.#gapLo);
    this.#left = grow32(this.#left);
    this.#right = grow32(this.#right);
    this.#parent = grow32(this.#parent);
    this.#height = grow8(this.#height);
    this.#ownK = grow8(this.#ownK);
    this.#ownE = grow64(this.#ownE);
    this.#ownLen = grow64(this.#ownLen);
    this.#aggK = grow8(this.#aggK);
    this.#aggE = grow64(this.#aggE);
    this.#aggLen = grow64(this.#aggLen);
    this.#freeSlots = grow32(this.#freeSlots);
    this.#capacity = capacity;
  }

  #newNode(lo: number, hi: number, gapLo: number): number {
    let v: number;
    if (this.#freeCount > 0) v = this.#freeSlots[--this.#freeCount]!;
    else {
      if (this.#used === this.#capacity) this.#grow(this.#capacity * 2);
      v = this.#used++;
    }
    this.#lo[v] = lo;
    this.#hi[v] = hi;
    this.#gapLo[v] = gapLo;
    this.#left[v] = NIL;
    this.#right[v] = NIL;
    this.#parent[v] = NIL;
    this.#computeOwn(v);
    this.#pull(v);
    this.#nodes++;
    return v;
  }

  /**
   * The summary of the gap [gapLo, lo - 1] that node `v` owns. The bottom gap
   * (from pfn 0, owned by the lowest node) is summarised as empty: top-down
   * allocation carves it at its top once the space above fills, and being the
   * largest gap each such change would climb to the root. #search tests it last.
   */
  #computeOwn(v: number): void {
    const a = this.#gapLo[v]!;
    const b = this.#lo[v]! - 1;
    if (b < a || a === 0) {
      this.#ownLen[v] = 0;
      this.#ownK[v] = -1;
      this.#ownE[v] = 0;
      return;
    }
    const len = b - a + 1;
    this.#ownLen[v] = len;
    let k = floorLog2(len);
    const p = POW2[k]!;
    if (Math.ceil(a / p) * p + p - 1 > b) k--;
    this.#ownK[v] = k;
    const p2 = POW2[k + 1]!;
    const m = Math.ceil(a / p2) * p2;
    this.#ownE[v] = m <= b ? b + 1 - m : 0;
  }

  #h(v: number): number {
    return v === NIL ? 0 : this.#height[v]!;
  }

  #pull(v: number): void {
    const l = this.#left[v]!;
    const r = this.#right[v]!;
    let k = this.#ownK[v]!;
    let e = this.#ownE[v]!;
    let len = this.#ownLen[v]!;
    let h = 0;
    if (l !== NIL) {
      const lk = this.#aggK[l]!;
      if (lk > k || (lk === k && this.#aggE[l]! > e)) {
        k = lk;
        e = this.#aggE[l]!;
      }
      if (this.#aggLen[l]! > len) len = this.#aggLen[l]!;
      h = this.#height[l]!;
    }
    if (r !== NIL) {
      const rk = this.#aggK[r]!;
      if (rk > k || (rk === k && this.#aggE[r]! > e)) {
        k = rk;
        e = this.#aggE[r]!;
      }
      if (this.#aggLen[r]! > len) len = this.#aggLen[r]!;
      if (this.#height[r]! > h) h = this.#height[r]!;
    }
    this.#aggK[v] = k;
    this.#aggE[v] = e;
    this.#aggLen[v] = len;
    this.#height[v] = h + 1;
  }

  /** Rotates `v`'s left child up and returns it; the caller hangs it where `v` hung. */
  #rotateRight(v: number): number {
    const l = this.#left[v]!;
    const middle = this.#right[l]!;
    this.#left[v] = middle;
    if (middle !== NIL) this.#parent[middle] = v;
    this.#right[l] = v;
    this.#parent[l] = this.#parent[v]!;
    this.#parent[v] = l;
    this.#pull(v);
    this.#pull(l);
    return l;
  }

  /** Rotates `v`'s right child up and returns it; the caller hangs it where `v` hung. */
  #rotateLeft(v: number): number {
    const r = this.#right[v]!;
    const middle = this.#left[r]!;
    this.#right[v] = middle;
    if (middle !== NIL) this.#parent[middle] = v;
    this.#left[r] = v;
    this.#parent[r] = this.#parent[v]!;
    this.#parent[v] = r;
    this.#pull(v);
    this.#pull(r);
    return r;
  }

  #rebalance(v: number): number {
    this.#pull(v);
    const balance = this.#h(this.#left[v]!) - this.#h(this.#right[v]!);
    if (balance > 1) {
      const l = this.#left[v]!;
      if (this.#h(this.#left[l]!) < this.#h(this.#right[l]!)) this.#left[v] = this.#rotateLeft(l);
      return this.#rotateRight(v);
    }
    if (balance < -1) {
      const r = this.#right[v]!;
      if (this.#h(this.#right[r]!) < this.#h(this.#left[r]!)) this.#right[v] = this.#rotateRight(r);
      return this.#rotateLeft(v);
    }
    return v;
  }

  /**
   * Inserts [lo, hi], which lies in the gap of `owner`: the new node takes the
   * gap's bottom part and is linked as a leaf just before `owner` in order.
   */
  #insertInGap(owner: number, lo: number, hi: number): number {
    const node = this.#newNode(lo, hi, this.#gapLo[owner]!);
    let parent = this.#left[owner]!;
    if (parent === NIL) {
      this.#left[owner] = node;
      parent = owner;
    } else {
      while (this.#right[parent] !== NIL) parent = this.#right[parent]!;
      this.#right[parent] = node;
    }
    this.#parent[node] = parent;
    this.#gapLo[owner] = hi + 1;
    this.#computeOwn(owner);
    this.#fixUp(parent, owner);
    return node;
  }

  /**
   * rb_erase; `next`, the node's successor, inherits its gap. A node with a
   * right subtree is replaced by that subtree's leftmost node, which is `next`.
   */
  #removeNode(node: number, next: number): void {
    const left = this.#left;
    const right = this.#right;
    const parent = this.#parent;
    this.#gapLo[next] = this.#gapLo[node]!;
    this.#computeOwn(next);
    const l = left[node]!;
    const r = right[node]!;
    let from: number;
    if (r === NIL) {
      this.#hang(parent[node]!, node, l);
      from = parent[node]!;
    } else {
      if (next === r) from = next;
      else {
        from = parent[next]!;
        const nr = right[next]!;
        left[from] = nr;
        if (nr !== NIL) parent[nr] = from;
        right[next] = r;
        parent[r] = next;
      }
      left[next] = l;
      if (l !== NIL) parent[l] = next;
      this.#hang(parent[node]!, node, next);
    }
    this.#freeSlots[this.#freeCount++] = node;
    this.#nodes--;
    this.#fixUp(from, next);
  }

  /** Hangs `sub` (may be NIL) under `p` (NIL: as the root) in place of `old`. */
  #hang(p: number, old: number, sub: number): void {
    if (p === NIL) this.#root = sub;
    else if (this.#left[p] === old) this.#left[p] = sub;
    else this.#right[p] = sub;
    if (sub !== NIL) this.#parent[sub] = p;
  }

  /**
   * Rebalances and re-summarises from `v` up to the root. Only `changed` and
   * nodes below it changed their gap or place, so once the walk is above
   * `changed`, a node that comes out with the same height and summary leaves
   * every node above it unchanged too, and the walk stops there.
   */
  #fixUp(v: number, changed: number): void {
    let above = false;
    while (v !== NIL) {
      const p = this.#parent[v]!;
      const height = this.#height[v];
      const k = this.#aggK[v];
      const e = this.#aggE[v];
      const len = this.#aggLen[v];
      const top = this.#rebalance(v);
      if (top !== v) this.#hang(p, v, top);
      else if (above && this.#height[v] === height && this.#aggK[v] === k && this.#aggE[v] === e && this.#aggLen[v] === len) return;
      if (v === changed) above = true;
      v = p;
    }
  }

  /** rb_next. */
  #successor(node: number): number {
    let v = this.#right[node]!;
    if (v !== NIL) {
      while (this.#left[v] !== NIL) v = this.#left[v]!;
      return v;
    }
    v = node;
    let p = this.#parent[v]!;
    while (p !== NIL && this.#right[p] === v) {
      v = p;
      p = this.#parent[p]!;
    }
    return p;
  }

  /** The first node whose pfn_lo is above `pfn`. */
  #firstLoAbove(pfn: number): number {
    let found = NIL;
    for (let v = this.#root; v !== NIL; ) {
      if (this.#lo[v]! > pfn) {
        found = v;
        v = this.#left[v]!;
      } else v = this.#right[v]!;
    }
    return found;
  }

  /** The first node whose pfn_hi is at least `pfn`. */
  #firstHiAtLeast(pfn: number): number {
    let found = NIL;
    for (let v = this.#root; v !== NIL; ) {
      if (this.#hi[v]! >= pfn) {
        found = v;
        v = this.#left[v]!;
      } else v = this.#right[v]!;
    }
    return found;
  }

  #contains(node: number, pfn: number): boolean {
    return this.#lo[node]! <= pfn && pfn <= this.#hi[node]!;
  }

  /** private_find_iova. */
  #findContaining(pfn: number): number {
    for (let v = this.#root; v !== NIL; ) {
      if (pfn < this.#lo[v]!) v = this.#left[v]!;
      else if (pfn > this.#hi[v]!) v = this.#right[v]!;
      else return v;
    }
    return NIL;
  }
}
