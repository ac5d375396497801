/**
 * Property test: random alloc / free / fast-path sequences on IovaDomain give
 * exactly the addresses, cached nodes, max32 hint and rcache contents of a
 * naive model written as a literal transcription of iova.c (a sorted array
 * walked node by node with rb_prev, the retry restarting from the anchor as
 * before iova_find_limit, magazines as plain arrays), and never overlap.
 */
import { expect } from "chai";
import fc from "fast-check";
import { KernelLog } from "../host/kernel-log.js";
import { IOVA_ANCHOR, IOVA_MAG_SIZE, IovaDomain, fls, orderBase2, roundupPowOfTwo } from "./iova-domain.js";

interface RNode {
  lo: number;
  hi: number;
}

/** iova.c, slowly: every search walks the sorted list. */
class NaiveIovad {
  readonly nodes: RNode[] = [{ lo: IOVA_ANCHOR, hi: IOVA_ANCHOR }];
  cached: RNode;
  cached32: RNode;
  max32: number;
  cpu = 0;
  readonly loaded: number[][][] = [];
  readonly prev: number[][][] = [];
  readonly depot: number[][][] = [];
  readonly work: boolean[] = [];

  constructor(
    readonly startPfn: number,
    readonly dma32: number,
    readonly cpus: number,
  ) {
    this.cached = this.nodes[0]!;
    this.cached32 = this.nodes[0]!;
    this.max32 = dma32;
    for (let c = 0; c < 6; c++) {
      this.loaded.push(Array.from({ length: cpus }, () => []));
      this.prev.push(Array.from({ length: cpus }, () => []));
      this.depot.push([]);
      this.work.push(false);
    }
  }

  alloc(size: number, limitPfn: number, aligned: boolean): number {
    const limit = limitPfn + 1;
    if (limit <= this.dma32 && size >= this.max32) return -1;
    const align = aligned ? 2 ** fls(size - 1) : 1;
    const start = limit <= this.dma32 ? this.cached32 : this.cached;
    let idx = this.nodes.indexOf(start);
    const retryPfn = start.hi;
    let high = limit;
    let low = this.startPfn;
    let prevIdx: number;
    let newPfn: number;
    let retried = false;
    for (;;) {
      let ci = idx;
      do {
        high = Math.min(high, this.nodes[ci]!.lo);
        newPfn = high >= size ? Math.floor((high - size) / align) * align : Infinity; // u64 wrap
        prevIdx = ci;
        ci--;
      } while (ci >= 0 && newPfn <= this.nodes[ci]!.hi && newPfn >= low);
      if (high < size || newPfn < low) {
        if (!retried && low === this.startPfn && retryPfn < limit) {
          retried = true;
          high = limit;
          low = retryPfn + 1;
          idx = this.nodes.length - 1;
          continue;
        }
        this.max32 = size;
        return -1;
      }
      break;
    }
    const node = { lo: newPfn, hi: newPfn + size - 1 };
    this.nodes.splice(prevIdx, 0, node);
    if (node.hi < this.dma32) this.cached32 = node;
    else this.cached = node;
    return newPfn;
  }

  find(pfn: number): RNode | undefined {
    return this.nodes.find((n) => n.lo <= pfn && pfn <= n.hi && n.lo !== IOVA_ANCHOR);
  }

  free(pfn: number): void {
    const node = this.find(pfn);
    if (node !== undefined) this.privateFree(node);
  }

  privateFree(free: RNode): void {
    const i = this.nodes.indexOf(free);
    const next = this.nodes[i + 1]!;
    if (free === this.cached32 || (free.hi < this.dma32 && free.lo >= this.cached32.lo)) this.cached32 = next;
    if (free.lo < this.dma32) this.max32 = this.dma32;
    if (free.lo >= this.cached.lo) this.cached = next;
    this.nodes.splice(i, 1);
  }

  reserve(lo: number, hi: number): void {
    let overlap = false;
    for (const node of this.nodes) {
      if (lo <= node.hi && hi >= node.lo) {
        if (lo < node.lo) node.lo = lo;
        if (hi > node.hi) lo = node.hi + 1;
        if (lo >= node.lo && hi <= node.hi) return;
        overlap = true;
      } else if (overlap) break;
    }
    const at = this.nodes.findIndex((n) => n.lo > lo);
    this.nodes.splice(at, 0, { lo, hi });
  }

  allocFast(size: number, limitPfn: number, flush: boolean): number {
    if (size < 32) size = roundupPowOfTwo(size);
    const cached = this.rcacheGet(size, limitPfn + 1);
    if (cached !== 0) return cached;
    for (;;) {
      const pfn = this.alloc(size, limitPfn, true);
      if (pfn >= 0) return pfn;
      if (!flush) return 0;
      flush = false;
      for (let cpu = 0; cpu < this.cpus; cpu++) {
        for (let c = 0; c < 6; c++) {
          this.freeMag(this.loaded[c]![cpu]!);
          this.freeMag(this.prev[c]![cpu]!);
        }
      }
      for (let c = 0; c < 6; c++) while (this.depot[c]!.length > 0) this.freeMag(this.depot[c]!.pop()!);
    }
  }

