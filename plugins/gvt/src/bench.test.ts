import { expect } from "chai";
import { FakeVgpuServices, NO_FAKE_LEAKS } from "@vgpu-iommu/core/testing";
import { NullVgpuServices } from "./testing/null-services.js";
import { GVT_GGTT_WRITE_TARGET_NS, runGvtBench } from "./bench.js";

describe("gvt: the gvt.ggtt-write bench case", () => {
  it("measures present 8-byte GGTT writes, one pin and one mapping each, and leaves nothing behind", async () => {
    const svc = new FakeVgpuServices({ guestPages: 0x20000 });
    const r = await runGvtBench(svc, { writes: 8192 });
    expect(r.name).to.equal("gvt.ggtt-write");
    expect(r.ops).to.equal(8192);
    expect(r.mappings).to.equal(8192);
    expect(r.nsPerOp).to.be.greaterThan(0);
    expect(r.target).to.equal(GVT_GGTT_WRITE_TARGET_NS);
    expect(svc.counters.translations).to.equal(2 * 8192);
    expect(svc.leaks()).to.deep.equal(NO_FAKE_LEAKS);
  });

  it("on services that pin and map nothing it measures the plugin's own share, balanced", async () => {
    const svc = new NullVgpuServices();
    const r = await runGvtBench(svc, { writes: 16384 });
    expect([r.ops, r.mappings, svc.translates, svc.live]).to.deep.equal([16384, 16384, 32768, 0]);
    expect(r.nsPerOp).to.be.greaterThan(0);
  });
});
