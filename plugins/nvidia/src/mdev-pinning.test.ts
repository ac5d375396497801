import { expect } from "chai";
import { VfioError } from "@vgpu-iommu/core";
import { FakeVgpuServices, rejection } from "@vgpu-iommu/core/testing";
import { openBench, scrambled, setBits, type Bench } from "./testing/harness.js";
import { NV_INITIAL_CACHE_SIZE } from "./mapping-cache.js";

/** What every test ends with: nothing pinned, mapped or warned, anywhere. */
async function expectNoLeaks(b: Bench): Promise<void> {
  await b.teardown();
  expect(b.guest.totalPins, "pins left").to.equal(0);
  expect(b.guest.lockedPages, "memlock charge left").to.equal(0);
  expect(b.guest.parent.mappedRanges, "device mappings left").to.equal(0);
  expect(b.guest.warnings, "unbalanced unpins").to.deep.equal([]);
  expect(b.vendor.resources.counters).to.deep.include({ fbSegmentsUsed: 0, chidsUsed: 0 });
}

describe("nvidia mdev: GET_HOST_PFN (gpfn_list)", () => {
  let b: Bench;
  beforeEach(async () => (b = await openBench()));
  afterEach(async () => expectNoLeaks(b));

  it("pins arbitrary frames with the array form, returns host PFNs, and refcounts repeats", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    const out = v!.translateGfns([10, 3, 700, 10], "GET_HOST_PFN");
    expect([...out]).to.deep.equal([10, 3, 700, 10].map((g) => b.guest.pfnOf[g]));
    expect([v!.hostPfnRefcount(10), v!.hostPfnRefcount(3), v!.hostPfnRefcount(700)]).to.deep.equal([2, 1, 1]);
    v!.translateGfns([3], "GET_HOST_PFN");
    expect(v!.hostPfnRefcount(3)).to.equal(2);
    expect([v!.pins, s!.pinRefs, s!.counters.pinCalls, s!.counters.pinnedPages]).to.deep.equal([5, 5, 2, 5]);
    expect(b.guest.lockedPages).to.equal(3);

    expect(v!.unpinGfns([10], "GET_HOST_PFN")).to.equal(1);
    expect([v!.hostPfnRefcount(10), s!.refs[10]]).to.deep.equal([1, 1]);
    expect(v!.unpinGfns([10, 3, 3, 700], "GET_HOST_PFN")).to.equal(4);
    expect([v!.pins, s!.pinRefs, b.guest.lockedPages]).to.deep.equal([0, 0, 0]);
    // An unpin of a frame not in the list is logged, not passed to VFIO.
    const calls = s!.counters.unpinCalls;
    expect(v!.unpinGfns([10], "GET_HOST_PFN")).to.equal(0);
    expect(s!.counters.unpinCalls).to.equal(calls);
  });

  it("splits a request of more than 512 frames into VFIO calls of 512", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    v!.translateGfns(scrambled(2000, 1300), "GET_HOST_PFN");
    expect([s!.counters.pinCalls, s!.counters.pinnedPages, v!.pins]).to.deep.equal([3, 1300, 1300]);
    expect(v!.unpinGfns(scrambled(2000, 1300), "GET_HOST_PFN")).to.equal(1300);
    expect([s!.counters.unpinCalls, s!.counters.unpinnedPages]).to.deep.equal([3, 1300]);
  });

  it("under memlock pressure fails the whole request with -ENOMEM and leaves nothing pinned", async () => {
    b.guest.memlockPages = 1000;
    const [v] = b.vgpus;
    const [s] = b.services;
    const e = await rejection(() => v!.translateGfns(scrambled(0, 1300), "GET_HOST_PFN"));
    expect([e.code, e.errno, e.reason]).to.deep.equal(["ENOMEM", 12, "memlock-limit"]);
    // First chunk of 512 pinned, second refused whole, first unpinned again.
    expect([s!.counters.pinCalls, s!.counters.pinnedPages, s!.counters.unpinCalls, s!.counters.unpinnedPages]).to.deep.equal([2, 512, 1, 512]);
    expect([v!.pins, s!.pinRefs, b.guest.lockedPages, v!.hostPfnRefcount(0)]).to.deep.equal([0, 0, 0, 0]);
  });

  it("treats a short pin count as a WARN: unpins what was pinned and fails with -EIO", async () => {
    const short = new (class extends FakeVgpuServices {
      override pinPagesArray(gfns: ArrayLike<number>, npage: number, prot: number, out: Uint32Array): number {
        const half = npage >> 1;
        super.pinPagesArray(gfns, half, prot, out);
        return half;
      }
    })({ guest: b.guest, vgpu: "short" });
    const v = await b.add("NV-2Q", short);
    const rec = b.events[1]!;
    const e = await rejection(() => v.translateGfns([1, 2, 3, 4, 5, 6], "GET_HOST_PFN"));
    expect([e.code, e.reason, e.fields["requested"], e.fields["pinned"]]).to.deep.equal(["EIO", "pin-count-mismatch", 6, 3]);
    expect(rec.warned).to.deep.equal([{ vgpu: "vgpu1", site: "nv_vgpu_translate_gfn_to_pfn", details: { requested: 6, pinned: 3 } }]);
    expect([short.pinRefs, short.counters.unpinnedPages, v.pins]).to.deep.equal([0, 3, 0]);
  });
});

