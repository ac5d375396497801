import { expect } from "chai";
import { CONFORMANCE_CHECKS, conformanceCheck, formatVerdict, runConformance } from "@vgpu-iommu/conformance";
import { BROKEN_FIXTURES, FixtureVendor, NeverUnpinsOnDmaUnmapVendor, UnmapsTwiceVendor } from "@vgpu-iommu/conformance/fixtures";
import { fixtureOnKvm, mockGpuTarget } from "../support/conformance-targets.js";

/** What each check must say about its broken fixture: the failure must be for the right reason. */
const EXPECTED: Record<string, RegExp> = {
  "pins-balanced": /^conf-vgpu-\d+: \d+ frame\(s\) still pinned after close/,
  "dma-unmap-drops-range": /^conf-vgpu-\d+: dmaUnmap\(0x100000000, 0x200000\) returned with 4 frame\(s\) of the range still pinned \(x11\)$/,
  "unmapped-exactly-once": /^conf-vgpu-\d+: released translation \d+ \(gfns \d+\) 2 times$/,
  "no-stale-address": /^conf-vgpu-\d+: after dmaUnmap its tables still expose 0x[0-9a-f]+, which is no longer mapped for it$/,
  "close-leaves-nothing": /^conf-vgpu-\d+: 10 frame\(s\) still pinned after close/,
  "reset-leaves-nothing": /^conf-vgpu-\d+: 8 frame\(s\) still pinned after reset\(flr\)/,
  isolation: /^conf-vgpu-\d+: exposes 0x[0-9a-f]+, which conf-vgpu-\d+ mapped$/,
};

describe("conformance kit: self-test on the KVM platform", () => {
  for (const f of BROKEN_FIXTURES) {
    it(`${f.check} FAILS on the ${f.name} fixture, for that reason`, async () => {
      const v = await conformanceCheck(f.check).run(fixtureOnKvm(f.create));
      expect(v.ok, formatVerdict(v)).to.equal(false);
      expect(v.skipped).to.equal(undefined);
      expect(v.violations.some((x) => EXPECTED[f.check]!.test(x)), formatVerdict(v)).to.equal(true);
    });
  }

  it("the never-unpins fixture drives type1 into its BUG_ON after 10 retries, and the verdict says so", async () => {
    const v = await conformanceCheck("dma-unmap-drops-range").run(fixtureOnKvm(() => new NeverUnpinsOnDmaUnmapVendor()));
    expect(v.violations).to.include("balloonOut(block 0) failed with -5");
    expect(v.violations.some((x) => /the host crashed: BUG at vfio_dma_do_unmap: vendor driver did not unpin after dma_unmap/.test(x)), formatVerdict(v)).to.equal(true);
    expect(v.figures["dmaUnmapCalls"]).to.equal(11);
  });

  it("unmaps-twice also unbalances the pin ledger", async () => {
    const v = await conformanceCheck("pins-balanced").run(fixtureOnKvm(() => new UnmapsTwiceVendor()));
    expect(v.ok).to.equal(false);
    expect(v.violations.filter((x) => / 2 times$/.test(x)).length).to.be.greaterThan(0);
  });

  it("every check passes on the correct fixture, none skipped, with exact figures", async () => {
    const verdicts = await runConformance(fixtureOnKvm(() => new FixtureVendor()));
    expect(verdicts.map((v) => v.check)).to.deep.equal(CONFORMANCE_CHECKS.map((c) => c.id));
    for (const v of verdicts) expect(v.violations, formatVerdict(v)).to.deep.equal([]);
    expect(verdicts.every((v) => v.ok && v.skipped === undefined)).to.equal(true);
    const byId = Object.fromEntries(verdicts.map((v) => [v.check, v.figures]));
    expect(byId["dma-unmap-drops-range"]).to.deep.equal({ pinnedInRange: 4, pinnedOutside: 4, dmaUnmapCalls: 1, leftInRange: 0 });
    expect(byId["close-leaves-nothing"]).to.deep.equal({ pinnedBeforeClose: 10, translationsBeforeClose: 10 });
  });

  it("every check passes on the mock GPU", async () => {
    const verdicts = await runConformance(mockGpuTarget());
    for (const v of verdicts) expect(v.violations, formatVerdict(v)).to.deep.equal([]);
    expect(verdicts.every((v) => v.ok && v.skipped === undefined)).to.equal(true);
    const byId = Object.fromEntries(verdicts.map((v) => [v.check, v.figures]));
    expect(byId["isolation"]).to.deep.equal({ "addresses A": 6, "addresses B": 6 });
  });
});
