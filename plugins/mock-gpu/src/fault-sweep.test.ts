import { expect } from "chai";
import { FakeVgpuServices, NO_FAKE_LEAKS } from "@vgpu-iommu/core/testing";
import { MOCK_SMALL, MockGpuVendor } from "./mock-gpu-vendor.js";
import { MockGuestDriver } from "./mock-guest-driver.js";
import { MOCK_FAULT_SITES, type MockFaultSite } from "./mock-faults.js";
import type { MockVgpu } from "./mock-vgpu.js";

/**
 * Create, map with duplicates, rewrite, dmaUnmap, reset, map, close, destroy.
 * Fallible steps of a clean run: 1 (create) + 4 misses x 2 + (1 miss x 2 + 1 release)
 * + 1 (dmaUnmap of gfn 10) + 3 (reset) + 2 x 2 + 2 (close) = 22.
 */
async function scenario(vendor: MockGpuVendor, services: FakeVgpuServices): Promise<MockVgpu | undefined> {
  let vgpu: MockVgpu;
  try {
    vgpu = vendor.create(MOCK_SMALL, "sweep", services);
  } catch {
    return undefined;
  }
  await vgpu.open();
  const driver = new MockGuestDriver(vgpu, vgpu.geometry);
  driver.mapAll([10, 11, 10, 12, 13]);
  driver.map(1, 14);
  vgpu.dmaUnmap(10n << 12n, 2n << 12n);
  await vgpu.reset("flr");
  driver.mapAll([20, 21]);
  await vgpu.close();
  vendor.destroy(vgpu);
  return vgpu;
}

function expectNoLeak(services: FakeVgpuServices, vendor: MockGpuVendor): void {
  expect(services.leaks()).to.deep.equal(NO_FAKE_LEAKS);
  expect(services.counters.framesPinned).to.equal(services.counters.framesUnpinned);
  expect(services.counters.maps).to.equal(services.counters.unmaps);
  for (const [id, n] of services.unmapsByHandle) expect(n, `unmaps of handle ${id}`).to.equal(1);
  expect([vendor.usedSlots, vendor.vgpus.length]).to.deep.equal([0, 0]);
}

describe("mock GPU: fault sweep over failNth", () => {
  it("a clean run takes 22 fallible steps, 7 translations, 7 releases", async () => {
    const vendor = new MockGpuVendor();
    const services = new FakeVgpuServices({ guestPages: 64 });
    vendor.failNth(1_000_000);
    await scenario(vendor, services);
    expect([vendor.faults.calls, vendor.faults.fired]).to.deep.equal([22, undefined]);
    expect([services.counters.translateCalls, services.counters.releaseCalls]).to.deep.equal([7, 7]);
    expectNoLeak(services, vendor);
  });

  it("fails each step n = 1..22 once: the entry goes to scratch or the release is not retried, and nothing leaks", async () => {
    const fired: string[] = [];
    for (let n = 1; ; n++) {
      const vendor = new MockGpuVendor();
      const services = new FakeVgpuServices({ guestPages: 64 });
      vendor.failNth(n);
      const vgpu = await scenario(vendor, services);
      const site = vendor.faults.fired;
      if (site === undefined) {
        expect(n).to.equal(23);
        break;
      }
      fired.push(site);
      expectNoLeak(services, vendor);
      if (vgpu === undefined) expect([n, site]).to.deep.equal([1, "alloc"]);
      else {
        const s = vgpu.stats();
        expect([s.mapFailures, s.releaseErrors]).to.deep.equal(site === "release" ? [0, 1] : [1, 0]);
        expect(s.releases).to.equal(services.counters.releaseCalls);
      }
    }
    const count = (s: MockFaultSite) => fired.filter((x) => x === s).length;
    expect(MOCK_FAULT_SITES.map(count)).to.deep.equal([8, 7, 7]);
  });

  it("restricted to one site, fails only there", async () => {
    for (const site of MOCK_FAULT_SITES) {
      const vendor = new MockGpuVendor();
      const services = new FakeVgpuServices({ guestPages: 64 });
      vendor.failNth(2, [site]);
      await scenario(vendor, services);
      expect(vendor.faults.fired).to.equal(site);
      expectNoLeak(services, vendor);
    }
  });
});