describe("nvidia mdev: GET_IOVA (mapping_cache, one mapping per batch)", () => {
  let b: Bench;
  beforeEach(async () => (b = await openBench()));
  afterEach(async () => expectNoLeaks(b));

  it("maps a batch of 512 arbitrary frames as one translation and returns IOVA page numbers", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    const frames = scrambled(4096, 512);
    const out = v!.translateGfns(frames, "GET_IOVA");
    expect([s!.counters.translations, s!.counters.maps, s!.counters.pinCalls, s!.liveTranslations]).to.deep.equal([1, 1, 0, 1]);
    expect([v!.pins, s!.pinRefs, v!.liveNodes, v!.liveTranslations]).to.deep.equal([512, 512, 1, 1]);
    for (let i = 0; i < 512; i++) expect(out[i]).to.equal(out[0]! + i);
    expect(v!.cacheSlot(frames[0]!)).to.be.greaterThan(0); // the node hangs on the base frame
    expect(v!.cacheSlot(frames[1]!)).to.equal(-v!.cacheSlot(frames[0]!)); // GFN_PINNED, tagged with its batch
    expect(v!.cacheSlot(4096 + 600)).to.equal(0);
    expect(s!.checkIsolation([BigInt(out[7]!) << 12n])).to.deep.equal([]);
  });

  it("grows the cache up to the largest frame seen, in NV_INITIAL_CACHE_SIZE steps", () => {
    const [v] = b.vgpus;
    v!.translateGfns([3, NV_INITIAL_CACHE_SIZE + 5], "GET_IOVA");
    expect(v!.cacheSlot(NV_INITIAL_CACHE_SIZE + 5)).to.be.lessThan(0);
    expect(v!.unpinGfns([3, NV_INITIAL_CACHE_SIZE + 5], "GET_IOVA")).to.equal(2);
  });

  it("splits a request of more than 512 frames into batches of 512, one mapping and one node each", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    const frames = scrambled(10_000, 1300);
    const out = v!.translateGfns(frames, "GET_IOVA");
    expect([s!.counters.translations, s!.counters.maps, v!.liveNodes, v!.pins]).to.deep.equal([3, 3, 3, 1300]);
    expect(new Set(out).size).to.equal(1300);
    expect(v!.unpinGfns(frames, "GET_IOVA")).to.equal(1300);
    expect([s!.counters.releases, s!.counters.unmaps, v!.liveNodes, v!.pins, s!.counters.pinCalls, s!.counters.unpinCalls]).to.deep.equal([3, 3, 0, 0, 0, 0]);
  });

  it('refuses a frame already in the cache with -EEXIST ("Guest PFN already pinned"), pinning nothing more', async () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    v!.translateGfns([5, 6, 7], "GET_IOVA");
    const e = await rejection(() => v!.translateGfns([9, 6], "GET_IOVA"));
    expect([e.code, e.errno, e.reason, e.fields["gpfn"]]).to.deep.equal(["EEXIST", 17, "guest-pfn-already-pinned", 6]);
    // The shim pins before it checks: the refused batch was pinned and mapped, then released.
    expect([s!.counters.translations, s!.counters.releases, s!.counters.maps, s!.counters.unmaps]).to.deep.equal([2, 1, 2, 1]);
    expect([v!.pins, s!.pinRefs, v!.liveNodes, v!.cacheSlot(9)]).to.deep.equal([3, 3, 1, 0]);
    const dup = await rejection(() => v!.translateGfns([20, 21, 20], "GET_IOVA"));
    expect([dup.code, dup.fields["gpfn"]]).to.deep.equal(["EEXIST", 20]);
    expect([v!.pins, v!.cacheSlot(20), v!.cacheSlot(21)]).to.deep.equal([3, 0, 0]);
  });

  it("unwinds earlier batches of the same request when a later one fails", async () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    const frames = scrambled(0, 600);
    frames[550] = frames[10]!;
    const e = await rejection(() => v!.translateGfns(frames, "GET_IOVA"));
    expect(e.code).to.equal("EEXIST");
    expect([v!.pins, s!.pinRefs, v!.liveNodes, s!.liveTranslations, s!.counters.translations, s!.counters.releases]).to.deep.equal([0, 0, 0, 0, 2, 2]);
  });

  it("under memlock pressure fails the whole request with -ENOMEM: the first batch is unmapped and unpinned", async () => {
    b.guest.memlockPages = 1000;
    const [v] = b.vgpus;
    const [s] = b.services;
    const e = await rejection(() => v!.translateGfns(scrambled(0, 1300), "GET_IOVA"));
    expect([e.code, e.reason]).to.deep.equal(["ENOMEM", "memlock-limit"]);
    expect([s!.counters.translations, s!.counters.maps, s!.counters.unmaps, s!.counters.releases]).to.deep.equal([1, 1, 1, 1]);
    expect([v!.pins, s!.pinRefs, b.guest.lockedPages, v!.liveNodes, v!.cacheSlot(0)]).to.deep.equal([0, 0, 0, 0, 0]);
  });

  it("RM unpin of the whole batch releases its one translation (one unmap, no extra pin call)", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    const frames = scrambled(300, 512);
    v!.translateGfns(frames, "GET_IOVA");
    expect(v!.unpinGfns(frames, "GET_IOVA")).to.equal(512);
    expect([s!.counters.releases, s!.counters.unmaps, s!.counters.pinCalls, s!.counters.unpinCalls, v!.liveNodes, v!.pins]).to.deep.equal([1, 1, 0, 0, 0, 0]);
    expect(b.events[0]!.revoked).to.deep.equal([]);
  });

  it("RM unpin of the base frame alone destroys the node and its mapping; the other frames stay pinned until close", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    const frames = scrambled(300, 512);
    v!.translateGfns(frames, "GET_IOVA");
    expect(v!.unpinGfns([frames[0]!], "GET_IOVA")).to.equal(1);
    expect([v!.liveNodes, v!.liveTranslations, s!.liveTranslations, v!.pins, s!.pinRefs]).to.deep.equal([0, 0, 0, 511, 511]);
    expect([s!.counters.releases, s!.counters.pinCalls, s!.counters.pinnedPages]).to.deep.equal([1, 1, 511]);
    expect(b.events[0]!.revoked.map((e) => [e.baseGfn, e.npages, e.reason, e.repinned])).to.deep.equal([[frames[0], 512, "rm-unpin", 511]]);
    expect(v!.cacheSlot(frames[0]!)).to.equal(0);
    expect(v!.cacheSlot(frames[1]!)).to.be.lessThan(0);
  });
});