  freeFast(pfn: number, size: number): void {
    const c = orderBase2(size);
    if (c < 6) {
      let loaded = this.loaded[c]![this.cpu]!;
      if (loaded.length === IOVA_MAG_SIZE) {
        const prev = this.prev[c]![this.cpu]!;
        if (prev.length < IOVA_MAG_SIZE) {
          this.prev[c]![this.cpu] = loaded;
          this.loaded[c]![this.cpu] = prev;
          loaded = prev;
        } else {
          this.depot[c]!.push(loaded);
          this.work[c] = true;
          loaded = [];
          this.loaded[c]![this.cpu] = loaded;
        }
      }
      loaded.push(pfn);
      return;
    }
    this.free(pfn);
  }

  rcacheGet(size: number, limitPfn: number): number {
    const c = orderBase2(size);
    if (c >= 6) return 0;
    let loaded = this.loaded[c]![this.cpu]!;
    if (loaded.length === 0) {
      const prev = this.prev[c]![this.cpu]!;
      if (prev.length > 0) {
        this.prev[c]![this.cpu] = loaded;
        this.loaded[c]![this.cpu] = prev;
        loaded = prev;
      } else if (this.depot[c]!.length > 0) {
        loaded = this.depot[c]!.pop()!;
        this.loaded[c]![this.cpu] = loaded;
      } else return 0;
    }
    const limit = limitPfn - size;
    let i = loaded.length - 1;
    while (loaded[i]! > limit) {
      if (i === 0) return 0;
      i--;
    }
    const pfn = loaded[i]!;
    loaded[i] = loaded[loaded.length - 1]!;
    loaded.pop();
    return pfn;
  }

  freeMag(mag: number[]): void {
    for (const pfn of mag) this.privateFree(this.find(pfn)!);
    mag.length = 0;
  }

  trim(): number {
    let freed = 0;
    for (let c = 0; c < 6; c++) {
      if (!this.work[c]) continue;
      this.work[c] = false;
      if (this.depot[c]!.length > this.cpus) {
        this.freeMag(this.depot[c]!.pop()!);
        freed++;
        this.work[c] = true;
      }
    }
    return freed;
  }

  cachedCount(): number {
    let n = 0;
    for (let c = 0; c < 6; c++) {
      for (let cpu = 0; cpu < this.cpus; cpu++) n += this.loaded[c]![cpu]!.length + this.prev[c]![cpu]!.length;
      for (const m of this.depot[c]!) n += m.length;
    }
    return n;
  }
}

type Op =
  | { readonly k: "alloc"; readonly size: number; readonly limit: number; readonly aligned: boolean }
  | { readonly k: "free"; readonly pick: number }
  | { readonly k: "allocFast"; readonly size: number; readonly limit: number; readonly flush: boolean }
  | { readonly k: "freeFast"; readonly pick: number }
  | { readonly k: "cpu"; readonly cpu: number }
  | { readonly k: "trim" }
  | { readonly k: "burst"; readonly count: number; readonly size: number; readonly limit: number }
  | { readonly k: "freeAllFast"; readonly reverse: boolean };

const rangesOf = (d: IovaDomain): number[][] => {
  const out: number[][] = [];
  d.forEachRange((lo, hi) => out.push([lo, hi]));
  return out;
};

