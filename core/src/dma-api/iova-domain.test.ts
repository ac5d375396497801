import { expect } from "chai";
import { KernelLog } from "../host/kernel-log.js";
import { FaultInjector } from "../host/fault-injector.js";
import { IOVA_ANCHOR, IOVA_MAG_SIZE, IovaDomain, orderBase2, roundupPowOfTwo } from "./iova-domain.js";

const PFN_4G = 0x10_0000;
const LIMIT_32 = PFN_4G - 1;
const LIMIT_48 = 2 ** 36 - 1;

const ranges = (d: IovaDomain): number[][] => {
  const out: number[][] = [];
  d.forEachRange((lo, hi) => out.push([lo, hi]));
  return out;
};

describe("dma-api/iova-domain: the iova.c allocator", () => {
  let log: KernelLog;
  let d: IovaDomain;

  beforeEach(() => {
    log = new KernelLog();
    d = new IovaDomain(4096, 1, { log });
  });

  afterEach(() => {
    d.assertInvariants();
    expect(log.warnings).to.deep.equal([]);
  });

  it("helpers: order_base_2 and roundup_pow_of_two", () => {
    expect([1, 2, 3, 4, 5, 31, 32, 33].map(orderBase2)).to.deep.equal([0, 1, 2, 2, 3, 5, 5, 6]);
    expect([1, 3, 17, 32].map(roundupPowOfTwo)).to.deep.equal([1, 4, 32, 32]);
  });

  it("allocates top-down from the limit: 0xfffff000, 0xffffe000, ... under a 32-bit limit", () => {
    const got: string[] = [];
    for (let i = 0; i < 4; i++) {
      got.push((d.allocIova(1, LIMIT_32, true) * 4096).toString(16));
      d.assertInvariants();
    }
    expect(got).to.deep.equal(["fffff000", "ffffe000", "ffffd000", "ffffc000"]);
    expect(d.rangeCount).to.equal(4);
    expect(d.cached32Node).to.deep.equal({ pfnLo: 0xffffc, pfnHi: 0xffffc });
    expect(d.cachedNode).to.deep.equal({ pfnLo: IOVA_ANCHOR, pfnHi: IOVA_ANCHOR });
  });

  it("above 4 GiB the search starts at cached_node, below at cached32_node", () => {
    expect(d.allocIova(1, LIMIT_48, true)).to.equal(LIMIT_48);
    expect(d.cachedNode).to.deep.equal({ pfnLo: LIMIT_48, pfnHi: LIMIT_48 });
    expect(d.cached32Node.pfnLo).to.equal(IOVA_ANCHOR);
    expect(d.allocIova(1, LIMIT_32, true)).to.equal(LIMIT_32);
    expect(d.allocIova(1, LIMIT_48, true)).to.equal(LIMIT_48 - 1);
    expect(d.cached32Node).to.deep.equal({ pfnLo: LIMIT_32, pfnHi: LIMIT_32 });
  });

  it("size_aligned puts pfn_lo on roundup_pow_of_two(size); unaligned packs right below", () => {
    expect(d.allocIova(1, LIMIT_32, true)).to.equal(0xfffff);
    expect(d.allocIova(3, LIMIT_32, true)).to.equal(0xffffc); // 4-aligned, ends below 0xfffff
    expect(d.allocIova(3, LIMIT_32, false)).to.equal(0xffff9);
    expect(d.allocIova(33, LIMIT_32, true)).to.equal(0xfffc0); // 64-aligned
    expect(d.allocIova(2, LIMIT_32, true)).to.equal(0xfffbe);
    expect(ranges(d)).to.deep.equal([
      [0xfffbe, 0xfffbf],
      [0xfffc0, 0xfffe0],
      [0xffff9, 0xffffb],
      [0xffffc, 0xffffe],
      [0xfffff, 0xfffff],
    ]);
  });

  it("a free above cached32 moves it to rb_next(free); a free below leaves it", () => {
    const a = d.allocIova(1, LIMIT_32, true);
    const b = d.allocIova(1, LIMIT_32, true);
    const c = d.allocIova(1, LIMIT_32, true);
    expect([a, b, c]).to.deep.equal([0xfffff, 0xffffe, 0xffffd]);
    d.freeIova(b);
    expect(d.cached32Node).to.deep.equal({ pfnLo: a, pfnHi: a });
    expect(d.allocIova(1, LIMIT_32, true)).to.equal(b);
    expect(d.cached32Node).to.deep.equal({ pfnLo: b, pfnHi: b });
    d.freeIova(c); // below the cached node: cached32 stays
    expect(d.cached32Node).to.deep.equal({ pfnLo: b, pfnHi: b });
    expect(d.allocIova(1, LIMIT_32, true)).to.equal(c);
    d.freeIova(a); // freeing the top moves the cache to rb_next: the anchor
    expect(d.cached32Node.pfnLo).to.equal(IOVA_ANCHOR);
    expect(d.findIova(a)).to.equal(undefined);
    d.freeIova(0xfffff); // unknown pfn: nothing happens
    expect(d.rangeCount).to.equal(2);
  });

  it("retries from the limit when the space below the cached node is exhausted", () => {
    const small = new IovaDomain(4096, 1, { log, dma32BitPfn: 16 });
    expect([small.allocIova(1, 15, true), small.allocIova(1, 15, true), small.allocIova(1, 15, true)]).to.deep.equal([15, 14, 13]);
    small.freeIova(14); // cached32 -> rb_next = 15
    expect(small.cached32Node.pfnLo).to.equal(15);
    expect(small.allocIova(2, 15, true)).to.equal(10); // 14 is free but not 2-aligned room
    expect(small.cached32Node).to.deep.equal({ pfnLo: 10, pfnHi: 11 });
    const below: number[] = [];
    for (let i = 0; i < 9; i++) below.push(small.allocIova(1, 15, true));
    expect(below).to.deep.equal([9, 8, 7, 6, 5, 4, 3, 2, 1]); // 12 and 14 lie above the cached node
    expect(small.cached32Node.pfnLo).to.equal(1);
    // the first pass from pfn 1 finds nothing below; the retry from the limit finds 14
    expect(small.allocIova(1, 15, true)).to.equal(14);
    expect(small.allocIova(1, 15, true)).to.equal(12);
    expect(small.allocIova(1, 15, true)).to.equal(-1);
    expect(small.max32AllocSize).to.equal(1);
    small.assertInvariants();
  });

  it("max32_alloc_size fails fast below 4 GiB until a free below 4 GiB resets it", () => {
    const small = new IovaDomain(4096, 1, { log, dma32BitPfn: 64 });
    expect(small.reserveIova(1, 56)).to.deep.equal({ pfnLo: 1, pfnHi: 56 });
    expect([small.allocIova(1, 63, true), small.allocIova(1, 63, true), small.allocIova(1, 63, true)]).to.deep.equal([63, 62, 61]);
    // hole [57, 60]: no 4-aligned room, so the aligned request fails and records its size
    expect(small.allocIova(4, 63, true)).to.equal(-1);
    expect(small.max32AllocSize).to.equal(4);
    // an unaligned 4 would fit at 57, but the hint refuses it without searching
    expect(small.allocIova(4, 63, false)).to.equal(-1);
    expect(small.allocIova(3, 63, false)).to.equal(58);
    expect(small.max32AllocSize).to.equal(4);
    // above 4 GiB the hint does not apply
    expect(small.allocIova(4, 200, false)).to.equal(197);
    small.freeIova(61);
    expect(small.max32AllocSize).to.equal(64);
    expect(small.allocIova(4, 63, false)).to.equal(-1); // [57] and [61] are single holes
    expect(small.max32AllocSize).to.equal(4);
    small.freeIova(58); // hole [57, 61]; cached32 stays at 62
    expect(small.allocIova(4, 63, false)).to.equal(58);
    small.assertInvariants();
  });

  it("reserve_iova extends overlapping ranges down and inserts the remainder", () => {
    expect(d.reserveIova(0xfee00, 0xfeeff)).to.deep.equal({ pfnLo: 0xfee00, pfnHi: 0xfeeff });
    expect(d.reserveIova(0xfee10, 0xfee20)).to.deep.equal({ pfnLo: 0xfee00, pfnHi: 0xfeeff }); // covered
    expect(d.reserveIova(0xfed00, 0xfef10)).to.deep.equal({ pfnLo: 0xfef00, pfnHi: 0xfef10 });
    expect(ranges(d)).to.deep.equal([
      [0xfed00, 0xfeeff],
      [0xfef00, 0xfef10],
    ]);
    expect(d.reserveIova(2 ** 52, 2 ** 52)).to.equal(undefined);
    expect(log.warnings.map((w) => w.site)).to.deep.equal(["reserve_iova"]);
    log.warnings.length = 0;
    expect(d.findIova(0xfee05)).to.deep.equal({ pfnLo: 0xfed00, pfnHi: 0xfeeff });
    // allocations skip the reserved window
    for (let i = 0; i < 0xfffff - 0xfef10; i++) d.allocIova(1, LIMIT_32, true);
    expect(d.allocIova(1, LIMIT_32, true)).to.equal(0xfecff);
  });

  it("an alloc_iova_mem failure fails the allocation", () => {
    const faults = new FaultInjector();
    const f = new IovaDomain(4096, 1, { log, faults });
    faults.failNth(1, ["kzalloc"]);
    expect(f.allocIova(1, LIMIT_32, true)).to.equal(-1);
    expect(faults.fired).to.equal("kzalloc");
    expect(f.max32AllocSize).to.equal(PFN_4G); // not a search failure: the hint is untouched
    expect(f.allocIova(1, LIMIT_32, true)).to.equal(0xfffff);
  });
});

