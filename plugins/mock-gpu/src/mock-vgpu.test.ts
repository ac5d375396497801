import { expect } from "chai";
import sinon from "sinon";
import { KernelError, VFIO_PCI_BAR0_REGION_INDEX, VfioError } from "@vgpu-iommu/core";
import { FakeParent, FakeVgpuServices, NO_FAKE_LEAKS, outcome } from "@vgpu-iommu/core/testing";
import { DEFAULT_SCRATCH_ADDRESS, MOCK_SMALL, MockGpuVendor, type MockGpuOptions } from "./mock-gpu-vendor.js";
import { ENTRY_EMPTY, ENTRY_MAPPED, ENTRY_REVOKED, ENTRY_SCRATCH, ENTRY_STALE, type MockVgpu } from "./mock-vgpu.js";
import { MockGuestDriver } from "./mock-guest-driver.js";
import { gttEntry } from "./gtt-geometry.js";

const BAR0 = VFIO_PCI_BAR0_REGION_INDEX;
const SCRATCH = DEFAULT_SCRATCH_ADDRESS;

interface Rig {
  vendor: MockGpuVendor;
  services: FakeVgpuServices;
  vgpu: MockVgpu;
  driver: MockGuestDriver;
}

async function rig(options: MockGpuOptions = {}, services = new FakeVgpuServices({ guestPages: 1024 })): Promise<Rig> {
  const vendor = new MockGpuVendor(options);
  const vgpu = vendor.create(MOCK_SMALL, services.vgpu, services);
  await vgpu.open();
  return { vendor, services, vgpu, driver: new MockGuestDriver(vgpu, vgpu.geometry) };
}

/** Closes and destroys, then checks that nothing is left anywhere. */
async function teardown({ vendor, services, vgpu }: Rig): Promise<void> {
  await vgpu.close();
  vendor.destroy(vgpu);
  expect(services.leaks()).to.deep.equal(NO_FAKE_LEAKS);
  expect([vgpu.cache.count, vgpu.cache.refs, vendor.usedSlots]).to.deep.equal([0, 0, 0]);
  for (const [id, n] of services.unmapsByHandle) expect(n, `unmaps of handle ${id}`).to.equal(1);
  expect(vgpu.listenerCount()).to.equal(0);
}