describe("nvidia mdev: the DMA_UNMAP notifier", () => {
  let b: Bench;
  beforeEach(async () => (b = await openBench()));
  afterEach(async () => expectNoLeaks(b));

  it("unpins a whole batch in range but keeps its node (RM's sg mapping) until close; the device mapping is gone", async () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    const frames = scrambled(1024, 512);
    const out = v!.translateGfns(frames, "GET_IOVA");
    const before = [v!.liveNodes, v!.liveTranslations, s!.liveTranslations];
    expect(b.guest.unmapDma(1024, 2048, b.vgpus)).to.equal(1); // one notification suffices
    expect(before).to.deep.equal([1, 1, 1]);
    expect([v!.liveNodes, v!.liveTranslations, s!.liveTranslations]).to.deep.equal([1, 0, 0]);
    expect([v!.pins, s!.pinsIn(1024, 3072)]).to.deep.equal([0, 0]);
    expect(b.events[0]!.dmaUnmapped).to.deep.equal([{ vgpu: "vgpu0", firstGfn: 1024, npages: 2048, hostPfnUnpinned: 0, iovaUnpinned: 512, batches: 1 }]);
    expect(b.events[0]!.revoked).to.deep.equal([{ vgpu: "vgpu0", baseGfn: frames[0], iovaPage: out[0], npages: 512, reason: "dma-unmap", repinned: 0 }]);
    // RM still holds the batch's IOVAs: the parent's isolation check sees them unmapped.
    expect(s!.checkIsolation([BigInt(out[3]!) << 12n])).to.deep.equal([{ addr: BigInt(out[3]!) << 12n, kind: "unmapped" }]);
    // A cleared member slot can be pinned again; the base slot still holds the node (the shim's quirk).
    v!.translateGfns([frames[1]!], "GET_IOVA");
    expect((await rejection(() => v!.translateGfns([frames[0]!], "GET_IOVA"))).reason).to.equal("guest-pfn-already-pinned");
    await v!.close();
    expect([v!.liveNodes, v!.pins, s!.liveTranslations]).to.deep.equal([0, 0, 0]);
    expect(b.events[0]!.swept).to.deep.equal([{ vgpu: "vgpu0", reason: "close", hostPfnUnpinned: 0, iovaUnpinned: 1, nodesDestroyed: 2 }]);
  });

  it("for a batch straddling the range, unpins the frames inside and keeps those outside pinned", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    const frames = new Float64Array(512);
    for (let i = 0; i < 256; i++) frames[i] = 5000 + i; // base 5000: outside the first unmap
    for (let i = 0; i < 256; i++) frames[256 + i] = 100 + i;
    v!.translateGfns(frames, "GET_IOVA");
    b.guest.unmapDma(0, 4096, b.vgpus);
    expect([v!.pins, s!.pinsIn(0, 4096), s!.pinsIn(4096, 8192)]).to.deep.equal([256, 0, 256]);
    // Translation released (256 + 256 unpinned), the 256 outside pinned again with one array pin.
    expect([s!.counters.releases, s!.counters.pinCalls, s!.counters.pinnedPages, v!.pinCounters!.repinnedPages]).to.deep.equal([1, 1, 256, 256]);
    expect([v!.cacheSlot(100), v!.cacheSlot(5001) < 0, v!.cacheSlot(5000) > 0, v!.liveNodes]).to.deep.equal([0, true, true, 1]);
    b.guest.unmapDma(4096, 4096, b.vgpus);
    expect([v!.pins, s!.counters.unpinCalls, s!.counters.unpinnedPages, v!.liveNodes]).to.deep.equal([0, 1, 256, 1]);
    expect(b.events[0]!.revoked.map((e) => [e.reason, e.repinned])).to.deep.equal([["dma-unmap", 256]]);
  });

  it("drops ONE host-PFN reference per notification: type1 notifies again while pins remain", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    for (let i = 0; i < 3; i++) v!.translateGfns([42], "GET_HOST_PFN");
    v!.translateGfns([43], "GET_HOST_PFN");
    expect(b.guest.unmapDma(0, 1024, b.vgpus)).to.equal(3);
    expect(b.events[0]!.dmaUnmapped.map((e) => e.hostPfnUnpinned)).to.deep.equal([2, 1, 1]);
    expect([v!.hostPfnRefcount(42), v!.hostPfnRefcount(43), s!.pinRefs]).to.deep.equal([0, 0, 0]);
  });

  it("with frames pinned once, one notification leaves no pin in the range (mixed modes)", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    v!.translateGfns([7, 8, 9000], "GET_HOST_PFN");
    v!.translateGfns([10, 11, 9001], "GET_IOVA");
    v!.dmaUnmap(0n, 1024n << 12n);
    expect([s!.pinsIn(0, 1024), s!.pinsIn(1024, 1 << 16), v!.pins]).to.deep.equal([0, 2, 2]);
  });

  it("a frame pinned 12 times in host-PFN mode outlasts type1's 10 retries: the simulated BUG", () => {
    const [v] = b.vgpus;
    for (let i = 0; i < 12; i++) v!.translateGfns([42], "GET_HOST_PFN");
    expect(() => b.guest.unmapDma(0, 1024, b.vgpus)).to.throw(/host crashed/);
    expect([b.guest.notifications, v!.hostPfnRefcount(42)]).to.deep.equal([11, 1]);
    b.guest.bug = undefined;
  });

  it('with hostPfnUnmap "all", one notification drops every reference', async () => {
    await b.teardown();
    b = await openBench({ vendor: { pinning: { hostPfnUnmap: "all" } } });
    const [v] = b.vgpus;
    for (let i = 0; i < 12; i++) v!.translateGfns([42], "GET_HOST_PFN");
    expect(b.guest.unmapDma(0, 1024, b.vgpus)).to.equal(1);
    expect(v!.pins).to.equal(0);
  });

  it("survives a translation the core revoked on its own (memslot removal): nothing to release twice", () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    const frames = scrambled(2048, 64);
    v!.translateGfns(frames, "GET_IOVA");
    expect(s!.revoke(2048, 64)).to.equal(1);
    v!.dmaUnmap(2048n << 12n, 64n << 12n);
    expect(b.events[0]!.revoked.map((e) => e.reason)).to.deep.equal(["core-revoked"]);
    expect([v!.pins, s!.pinRefs, v!.liveNodes]).to.deep.equal([0, 0, 1]);
  });
});

