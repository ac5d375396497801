import { expect } from "chai";
import { container } from "tsyringe";
import { composeStack, IVgpuVendor, loadPlugin } from "@vgpu-iommu/core";
import { IScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { FakeVgpuServices, outcome } from "@vgpu-iommu/core/testing";
import { MOCK_LARGE, MOCK_SMALL, MockGpuVendor } from "./mock-gpu-vendor.js";
import { MOCK_GPU_PLUGIN_ID, mockGpuPlugin, plugin } from "./plugin.js";

describe("mock GPU: vendor", () => {
  it("counts instances from a shared pool of partition slots", () => {
    const v = new MockGpuVendor({ slots: 5 });
    expect(v.listTypes().map((t) => t.name)).to.deep.equal([MOCK_SMALL, MOCK_LARGE]);
    expect([v.availableInstances(MOCK_SMALL), v.availableInstances(MOCK_LARGE)]).to.deep.equal([5, 2]);
    const big = v.create(MOCK_LARGE, "big", new FakeVgpuServices());
    expect(big.geometry.tableEntries).to.equal(1024);
    expect([v.availableInstances(MOCK_SMALL), v.availableInstances(MOCK_LARGE), v.usedSlots]).to.deep.equal([3, 1, 2]);
    v.create(MOCK_LARGE, "big2", new FakeVgpuServices());
    expect(outcome(() => v.create(MOCK_LARGE, "big3", new FakeVgpuServices()))).to.equal("ENOSPC:mock-no-slots");
    v.create(MOCK_SMALL, "small", new FakeVgpuServices());
    expect(v.availableInstances(MOCK_SMALL)).to.equal(0);
    expect(v.vgpus.map((g) => g.name)).to.deep.equal(["big", "big2", "small"]);
  });

  it("refuses unknown types, duplicate names, destroying an open or foreign vGPU", async () => {
    const v = new MockGpuVendor();
    expect(outcome(() => v.availableInstances("nope"))).to.equal("EINVAL:mock-unknown-type");
    const g = v.create(MOCK_SMALL, "g", new FakeVgpuServices());
    expect(outcome(() => v.create(MOCK_SMALL, "g", new FakeVgpuServices()))).to.equal("EEXIST:mock-duplicate-name");
    await g.open();
    expect(outcome(() => v.destroy(g))).to.equal("EBUSY:mock-vgpu-open");
    const other = new MockGpuVendor().create(MOCK_SMALL, "g", new FakeVgpuServices());
    expect(outcome(() => v.destroy(other))).to.equal("ENODEV:mock-unknown-vgpu");
    await g.close();
    v.destroy(g);
    expect([v.vgpus.length, v.usedSlots, v.availableInstances(MOCK_SMALL)]).to.deep.equal([0, 0, 8]);
  });

  it("announces the vGPUs it creates and destroys, so tests reach the ones a platform made", () => {
    const v = new MockGpuVendor();
    const seen: string[] = [];
    const a = v.on("vgpuCreated", (e) => seen.push(`+${e.vgpu}:${e.type}`));
    const b = v.on("vgpuDestroyed", (e) => seen.push(`-${e.vgpu}`));
    const g = v.create(MOCK_SMALL, "g", new FakeVgpuServices());
    expect(v.vgpu("g")).to.equal(g);
    v.destroy(g);
    expect(seen).to.deep.equal(["+g:mock-small", "-g"]);
    a.dispose();
    b.dispose();
    expect(v.listenerCount()).to.equal(0);
  });

  it("a failed allocation at create reserves nothing", () => {
    const v = new MockGpuVendor();
    v.failNth(1);
    expect(outcome(() => v.create(MOCK_SMALL, "g", new FakeVgpuServices()))).to.equal("ENOMEM:mock-injected-alloc-failure");
    expect([v.faults.fired, v.usedSlots, v.vgpus.length]).to.deep.equal(["alloc", 0, 0]);
  });

  it("validates its geometry options at construction", () => {
    expect(() => new MockGpuVendor({ tableOffset: 6 })).to.throw(RangeError);
    expect(() => new MockGpuVendor({ tableEntries: 0 })).to.throw(RangeError);
  });
});

describe("mock GPU: plugin manifest", () => {
  it("provides IVgpuVendor, one vendor per container it is composed into", () => {
    expect(plugin).to.deep.include({ id: MOCK_GPU_PLUGIN_ID, kind: "vendor", requires: [] });
    expect(plugin.provides).to.deep.equal([IVgpuVendor, IScenarioProvider]);
    const a = composeStack([plugin], container);
    const b = composeStack([plugin], container);
    const va = a.resolve(IVgpuVendor);
    expect(va).to.be.instanceOf(MockGpuVendor);
    expect(a.resolve(IVgpuVendor)).to.equal(va);
    expect(b.resolve(IVgpuVendor)).to.not.equal(va);
  });

  it("passes its options to the vendor", () => {
    const c = composeStack([mockGpuPlugin({ awkward: true, slots: 2 })], container);
    const v = c.resolve(IVgpuVendor) as MockGpuVendor;
    expect([v.slots, v.create(MOCK_SMALL, "x", new FakeVgpuServices()).geometry.tableOffset]).to.deep.equal([2, 0x1ffc]);
  });

  it("loads by package name, as a stack file names it", async () => {
    const loaded = await loadPlugin(MOCK_GPU_PLUGIN_ID);
    expect([loaded.id, loaded.kind]).to.deep.equal([MOCK_GPU_PLUGIN_ID, "vendor"]);
  });
});