describe("mock GPU: vGPU on fake services", () => {
  afterEach(() => sinon.restore());

  it("pins and maps a present entry once, for the parent device, and shadows its device address", async () => {
    const r = await rig();
    const translate = sinon.spy(r.services, "translate");
    r.driver.map(5, 100);
    expect(translate.callCount).to.equal(1);
    expect(translate.firstCall.args[0]).to.deep.equal({ start: 100, npages: 1 });
    expect(translate.firstCall.args[1]).to.deep.equal({ prot: 3, device: r.services.parentDevice });
    expect([r.services.pinRefs, r.services.refs[100], r.services.counters.maps]).to.deep.equal([1, 1, 1]);
    expect(r.vgpu.shadowEntry(5)).to.equal(r.services.parent.iovaBase);
    expect(r.vgpu.entryState(5)).to.equal(ENTRY_MAPPED);
    expect(r.driver.readEntry(5)).to.equal(gttEntry(100));
    expect(r.vgpu.shadowEntry(6)).to.equal(SCRATCH);
    expect(r.vgpu.stats()).to.deep.include({ cacheEntries: 1, refs: 1, translations: 1, releases: 0 });
    await teardown(r);
    expect([r.services.counters.releaseCalls, r.services.counters.unmaps, r.services.counters.framesUnpinned]).to.deep.equal([1, 1, 1]);
  });

  it("shares one translation between entries of the same gfn (refcount 2) and releases it with the last", async () => {
    const r = await rig();
    r.driver.map(0, 7);
    r.driver.map(1, 7);
    const slot = r.vgpu.cache.findGfn(7);
    expect([r.services.counters.translateCalls, r.services.pinRefs, r.vgpu.cache.refOf(slot), r.vgpu.cache.count]).to.deep.equal([1, 1, 2, 1]);
    expect(r.vgpu.shadowEntry(0)).to.equal(r.vgpu.shadowEntry(1));
    r.driver.clear(0);
    expect([r.vgpu.cache.refOf(slot), r.services.counters.releaseCalls, r.services.pinRefs]).to.deep.equal([1, 0, 1]);
    expect(r.vgpu.entryState(0)).to.equal(ENTRY_EMPTY);
    r.driver.clear(1);
    expect([r.vgpu.cache.count, r.services.counters.releaseCalls, r.services.pinRefs]).to.deep.equal([0, 1, 0]);
    await teardown(r);
  });

  it("maps the new frame before releasing the old one on a rewrite (add before remove)", async () => {
    const r = await rig();
    r.driver.map(3, 10);
    const translate = sinon.spy(r.services, "translate");
    const release = sinon.spy(r.services, "release");
    r.driver.map(3, 11);
    expect(translate.calledOnce && release.calledOnce).to.be.true;
    expect(translate.calledBefore(release)).to.be.true;
    expect([r.services.refs[10], r.services.refs[11], r.vgpu.cache.count]).to.deep.equal([0, 1, 1]);
    // Rewriting the same value takes a reference, then drops the old one: no translate, no release.
    r.driver.map(3, 11);
    expect([translate.callCount, release.callCount, r.vgpu.cache.refs]).to.deep.equal([1, 1, 1]);
    await teardown(r);
  });

  it("parks a 4-byte half and shadows the entry when the other half arrives", async () => {
    const r = await rig({ fourByteOnly: true });
    const events: boolean[] = [];
    const sub = r.vgpu.on("entryWritten", (e) => events.push(e.committed));
    const value = gttEntry(0x1_2345); // a gfn above 2^16 so both halves matter
    const services = new FakeVgpuServices({ guestPages: 0x2_0000 });
    const big = await rig({ fourByteOnly: true }, services);
    const lo = new Uint8Array(4);
    new DataView(lo.buffer).setUint32(0, Number(value & 0xffff_ffffn), true);
    big.vgpu.write(BAR0, BigInt(big.vgpu.geometry.tableOffset), lo);
    expect([services.counters.translateCalls, big.vgpu.entryState(0)]).to.deep.equal([0, ENTRY_EMPTY]);
    const hi = new Uint8Array(4);
    new DataView(hi.buffer).setUint32(0, Number(value >> 32n), true);
    big.vgpu.write(BAR0, BigInt(big.vgpu.geometry.tableOffset + 4), hi);
    expect([services.counters.translateCalls, services.refs[0x1_2345], big.vgpu.entryState(0)]).to.deep.equal([1, 1, ENTRY_MAPPED]);
    expect(outcome(() => big.driver.writeRaw(1, gttEntry(1), false))).to.equal("EINVAL:mock-eight-byte-write");
    r.driver.map(0, 9);
    expect(events).to.deep.equal([false, true]);
    sub.dispose();
    await teardown(big);
    await teardown(r);
  });

  it("takes entries that straddle a 4 KiB boundary of BAR0 with awkward geometry", async () => {
    const r = await rig({ awkward: true, tableEntries: 1024 });
    expect(r.vgpu.geometry).to.deep.include({ tableOffset: 0x1ffc, fourByteOnly: true });
    expect(MockGuestDriver.probe(r.vgpu)).to.deep.equal({ tableEntries: 1024, tableOffset: 0x1ffc });
    r.driver.map(0, 1); // 0x1ffc..0x2003
    r.driver.map(512, 2); // 0x2ffc..0x3003
    r.driver.map(1023, 3);
    expect([r.vgpu.entryState(0), r.vgpu.entryState(512), r.vgpu.entryState(1023), r.services.pinRefs]).to.deep.equal([ENTRY_MAPPED, ENTRY_MAPPED, ENTRY_MAPPED, 3]);
    expect(r.driver.readEntry(512)).to.equal(gttEntry(2));
    await teardown(r);
  });

  it("points an entry at the scratch page when the translation fails, silently for the guest", async () => {
    const r = await rig();
    const failed = sinon.spy(r.vendor.hooks, "mapFailed");
    const events: string[] = [];
    const sub = r.vgpu.on("mapFailed", (e) => events.push(`${e.index}:${e.gfn}:${e.code}:${e.reason}`));
    const stub = sinon.stub(r.services, "translate").throws(new VfioError("ENOMEM", "pin-memlock-exceeded"));
    r.driver.map(2, 50);
    expect([r.vgpu.entryState(2), r.vgpu.shadowEntry(2), r.services.pinRefs]).to.deep.equal([ENTRY_SCRATCH, SCRATCH, 0]);
    expect(events).to.deep.equal(["2:50:ENOMEM:pin-memlock-exceeded"]);
    expect(failed.calledOnceWith(r.vgpu.name, 2, 50)).to.be.true;
    stub.restore();
    r.driver.map(2, 50);
    expect([r.vgpu.entryState(2), r.services.pinRefs, r.vgpu.stats().mapFailures]).to.deep.equal([ENTRY_MAPPED, 1, 1]);
    sub.dispose();
    await teardown(r);
  });

  it("dmaUnmap drops every cache entry in the range whatever its refcount, and scrubs their shadows", async () => {
    const r = await rig();
    r.driver.mapAll([100, 100, 100, 101, 102, 200]);
    expect([r.vgpu.cache.count, r.vgpu.cache.refs, r.services.pinRefs]).to.deep.equal([4, 6, 4]);
    const unmapped = sinon.spy(r.vendor.hooks, "afterUnmap");
    r.vgpu.dmaUnmap(100n << 12n, 2n << 12n); // gfns 100, 101
    expect([r.vgpu.cache.count, r.services.refs[100], r.services.refs[101], r.services.refs[102], r.services.pinRefs]).to.deep.equal([2, 0, 0, 1, 2]);
    expect(unmapped.args.map((a) => [a[1], a[3]])).to.deep.equal([
      [100, "dma-unmap"],
      [101, "dma-unmap"],
    ]);
    expect([0, 1, 2, 3].map((i) => r.vgpu.entryState(i))).to.deep.equal([ENTRY_REVOKED, ENTRY_REVOKED, ENTRY_REVOKED, ENTRY_REVOKED]);
    expect(r.vgpu.shadowEntry(0)).to.equal(SCRATCH);
    expect(r.vgpu.deviceVisibleAddresses()).to.have.length(2);
    expect(r.services.checkIsolation(r.vgpu.deviceVisibleAddresses())).to.deep.equal([]);
    // A later rewrite of a revoked entry releases nothing twice.
    r.driver.map(0, 300);
    expect([r.services.counters.releaseCalls, r.vgpu.stats().releaseErrors]).to.deep.equal([2, 0]);
    await teardown(r);
  });

  it("with staleShadows, leaves the dead address in the shadow, which the isolation checker reports", async () => {
    const parent = new FakeParent({ recycle: true });
    const r = await rig({ staleShadows: true }, new FakeVgpuServices({ guestPages: 1024, parent }));
    r.driver.mapAll([100, 100, 500]);
    const dead = r.vgpu.shadowEntry(0);
    r.vgpu.dmaUnmap(100n << 12n, 1n << 12n);
    expect([r.vgpu.entryState(0), r.vgpu.entryState(1), r.vgpu.shadowEntry(0), r.services.pinRefs]).to.deep.equal([ENTRY_STALE, ENTRY_STALE, dead, 1]);
    expect(r.vgpu.stats().staleEntries).to.equal(2);
    expect(r.services.checkIsolation(r.vgpu.deviceVisibleAddresses())).to.deep.equal([
      { addr: dead, kind: "unmapped" },
      { addr: dead, kind: "unmapped" },
    ]);
    // GVT's hazard (vendors.md 1.7): the allocator hands the dead address out again, and the
    // stale entry's rewrite then drops a reference that is not its own.
    r.driver.map(10, 600);
    expect(r.vgpu.shadowEntry(10)).to.equal(dead);
    r.driver.map(0, 700);
    expect(r.vgpu.cache.findGfn(600)).to.equal(-1);
    expect(r.vgpu.entryState(10)).to.equal(ENTRY_MAPPED); // still believes it holds gfn 600
    expect(r.services.checkIsolation([r.vgpu.shadowEntry(10)])[0]?.kind).to.equal("unmapped");
    await teardown(r);
  });

  it("a FLR releases everything and clears the table; an engine reset keeps the GTT", async () => {
    const r = await rig();
    r.driver.mapAll([1, 2, 3, 3]);
    const events: string[] = [];
    const sub = r.vgpu.on("reset", (e) => events.push(`${e.kind}:${e.released}`));
    await r.vgpu.reset("engine");
    expect([r.services.pinRefs, r.vgpu.cache.refs]).to.deep.equal([3, 4]);
    await r.vgpu.reset("flr");
    expect([r.services.pinRefs, r.services.liveTranslations, r.vgpu.cache.count, r.driver.readEntry(0), r.vgpu.shadowEntry(3)]).to.deep.equal([0, 0, 0, 0n, SCRATCH]);
    r.driver.map(0, 1);
    await r.vgpu.reset("d3-resume");
    expect(events).to.deep.equal(["engine:0", "flr:3", "d3-resume:1"]);
    expect(r.services.pinRefs).to.equal(0);
    sub.dispose();
    await teardown(r);
  });

  it("close releases every translation, exactly once each; the vGPU reopens empty", async () => {
    const r = await rig();
    r.driver.mapAll(Array.from({ length: 64 }, (_, i) => 100 + (i % 40)));
    expect([r.services.pinRefs, r.vgpu.cache.refs]).to.deep.equal([40, 64]);
    const closed = sinon.spy();
    const sub = r.vgpu.on("closed", closed);
    await r.vgpu.close();
    expect(closed.calledOnceWith({ vgpu: r.vgpu.name, released: 40 })).to.be.true;
    expect([r.services.pinRefs, r.services.counters.releaseCalls, r.services.counters.unmaps]).to.deep.equal([0, 40, 40]);
    expect(outcome(() => r.driver.map(0, 1))).to.equal("ENODEV:mock-not-open");
    await r.vgpu.open();
    const again = await r.vgpu.open().then(
      () => "ok",
      (e: KernelError) => `${e.code}:${e.reason}`,
    );
    expect(again).to.equal("EBUSY:mock-already-open");
    expect(r.driver.readEntry(0)).to.equal(0n);
    sub.dispose();
    await teardown(r);
  });

  it("lets a test spy on or stub each step, and a throwing beforeMap hook makes the entry scratch", async () => {
    const r = await rig();
    const map = sinon.spy(r.vgpu, "mapGuestPage");
    const put = sinon.spy(r.vgpu, "putGuestPage");
    const beforeMap = sinon.stub(r.vendor.hooks, "beforeMap");
    beforeMap.onFirstCall().throws(new KernelError("EFAULT", "test-says-no"));
    r.driver.map(0, 1);
    expect([map.callCount, r.vgpu.entryState(0), r.services.counters.translateCalls]).to.deep.equal([1, ENTRY_SCRATCH, 0]);
    r.driver.map(0, 2);
    r.driver.map(0, 3);
    expect([map.callCount, put.callCount, r.services.pinRefs]).to.deep.equal([3, 1, 1]);
    expect(put.firstCall.args[0]).to.equal(r.services.parent.iovaBase);
    // A hook that throws during a release is counted; the release still happens.
    sinon.stub(r.vendor.hooks, "beforeUnmap").throws(new Error("observer bug"));
    r.driver.clear(0);
    expect([r.services.pinRefs, r.vgpu.stats().hookErrors]).to.deep.equal([0, 1]);
    await teardown(r);
  });

  it("does not let two vGPUs of one parent see each other's addresses", async () => {
    const parent = new FakeParent();
    const vendor = new MockGpuVendor();
    const a = new FakeVgpuServices({ vgpu: "a", parent, guestPages: 64 });
    const b = new FakeVgpuServices({ vgpu: "b", parent, guestPages: 64 });
    const va = vendor.create(MOCK_SMALL, "a", a);
    const vb = vendor.create(MOCK_SMALL, "b", b);
    await va.open();
    await vb.open();
    new MockGuestDriver(va, va.geometry).mapAll([1, 2, 3]);
    new MockGuestDriver(vb, vb.geometry).mapAll([1, 2, 3]);
    expect(parent.mappedRanges).to.equal(6);
    expect(a.checkIsolation(va.deviceVisibleAddresses())).to.deep.equal([]);
    expect(b.checkIsolation(vb.deviceVisibleAddresses())).to.deep.equal([]);
    expect(a.checkIsolation(vb.deviceVisibleAddresses()).map((f) => f.kind)).to.deep.equal(["other-vgpu", "other-vgpu", "other-vgpu"]);
    expect(va.vendorOwnedAddresses()).to.deep.equal([SCRATCH]);
    await va.close();
    await vb.close();
    vendor.destroy(va);
    vendor.destroy(vb);
    expect([a.pinRefs, b.pinRefs, parent.mappedRanges]).to.deep.equal([0, 0, 0]);
  });
});