describe("dma-api/iova-domain: the rcache", () => {
  let log: KernelLog;

  beforeEach(() => {
    log = new KernelLog();
  });

  afterEach(() => {
    expect(log.warnings).to.deep.equal([]);
  });

  it("free_iova_fast caches the IOVA and alloc_iova_fast hands the same one back", () => {
    const d = new IovaDomain(4096, 1, { log });
    const a = d.allocIovaFast(3, LIMIT_32, true); // rounded to 4
    expect(a).to.equal(0xffffc);
    expect(d.findIova(a)).to.deep.equal({ pfnLo: 0xffffc, pfnHi: 0xfffff });
    d.freeIovaFast(a, 3); // order_base_2(3) = class 2
    expect(d.magazineFill(2, 0)).to.deep.equal({ loaded: 1, prev: 0 });
    expect(d.cachedIovas).to.equal(1);
    expect(d.rangeCount).to.equal(1); // still allocated in the tree
    d.assertInvariants();
    expect(d.allocIovaFast(4, LIMIT_32, true)).to.equal(a);
    expect(d.cachedIovas).to.equal(0);
    // a cached IOVA above the limit is not handed out
    d.freeIovaFast(a, 4);
    expect(d.allocIovaFast(4, 0x7ffff, true)).to.equal(0x7fffc);
    expect(d.cachedIovas).to.equal(1);
    d.assertInvariants();
  });

  it("sizes of 64 granules and more bypass the rcache", () => {
    const d = new IovaDomain(4096, 1, { log });
    const a = d.allocIovaFast(64, LIMIT_32, true);
    expect(a).to.equal(0xfffc0);
    d.freeIovaFast(a, 64);
    expect(d.cachedIovas).to.equal(0);
    expect(d.rangeCount).to.equal(0);
    d.assertInvariants();
  });

  it("each CPU has its own magazines", () => {
    const d = new IovaDomain(4096, 1, { log, cpus: 2 });
    const a = d.allocIovaFast(1, LIMIT_32, true);
    d.freeIovaFast(a, 1);
    d.cpu = 1;
    expect(d.allocIovaFast(1, LIMIT_32, true)).to.equal(0xffffe); // cpu 1 misses
    d.cpu = 0;
    expect(d.allocIovaFast(1, LIMIT_32, true)).to.equal(a);
    expect(() => (d.cpu = 2)).to.throw(RangeError);
    d.assertInvariants();
  });

  it("full magazines go to the depot; the delayed work trims it down to the CPU count", () => {
    const d = new IovaDomain(4096, 1, { log, cpus: 1 });
    const pfns: number[] = [];
    for (let i = 0; i < IOVA_MAG_SIZE * 4 + 1; i++) pfns.push(d.allocIovaFast(1, LIMIT_32, true));
    expect(d.rangeCount).to.equal(509);
    for (let i = 0; i < IOVA_MAG_SIZE * 2; i++) d.freeIovaFast(pfns[i]!, 1);
    expect(d.magazineFill(0, 0)).to.deep.equal({ loaded: 127, prev: 127 });
    expect(d.depotSize(0)).to.equal(0);
    d.freeIovaFast(pfns[254]!, 1);
    expect(d.depotSize(0)).to.equal(1);
    expect(d.magazineFill(0, 0)).to.deep.equal({ loaded: 1, prev: 127 });
    expect(d.depotWorkPending(0)).to.equal(true);
    for (let i = 255; i < 509; i++) d.freeIovaFast(pfns[i]!, 1);
    expect(d.depotSize(0)).to.equal(3);
    expect(d.cachedIovas).to.equal(509);
    d.assertInvariants();
    expect(d.trimDepot()).to.equal(1);
    expect([d.depotSize(0), d.rangeCount]).to.deep.equal([2, 509 - 127]);
    expect(d.trimDepot()).to.equal(1);
    expect([d.depotSize(0), d.rangeCount]).to.deep.equal([1, 509 - 254]);
    expect(d.trimDepot()).to.equal(0); // depot_size 1 is not above num_online_cpus
    expect(d.depotWorkPending(0)).to.equal(false);
    expect(d.depotSize(0)).to.equal(1);
    d.assertInvariants();
    // loaded and prev drained, the next allocation loads the depot's magazine
    for (let i = 0; i < 128; i++) d.allocIovaFast(1, LIMIT_32, true);
    expect(d.magazineFill(0, 0)).to.deep.equal({ loaded: 0, prev: 0 });
    expect(d.depotSize(0)).to.equal(1);
    d.allocIovaFast(1, LIMIT_32, true);
    expect(d.depotSize(0)).to.equal(0);
    expect(d.magazineFill(0, 0)).to.deep.equal({ loaded: 126, prev: 0 });
    d.assertInvariants();
  });

  it("a failed allocation flushes every cached IOVA and retries once (flush_rcache)", () => {
    const d = new IovaDomain(4096, 1, { log, cpus: 2, dma32BitPfn: 64 });
    const pfns: number[] = [];
    for (let i = 0; i < 63; i++) pfns.push(d.allocIovaFast(1, 63, true));
    expect(pfns[62]).to.equal(1);
    d.cpu = 1;
    for (const p of [63, 62, 61, 60]) d.freeIovaFast(p, 1);
    d.cpu = 0;
    expect(d.cachedIovas).to.equal(4);
    expect(d.allocIovaFast(4, 63, false)).to.equal(0); // no room, no flush
    expect(d.cachedIovas).to.equal(4);
    expect(d.allocIovaFast(4, 63, true)).to.equal(60);
    expect(d.cachedIovas).to.equal(0);
    d.assertInvariants();
  });

  it("the invariant check catches an IOVA cached in the wrong size class (invariant 27)", () => {
    const d = new IovaDomain(4096, 1, { log });
    const a = d.allocIovaFast(1, LIMIT_32, true);
    d.freeIovaFast(a, 4); // a 1-granule range into the 4-granule class
    expect(() => d.assertInvariants()).to.throw(/invariant 27/);
    d.destroy();
    expect(d.rangeCount).to.equal(0);
    d.assertInvariants();
  });
});