describe("nvidia mdev: reset, close, several vGPUs, migration", () => {
  let b: Bench;
  beforeEach(async () => (b = await openBench()));
  afterEach(async () => expectNoLeaks(b));

  /** Host-PFN refs 3 (frame 1 twice), two IOVA batches, one of them revoked by a notifier. */
  function populate(): void {
    const v = b.vgpus[0]!;
    v.translateGfns([1, 1, 2], "GET_HOST_PFN");
    v.translateGfns(scrambled(4000, 512), "GET_IOVA");
    v.translateGfns(scrambled(8000, 100), "GET_IOVA");
    b.guest.unmapDma(8000, 50, b.vgpus);
  }

  it("VFIO_DEVICE_RESET posts VM_REBOOT, sweeps every reference and batch, and does a VF FLR", async () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    populate();
    expect([v!.pins, v!.liveNodes, s!.liveTranslations]).to.deep.equal([3 + 512 + 50, 2, 1]);
    await v!.reset("flr");
    expect([v!.pins, s!.pinRefs, v!.liveNodes, s!.liveTranslations, v!.vfFlrs, b.manager.posted.VM_REBOOT]).to.deep.equal([0, 0, 0, 0, 1, 1]);
    expect(b.events[0]!.swept).to.deep.equal([{ vgpu: "vgpu0", reason: "reset", hostPfnUnpinned: 3, iovaUnpinned: 562, nodesDestroyed: 2 }]);
    // The vGPU stays open and usable after a reset.
    v!.translateGfns([5], "GET_IOVA");
    expect(v!.pins).to.equal(1);
  });

  it("sweeps on reset even when the plugin does not answer VM_REBOOT; an engine reset touches no pin", async () => {
    const [v] = b.vgpus;
    b.manager.answer("VM_REBOOT", "timeout");
    v!.translateGfns([1, 2], "GET_HOST_PFN");
    await v!.reset("engine");
    expect([v!.pins, b.manager.posted.VM_REBOOT]).to.deep.equal([2, 0]);
    await v!.reset("flr");
    expect([v!.pins, v!.vfFlrs]).to.deep.equal([0, 1]);
  });

  it("close posts VM_SHUTDOWN, kills a plugin that does not answer, and sweeps the same way", async () => {
    const [v] = b.vgpus;
    const [s] = b.services;
    populate();
    b.manager.answer("VM_SHUTDOWN", "timeout");
    await v!.close();
    expect([v!.isOpen, v!.pins, s!.pinRefs, s!.liveTranslations, b.manager.kills, v!.vfFlrs]).to.deep.equal([false, 0, 0, 0, 1, 1]);
    expect(b.events[0]!.swept).to.deep.equal([{ vgpu: "vgpu0", reason: "close", hostPfnUnpinned: 3, iovaUnpinned: 562, nodesDestroyed: 2 }]);
    const e = await rejection(() => v!.translateGfns([1], "GET_HOST_PFN"));
    expect([e.code, e.reason]).to.deep.equal(["EINVAL", "vgpu-not-open"]);
  });

  it("takes several vGPUs in one VM; they share the parent's IOVA space but not its mappings", async () => {
    expect(b.vendor.capabilities.onePerVm).to.equal(false);
    const w = await b.add();
    const v = b.vgpus[0]!;
    const [sv, sw] = b.services;
    const a = v.translateGfns([77, 78], "GET_IOVA");
    const c = w.translateGfns([77, 78], "GET_IOVA"); // the same frames: no conflict across vGPUs
    expect(a[0]).not.to.equal(c[0]);
    expect([b.guest.refs[77], sv!.pinRefs, sw!.pinRefs]).to.deep.equal([2, 2, 2]);
    expect(sv!.checkIsolation([BigInt(c[0]!) << 12n])).to.deep.equal([{ addr: BigInt(c[0]!) << 12n, kind: "other-vgpu", owner: "vgpu1" }]);
    expect(b.guest.unmapDma(0, 1024, b.vgpus)).to.equal(1);
    expect([b.guest.pinsIn(0, 1024), v.liveNodes, w.liveNodes]).to.deep.equal([0, 1, 1]);
  });

  it("reports every frame pinned in either mode as dirty, and only those", () => {
    const [v] = b.vgpus;
    expect(b.vendor.capabilities.migration).to.equal(true);
    v!.translateGfns([3, 9, 9], "GET_HOST_PFN");
    v!.translateGfns([40, 12, 13], "GET_IOVA"); // base 40
    expect(setBits(v!.dirtyPages!(0, 64).bitmap, 0, 64)).to.deep.equal([3, 9, 12, 13, 40]);
    b.guest.unmapDma(40, 8, b.vgpus); // the base loses its pin, keeps its node
    expect(setBits(v!.dirtyPages!(0, 64).bitmap, 0, 64)).to.deep.equal([3, 9, 12, 13]);
    v!.unpinGfns([9], "GET_HOST_PFN"); // still referenced once
    const r = v!.dirtyPages!(8, 8);
    expect([r.firstGfn, r.npages, setBits(r.bitmap, 8, 8)]).to.deep.equal([8, 8, [9, 12, 13]]);
  });
});

describe("nvidia mdev: preconditions", () => {
  it("rejects an empty or malformed frame list with -EINVAL", async () => {
    const b = await openBench();
    const [v] = b.vgpus;
    expect((await rejection(() => v!.translateGfns([], "GET_IOVA"))).reason).to.equal("no-frames");
    expect((await rejection(() => v!.translateGfns([1, -2], "GET_IOVA"))).reason).to.equal("bad-gpfn");
    expect((await rejection(() => v!.translateGfns([1.5], "GET_HOST_PFN"))).reason).to.equal("bad-gpfn");
    // A frame outside guest RAM: the pin's -EINVAL, nothing left behind.
    const e = await rejection(() => v!.translateGfns([1, 1 << 20], "GET_IOVA"));
    expect(e).to.be.instanceOf(VfioError);
    expect([e.code, v!.pins, v!.liveNodes]).to.deep.equal(["EINVAL", 0, 0]);
    await expectNoLeaks(b);
  });
});