function run(startPfn: number, dma32: number, limits: readonly number[], reserves: readonly (readonly [number, number])[], ops: readonly Op[]): void {
  const cpus = 2;
  const log = new KernelLog();
  const d = new IovaDomain(4096, startPfn, { log, cpus, dma32BitPfn: dma32 });
  const ref = new NaiveIovad(startPfn, dma32, cpus);
  for (const [lo, len] of reserves) {
    const got = d.reserveIova(lo, lo + len - 1);
    ref.reserve(lo, lo + len - 1);
    expect(got).to.not.equal(undefined);
  }
  const plain: number[] = [];
  const fast: [number, number][] = [];
  for (const op of ops) {
    switch (op.k) {
      case "alloc": {
        const limit = limits[op.limit % limits.length]!;
        const got = d.allocIova(op.size, limit, op.aligned);
        expect(got, `alloc_iova(${op.size}, ${limit}, ${op.aligned})`).to.equal(ref.alloc(op.size, limit, op.aligned));
        if (got >= 0) plain.push(got);
        break;
      }
      case "free":
        if (plain.length > 0) {
          const [pfn] = plain.splice(op.pick % plain.length, 1);
          d.freeIova(pfn!);
          ref.free(pfn!);
        }
        break;
      case "allocFast": {
        const limit = limits[op.limit % limits.length]!;
        const got = d.allocIovaFast(op.size, limit, op.flush);
        expect(got, `alloc_iova_fast(${op.size}, ${limit}, ${op.flush})`).to.equal(ref.allocFast(op.size, limit, op.flush));
        if (got !== 0) fast.push([got, op.size]);
        break;
      }
      case "freeFast":
        if (fast.length > 0) {
          const [[pfn, size]] = fast.splice(op.pick % fast.length, 1) as [[number, number]];
          d.freeIovaFast(pfn, size);
          ref.freeFast(pfn, size);
        }
        break;
      case "cpu":
        d.cpu = op.cpu;
        ref.cpu = op.cpu;
        break;
      case "trim":
        expect(d.trimDepot()).to.equal(ref.trim());
        break;
      case "burst":
        for (let i = 0; i < op.count; i++) {
          const limit = limits[(op.limit + i) % limits.length]!;
          const got = d.allocIovaFast(op.size, limit, true);
          expect(got, `burst alloc_iova_fast(${op.size}, ${limit})`).to.equal(ref.allocFast(op.size, limit, true));
          if (got !== 0) fast.push([got, op.size]);
        }
        break;
      case "freeAllFast":
        if (op.reverse) fast.reverse();
        for (const [pfn, size] of fast) {
          d.freeIovaFast(pfn, size);
          ref.freeFast(pfn, size);
        }
        fast.length = 0;
        break;
    }
    d.assertInvariants(); // invariants 26 and 27
    expect(rangesOf(d)).to.deep.equal(ref.nodes.slice(0, -1).map((n) => [n.lo, n.hi]));
    expect(d.cachedNode).to.deep.equal({ pfnLo: ref.cached.lo, pfnHi: ref.cached.hi });
    expect(d.cached32Node).to.deep.equal({ pfnLo: ref.cached32.lo, pfnHi: ref.cached32.hi });
    expect(d.max32AllocSize).to.equal(ref.max32);
    expect(d.cachedIovas).to.equal(ref.cachedCount());
  }
  expect(log.warnings).to.deep.equal([]);
}

const opArb = (maxSize: number): fc.Arbitrary<Op> =>
  fc.oneof(
    { weight: 4, arbitrary: fc.record({ k: fc.constant("alloc" as const), size: fc.integer({ min: 1, max: maxSize }), limit: fc.nat(), aligned: fc.boolean() }) },
    { weight: 3, arbitrary: fc.record({ k: fc.constant("free" as const), pick: fc.nat() }) },
    { weight: 4, arbitrary: fc.record({ k: fc.constant("allocFast" as const), size: fc.integer({ min: 1, max: maxSize }), limit: fc.nat(), flush: fc.boolean() }) },
    { weight: 3, arbitrary: fc.record({ k: fc.constant("freeFast" as const), pick: fc.nat() }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant("cpu" as const), cpu: fc.integer({ min: 0, max: 1 }) }) },
    { weight: 1, arbitrary: fc.constant({ k: "trim" as const }) },
  );

const burstArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ k: fc.constant("burst" as const), count: fc.integer({ min: 20, max: 1100 }), size: fc.integer({ min: 1, max: 2 }), limit: fc.nat() }),
  fc.record({ k: fc.constant("freeAllFast" as const), reverse: fc.boolean() }),
  fc.record({ k: fc.constant("cpu" as const), cpu: fc.integer({ min: 0, max: 1 }) }),
  fc.constant({ k: "trim" as const }),
);

describe("dma-api/iova-domain: property, against a naive transcription of iova.c", () => {
  it("a crowded 32-bit space: random limits, sizes, alignment, frees and the rcache", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 3 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 600 }), fc.integer({ min: 1, max: 24 })), { maxLength: 3 }),
        fc.array(opArb(40), { minLength: 1, maxLength: 160 }),
        (startPfn, reserves, ops) => run(startPfn, 256, [63, 127, 255, 511, 1023], reserves, ops),
      ),
      { numRuns: 250 },
    );
  });

  it("bursts through the magazines and the depot, with mixed limits", () => {
    fc.assert(
      fc.property(fc.array(fc.oneof({ weight: 3, arbitrary: burstArb }, { weight: 1, arbitrary: opArb(4) }), { minLength: 1, maxLength: 16 }), (ops) => run(1, 256, [63, 255, 1023], [], ops)),
      { numRuns: 60 },
    );
  });

  it("a sparse 64-bit space with 4 GiB limits (cached32 vs cached node)", () => {
    fc.assert(
      fc.property(fc.array(opArb(600), { minLength: 1, maxLength: 120 }), (ops) => run(1, 0x10_0000, [0xfffff, 0x7ffff, 0x10_1fff, 2 ** 36 - 1], [[0xfee00, 0x100]], ops)),
      { numRuns: 100 },
    );
  });
});
