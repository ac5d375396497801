import { expect } from "chai";
import fc from "fast-check";
import { KernelError } from "@vgpu-iommu/core";
import { GvtDmaCache } from "./dma-cache.js";
import { FakeVgpuServices, NO_FAKE_LEAKS } from "@vgpu-iommu/core/testing";

const SIZE_2M = 0x200000;

function rig(options: ConstructorParameters<typeof FakeVgpuServices>[0] = { guestPages: 0x4000 }): { svc: FakeVgpuServices; cache: GvtDmaCache } {
  const svc = new FakeVgpuServices(options);
  const cache = new GvtDmaCache(svc);
  cache.attached = true;
  return { svc, cache };
}

function empty(svc: FakeVgpuServices, cache: GvtDmaCache): void {
  expect(cache.size).to.equal(0);
  expect(svc.leaks()).to.deep.equal(NO_FAKE_LEAKS);
}

describe("gvt: the gvt_dma cache (kvmgt.c)", () => {
  it("miss: one translate (one pin of one frame, one map); hit: kref++; last put releases", () => {
    const { svc, cache } = rig();
    const a = cache.dmaMapGuestPage(0x100, 4096);
    expect(svc.counters.translations).to.equal(1);
    expect(svc.counters.maps).to.equal(1);
    expect(svc.refs[0x100]).to.equal(1);
    expect(cache.dmaMapGuestPage(0x100, 4096)).to.equal(a);
    expect(svc.counters.translations).to.equal(1);
    expect(cache.lookupGfn(0x100)).to.deep.equal({ gfn: 0x100, dmaAddr: a, size: 4096, kref: 2 });
    expect(cache.lookupDma(a / 4096)?.gfn).to.equal(0x100);
    cache.dmaUnmapGuestPage(a);
    expect(svc.pinnedFrames).to.equal(1);
    cache.dmaUnmapGuestPage(a);
    expect(svc.counters.releases).to.equal(1);
    cache.dmaUnmapGuestPage(a); // unknown now: ignored
    expect(svc.counters.badUnpins).to.equal(0);
    empty(svc, cache);
  });

  it("dmaPinGuestPage takes a reference by DMA address: -ENOMEM unknown, -ENODEV detached", () => {
    const { svc, cache } = rig();
    const a = cache.dmaMapGuestPage(0x10, 4096);
    cache.dmaPinGuestPage(a);
    expect(cache.lookupGfn(0x10)?.kref).to.equal(2);
    expect(() => cache.dmaPinGuestPage(a + 4096)).to.throw(KernelError).with.property("code", "ENOMEM");
    cache.attached = false;
    expect(() => cache.dmaPinGuestPage(a)).to.throw(KernelError).with.property("code", "ENODEV");
    expect(() => cache.dmaMapGuestPage(0x11, 4096)).to.throw(KernelError).with.property("code", "EINVAL");
    cache.dmaUnmapGuestPage(a); // detached: ignored
    expect(cache.lookupGfn(0x10)?.kref).to.equal(2);
    expect(cache.destroy()).to.equal(1);
    empty(svc, cache);
  });

  it("2M on contiguous host frames: 512 single-frame pins checked base+k, one 2M mapping, one reference per frame", () => {
    const { svc, cache } = rig({ guestPages: 0x4000, backing: "contiguous" });
    const a = cache.dmaMapGuestPage(0x200, SIZE_2M);
    expect(svc.counters.pinCalls).to.equal(512);
    expect(cache.counters.pagePins).to.equal(512);
    expect(svc.counters.translations).to.equal(1);
    expect(svc.counters.unpinCalls).to.equal(1, "the page-by-page references go in one call");
    expect(svc.liveMappedPages()).to.equal(512);
    expect(svc.pinnedFrames).to.equal(512);
    expect(svc.pinRefs).to.equal(512);
    expect(cache.lookupGfn(0x200)).to.deep.equal({ gfn: 0x200, dmaAddr: a, size: SIZE_2M, kref: 1 });
    cache.dmaUnmapGuestPage(a);
    empty(svc, cache);
  });

  it("2M on scattered host frames: the contiguity check fails at the first gap, unpins and says -EINVAL", () => {
    const { svc, cache } = rig({ guestPages: 0x4000, backing: "scattered", seed: 7 });
    expect(() => cache.dmaMapGuestPage(0x200, SIZE_2M)).to.throw(KernelError).with.property("code", "EINVAL");
    expect(cache.counters.notContiguous).to.equal(1);
    expect(svc.counters.pinCalls).to.equal(2, "stops at the first frame that is not base + k");
    expect(svc.counters.translations).to.equal(0);
    empty(svc, cache);
  });

  it("the same GFN first as 4K, then as a 2M base: the old entry goes whatever its kref", () => {
    const { svc, cache } = rig({ guestPages: 0x4000 });
    const small = cache.dmaMapGuestPage(0x400, 4096);
    cache.dmaMapGuestPage(0x400, 4096);
    cache.dmaPinGuestPage(small);
    expect(cache.lookupGfn(0x400)?.kref).to.equal(3);
    const big = cache.dmaMapGuestPage(0x400, SIZE_2M);
    expect(cache.size).to.equal(1);
    expect(cache.lookupGfn(0x400)).to.deep.equal({ gfn: 0x400, dmaAddr: big, size: SIZE_2M, kref: 1 });
    expect(svc.counters.releases).to.equal(1);
    // The holders of the old address now hold a stale one: their puts are no-ops.
    cache.dmaUnmapGuestPage(small);
    cache.dmaUnmapGuestPage(small);
    expect(cache.lookupGfn(0x400)?.kref).to.equal(1);
    expect(svc.pinnedFrames).to.equal(512);
    cache.dmaUnmapGuestPage(big);
    empty(svc, cache);
  });

  it("dmaUnmap drops every entry whose GFN is in the range whatever its kref; a 2M entry only by its base", () => {
    const { svc, cache } = rig({ guestPages: 0x4000 });
    for (let g = 0x1000; g < 0x1010; g++) {
      cache.map(g, 1);
      cache.map(g, 1);
    }
    cache.map(0x0e00, 512); // 2M at 0xe00..0xfff, base outside the range below
    cache.map(0x1200, 512); // 2M whose base is inside
    expect(cache.unmapRange(0x1000, 0x400)).to.equal(17);
    expect(cache.size).to.equal(1);
    expect(cache.lookupGfn(0x0e00)?.size).to.equal(SIZE_2M);
    // The 2M entry below keeps frames pinned inside the unmapped range: kvmgt finds it only by base gfn.
    expect(svc.refs[0x0fff]).to.equal(1);
    expect(cache.unmapRange(0x0e00, 1)).to.equal(1);
    empty(svc, cache);
  });

  it("dmaUnmap over a huge range walks the entries, not the pages", () => {
    const { svc, cache } = rig({ guestPages: 0x4000 });
    cache.map(5, 1);
    cache.map(0x3fff, 1);
    expect(cache.unmapRange(0, 2 ** 40)).to.equal(2);
    empty(svc, cache);
  });

  it("a failed device mapping is -ENOMEM and pins nothing; a failed pin keeps its errno", () => {
    const { svc, cache } = rig({ guestPages: 0x4000 });
    svc.failMap = () => true;
    expect(cache.map(0x10, 1)).to.equal(-12);
    expect(cache.map(0x200, 512)).to.equal(-12);
    svc.failMap = undefined;
    svc.failPin = (g) => (g === 0x20 ? "EFAULT" : undefined);
    expect(cache.map(0x20, 1)).to.equal(-14);
    svc.failPin = (g) => (g === 0x410 ? "EFAULT" : undefined);
    expect(cache.map(0x400, 512)).to.equal(-14);
    expect(svc.counters.unpinCalls).to.equal(2, "the 2M map failure and the pin failure at page 16 each unpin once");
    expect(cache.counters.failures).to.equal(4);
    expect(cache.map(0x10000, 1)).to.equal(-22, "outside guest RAM");
    empty(svc, cache);
  });

  it("a translation the core already revoked is counted on release, not thrown", () => {
    const { svc, cache } = rig();
    cache.map(0x30, 1);
    // Simulate the core's invalidation releasing the handle first.
    const origRelease = svc.release.bind(svc);
    let first = true;
    svc.release = (h) => {
      origRelease(h);
      if (first) {
        first = false;
        origRelease(h);
      }
    };
    expect(cache.unmapRange(0x30, 1)).to.equal(1);
    expect(cache.counters.revoked).to.equal(1);
    empty(svc, cache);
  });

  it("property: the cache matches a reference model of gfn -> {size, kref} under random operations", () => {
    type Op = { k: "map"; gfn: number; big: boolean } | { k: "put"; gfn: number } | { k: "pin"; gfn: number } | { k: "unmap"; first: number; n: number };
    const gfn = fc.integer({ min: 0, max: 15 }).map((i) => i * 512 + (i % 3) * 7);
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ k: fc.constant("map" as const), gfn, big: fc.boolean() }),
      fc.record({ k: fc.constant("put" as const), gfn }),
      fc.record({ k: fc.constant("pin" as const), gfn }),
      fc.record({ k: fc.constant("unmap" as const), first: fc.integer({ min: 0, max: 8192 }), n: fc.integer({ min: 1, max: 4096 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const { svc, cache } = rig({ guestPages: 0x2400 });
        const model = new Map<number, { big: boolean; kref: number; dma: number }>();
        for (const o of ops) {
          if (o.k === "map") {
            const g = o.big ? o.gfn - (o.gfn % 512) : o.gfn;
            const r = cache.map(g, o.big ? 512 : 1);
            expect(r).to.be.at.least(0);
            const m = model.get(g);
            if (m !== undefined && m.big === o.big) m.kref++;
            else model.set(g, { big: o.big, kref: 1, dma: r });
          } else if (o.k === "put" || o.k === "pin") {
            const m = model.get(o.gfn);
            if (m === undefined) continue;
            if (o.k === "pin") {
              expect(cache.pinByDma(m.dma)).to.equal(0);
              m.kref++;
            } else {
              cache.unmapByDma(m.dma);
              if (--m.kref === 0) model.delete(o.gfn);
            }
          } else {
            cache.unmapRange(o.first, o.n);
            for (const g of [...model.keys()]) if (g >= o.first && g < o.first + o.n) model.delete(g);
          }
          expect(cache.checkConsistency()).to.equal(undefined);
          expect(cache.size).to.equal(model.size);
          let frames = 0;
          for (const [g, m] of model) {
            expect(cache.lookupGfn(g)).to.deep.include({ size: m.big ? SIZE_2M : 4096, kref: m.kref });
            frames += m.big ? 512 : 1;
          }
          expect(svc.pinRefs).to.equal(frames);
          expect(svc.liveMappedPages()).to.equal(frames);
        }
        cache.destroy();
        empty(svc, cache);
      }),
      { numRuns: 150 },
    );
  });
});
