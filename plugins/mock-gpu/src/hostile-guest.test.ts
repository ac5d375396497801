import { expect } from "chai";
import { VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR1_REGION_INDEX } from "@vgpu-iommu/core";
import { FakeVgpuServices, NO_FAKE_LEAKS, outcome } from "@vgpu-iommu/core/testing";
import { DEFAULT_SCRATCH_ADDRESS, MOCK_SMALL, MockGpuVendor } from "./mock-gpu-vendor.js";
import { ENTRY_MAPPED, ENTRY_SCRATCH } from "./mock-vgpu.js";
import { MockGuestDriver } from "./mock-guest-driver.js";
import { GTT_GFN_MASK, GTT_PRESENT } from "./gtt-geometry.js";

const BAR0 = VFIO_PCI_BAR0_REGION_INDEX;

describe("mock GPU: hostile guest (vendors.md scenario 13)", () => {
  async function rig(fourByteOnly = false) {
    const services = new FakeVgpuServices({ guestPages: 256 });
    const vendor = new MockGpuVendor({ tableEntries: 64, fourByteOnly });
    const vgpu = vendor.create(MOCK_SMALL, "hostile", services);
    await vgpu.open();
    return { services, vendor, vgpu, driver: new MockGuestDriver(vgpu, vgpu.geometry) };
  }

  it("points entries at frames outside guest RAM to scratch (-EINVAL from the pin), pinning nothing", async () => {
    const { services, vendor, vgpu, driver } = await rig();
    const failures: string[] = [];
    const sub = vgpu.on("mapFailed", (e) => failures.push(`${e.gfn}:${e.code}`));
    driver.map(0, 256); // one past the end
    driver.writeRaw(1, (GTT_GFN_MASK << 12n) | GTT_PRESENT); // the largest gfn an entry holds
    driver.writeRaw(2, (1n << 63n) | (5n << 12n) | GTT_PRESENT); // bits above the gfn field are ignored
    driver.map(3, 255);
    expect(failures).to.deep.equal(["256:EINVAL", `${Number(GTT_GFN_MASK)}:EINVAL`]);
    expect([vgpu.entryState(0), vgpu.entryState(1), vgpu.entryState(2), vgpu.entryState(3)]).to.deep.equal([ENTRY_SCRATCH, ENTRY_SCRATCH, ENTRY_MAPPED, ENTRY_MAPPED]);
    expect([vgpu.shadowEntry(0), vgpu.shadowEntry(1)]).to.deep.equal([DEFAULT_SCRATCH_ADDRESS, DEFAULT_SCRATCH_ADDRESS]);
    expect([services.pinRefs, services.refs[5], services.refs[255], vgpu.stats().scratchEntries]).to.deep.equal([2, 1, 1, 2]);
    sub.dispose();
    await vgpu.close();
    vendor.destroy(vgpu);
    expect(services.leaks()).to.deep.equal(NO_FAKE_LEAKS);
  });

  it("refuses writes of the wrong size, alignment, region or range with -EINVAL, changing nothing", async () => {
    const { services, vendor, vgpu } = await rig();
    const t = BigInt(vgpu.geometry.tableOffset);
    const bytes = (n: number) => new Uint8Array(n).fill(0xff);
    const results = [
      outcome(() => vgpu.write(BAR0, t, bytes(1))),
      outcome(() => vgpu.write(BAR0, t, bytes(2))),
      outcome(() => vgpu.write(BAR0, t, bytes(3))),
      outcome(() => vgpu.write(BAR0, t, bytes(16))),
      outcome(() => vgpu.write(BAR0, t, bytes(0))),
      outcome(() => vgpu.write(BAR0, t + 4n, bytes(8))),
      outcome(() => vgpu.write(BAR0, t + 2n, bytes(4))),
      outcome(() => vgpu.write(BAR0, t - 4n, bytes(8))),
      outcome(() => vgpu.write(BAR0, BigInt(vgpu.geometry.barBytes), bytes(4))),
      outcome(() => vgpu.write(BAR0, 1n << 64n, bytes(4))),
      outcome(() => vgpu.write(VFIO_PCI_BAR1_REGION_INDEX, 0n, bytes(8))),
      outcome(() => vgpu.read(BAR0, t + 1n, 4)),
    ];
    expect(results).to.deep.equal([
      "EINVAL:mock-bad-access-size",
      "EINVAL:mock-bad-access-size",
      "EINVAL:mock-bad-access-size",
      "EINVAL:mock-bad-access-size",
      "EINVAL:mock-bad-access-size",
      "EINVAL:mock-misaligned",
      "EINVAL:mock-misaligned",
      "EINVAL:mock-straddles-table",
      "EINVAL:mock-outside-bar",
      "EINVAL:mock-outside-bar",
      "EINVAL:mock-bad-region",
      "EINVAL:mock-misaligned",
    ]);
    expect([services.counters.translateCalls, services.pinRefs, vgpu.guestEntry(0)]).to.deep.equal([0, 0, 0n]);
    // Register space swallows writes.
    expect(outcome(() => vgpu.write(BAR0, 0n, bytes(4)))).to.equal("ok");
    await vgpu.close();
    vendor.destroy(vgpu);
    expect(services.leaks()).to.deep.equal(NO_FAKE_LEAKS);
  });

  it("survives a guest that points every entry at one frame and churns them: one pin, exact refcounts", async () => {
    const { services, vendor, vgpu, driver } = await rig(true);
    for (let i = 0; i < 64; i++) driver.map(i, 9);
    expect([services.pinRefs, services.counters.translateCalls, vgpu.cache.refs]).to.deep.equal([1, 1, 64]);
    // Half-written entries (only the low half) keep the old shadow until the high half arrives.
    const lo = new Uint8Array(4);
    new DataView(lo.buffer).setUint32(0, (10 << 12) | 1, true);
    for (let round = 0; round < 3; round++) for (let i = 0; i < 64; i += 2) vgpu.write(BAR0, BigInt(vgpu.geometry.tableOffset + i * 8), lo);
    expect([services.pinRefs, vgpu.cache.refs]).to.deep.equal([1, 64]);
    for (let i = 0; i < 64; i++) driver.clear(i);
    expect([services.pinRefs, vgpu.cache.count, services.counters.releaseCalls]).to.deep.equal([0, 0, 1]);
    await vgpu.close();
    vendor.destroy(vgpu);
    expect(services.leaks()).to.deep.equal(NO_FAKE_LEAKS);
  });
});
