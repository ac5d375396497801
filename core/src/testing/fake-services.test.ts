import { expect } from "chai";
import { IOMMU_READ, IOMMU_WRITE } from "../vfio/type1/vfio-dma.js";
import { FakeGuest, FakeParent, FakeVgpuServices, HOST_BASE_PFN, NO_FAKE_LEAKS } from "./fake-services.js";
import { outcome, thrown } from "./errors.js";

const RW = IOMMU_READ | IOMMU_WRITE;

describe("testing: the fake VgpuServices", () => {
  it("refuses bad pins with the core's errno, all or nothing, and charges a frame listed twice once", () => {
    const guest = new FakeGuest({ guestPages: 64, memlockPages: 3 });
    const s = guest.servicesFor("a");
    const out = new Uint32Array(600);
    expect(outcome(() => s.pinPages(0, 513, RW, out))).to.equal("E2BIG:pin-too-many-pages");
    expect(outcome(() => s.pinPages(0, 0, RW, out))).to.equal("EINVAL:pin-no-pages");
    expect(outcome(() => s.pinPages(0, 1, 4, out))).to.equal("EINVAL:pin-bad-prot");
    expect(outcome(() => s.pinPagesArray([1, 64], 2, RW, out))).to.equal("EINVAL:pin-outside-guest-ram");
    expect(outcome(() => s.pinPagesArray([1, 2, 3, 4], 4, RW, out))).to.equal("ENOMEM:memlock-limit");
    expect([s.pinRefs, guest.lockedPages, s.counters.pinCalls, s.counters.pinnedPages]).to.deep.equal([0, 0, 5, 0]);
    expect(s.pinPagesArray([7, 8, 7, 9], 4, RW, out)).to.equal(4);
    expect([...out.subarray(0, 4)]).to.deep.equal([7, 8, 7, 9].map((g) => HOST_BASE_PFN + g));
    expect([s.pinRefs, s.pinnedFrames, s.refs[7], guest.lockedPages, s.counters.pinnedPages]).to.deep.equal([4, 3, 2, 3, 4]);
    s.unpinPagesArray([7, 8, 7, 9], 4);
    expect(s.leaks()).to.deep.equal(NO_FAKE_LEAKS);
  });

  it("counts an unpin of a frame the vGPU does not hold as a WARN, on the guest shared by its vGPUs", () => {
    const guest = new FakeGuest({ guestPages: 16 });
    const a = guest.servicesFor("a");
    const b = guest.servicesFor("b");
    a.pinPages(5, 1, RW, new Uint32Array(1));
    b.unpinPages(5, 1);
    expect([guest.refs[5], a.pinRefs, b.counters.badUnpins, guest.warnings]).to.deep.equal([1, 1, 1, ["b: unpin of frame 5 it does not hold"]]);
    a.unpinPages(5, 1);
    expect([guest.totalPins, guest.lockedPages]).to.deep.equal([0, 0]);
  });

  it("maps a translation as one segment, a guard page apart; release unmaps and unpins once; the isolation checker names owners", () => {
    const parent = new FakeParent();
    const a = new FakeVgpuServices({ vgpu: "a", guestPages: 64, parent });
    const b = new FakeVgpuServices({ vgpu: "b", guestPages: 64, parent });
    const ta = a.translate([3, 9], { prot: RW, device: parent });
    const tb = b.translate({ start: 3, npages: 1 }, { prot: RW, device: parent });
    expect([...ta.dmaAddrs!]).to.deep.equal([0x1_0000_0000n, 0x1_0000_1000n]);
    expect([ta.segments!.count, ta.segments!.addr[0], ta.segments!.length[0], tb.dmaAddrs![0]]).to.deep.equal([1, 0x1_0000_0000n, 8192, 0x1_0000_3000n]);
    expect(a.checkIsolation([0x1_0000_1000n, 0x1_0000_2000n, 0x1_0000_3000n])).to.deep.equal([
      { addr: 0x1_0000_2000n, kind: "unmapped" },
      { addr: 0x1_0000_3000n, kind: "other-vgpu", owner: "b" },
    ]);
    expect(thrown(() => a.translate([1], { prot: RW, device: { name: "other" } })).code).to.equal("ENODEV");
    a.failMap = () => true;
    expect(outcome(() => a.translate([1], { prot: RW, device: parent }))).to.equal("ENOMEM:dma-mapping-error");
    expect([a.pinRefs, a.counters.translateCalls, a.counters.translations, a.counters.maps]).to.deep.equal([2, 3, 1, 1]);
    a.release(ta.handle);
    expect(outcome(() => a.release(ta.handle))).to.equal("EINVAL:translate-unknown-handle");
    b.release(tb.handle);
    expect([a.counters.releaseCalls, a.counters.releases, a.counters.unmaps, [...a.unmapsByHandle.values()], parent.mappedRanges]).to.deep.equal([2, 1, 1, [1], 0]);
    expect([a.leaks(), b.leaks()]).to.deep.equal([NO_FAKE_LEAKS, NO_FAKE_LEAKS]);
  });

  it("hands a freed single page out again first when the parent recycles", () => {
    const parent = new FakeParent({ recycle: true });
    const s = new FakeVgpuServices({ guestPages: 16, parent });
    const first = s.translate([1], { prot: RW, device: parent });
    s.release(first.handle);
    expect(s.translate([2], { prot: RW, device: parent }).dmaAddrs![0]).to.equal(first.dmaAddrs![0]);
  });

  it("traps a guest write to a protected frame to the vGPU that protected it, after it landed", () => {
    const guest = new FakeGuest({ guestPages: 16 });
    const s = guest.servicesFor("a");
    const seen: [bigint, number][] = [];
    s.onTrackedWrite = (gpa, data) => seen.push([gpa, data[0]!]);
    expect([s.protect(3), s.protect(16)]).to.deep.equal([0, -22]);
    expect([guest.guestWrite(0x3008n, Uint8Array.of(7)), guest.guestWrite(0x4000n, Uint8Array.of(8)), guest.guestWrite(0x10000n, Uint8Array.of(9))]).to.deep.equal([0, 0, -14]);
    const back = new Uint8Array(1);
    s.dmaRw(0x3008n, back, false);
    expect([seen, back[0]]).to.deep.equal([[[0x3008n, 7]], 7]);
    s.unprotect(3);
    expect(s.leaks()).to.deep.equal(NO_FAKE_LEAKS);
  });
});
