import { expect } from "chai";
import { CONFORMANCE_CHECKS, conformanceCheck, formatVerdict, runConformance } from "@vgpu-iommu/conformance";
import { BROKEN_FIXTURES, FixtureVendor, NeverUnpinsOnDmaUnmapVendor, UnmapsTwiceVendor } from "@vgpu-iommu/conformance/fixtures";
import { MOCK_SMALL } from "@vgpu-iommu/plugin-mock-gpu";
import { fixtureOn, mockGpuTarget } from "../support/conformance-targets.js";
import { PLATFORMS, per, type PlatformFactory } from "../support/platforms.js";

/** What each check must say about its broken fixture: the failure must be for the right reason. */
function expected(p: PlatformFactory): Record<string, RegExp> {
  return {
    "pins-balanced": /^conf-vgpu-\d+: \d+ frame\(s\) still pinned after close/,
    // type1 retries the notification 10 times before its BUG_ON; Xen calls dmaUnmap once per block.
    "dma-unmap-drops-range": per(p, {
      kvm: /^conf-vgpu-\d+: dmaUnmap\(0x100000000, 0x200000\) returned with 4 frame\(s\) of the range still pinned \(x11\)$/,
      xen: /^conf-vgpu-\d+: dmaUnmap\(0x100000000, 0x200000\) returned with 4 frame\(s\) of the range still pinned$/,
    }),
    "unmapped-exactly-once": /^conf-vgpu-\d+: released translation \d+ \(gfns \d+\) 2 times$/,
    "no-stale-address": /^conf-vgpu-\d+: after dmaUnmap its tables still expose 0x[0-9a-f]+, which is no longer mapped for it$/,
    "close-leaves-nothing": /^conf-vgpu-\d+: 10 frame\(s\) still pinned after close/,
    "reset-leaves-nothing": /^conf-vgpu-\d+: 8 frame\(s\) still pinned after reset\(flr\)/,
    isolation: /^conf-vgpu-\d+: exposes 0x[0-9a-f]+, which conf-vgpu-\d+ mapped$/,
  };
}

for (const p of PLATFORMS) {
  describe(`conformance kit: self-test on ${p.label}`, () => {
    for (const f of BROKEN_FIXTURES) {
      it(`${f.check} FAILS on the ${f.name} fixture, for that reason`, async () => {
        const v = await conformanceCheck(f.check).run(fixtureOn(p, f.create));
        expect(v.ok, formatVerdict(v)).to.equal(false);
        expect(v.skipped).to.equal(undefined);
        expect(v.violations.some((x) => expected(p)[f.check]!.test(x)), formatVerdict(v)).to.equal(true);
      });
    }

    if (p.hypervisor === "kvm") {
      it("the never-unpins fixture drives type1 into its BUG_ON after 10 retries, and the verdict says so", async () => {
        const v = await conformanceCheck("dma-unmap-drops-range").run(fixtureOn(p, () => new NeverUnpinsOnDmaUnmapVendor()));
        expect(v.violations).to.include("balloonOut(block 0) failed with -5");
        expect(v.violations.some((x) => /the host crashed: BUG at vfio_dma_do_unmap: vendor driver did not unpin after dma_unmap/.test(x)), formatVerdict(v)).to.equal(true);
        expect(v.figures["dmaUnmapCalls"]).to.equal(11);
      });
    } else {
      it("the never-unpins fixture: one dmaUnmap, no retry, no BUG; the P2M change revokes its translations, so its close finds them gone", async () => {
        const v = await conformanceCheck("dma-unmap-drops-range").run(fixtureOn(p, () => new NeverUnpinsOnDmaUnmapVendor()));
        expect(v.violations).to.have.length(2);
        expect(v.violations[0]).to.match(expected(p)["dma-unmap-drops-range"]!);
        expect(v.violations[1]).to.equal("the check stopped: VfioError: EINVAL: translate-unknown-handle");
        expect(v.figures).to.deep.equal({ pinnedInRange: 4, pinnedOutside: 4, dmaUnmapCalls: 1, leftInRange: 0 });
      });
    }

    it("unmaps-twice also unbalances the pin ledger", async () => {
      const v = await conformanceCheck("pins-balanced").run(fixtureOn(p, () => new UnmapsTwiceVendor()));
      expect(v.ok).to.equal(false);
      expect(v.violations.filter((x) => / 2 times$/.test(x)).length).to.be.greaterThan(0);
    });

    it("every check passes on the correct fixture, none skipped, with exact figures", async () => {
      const verdicts = await runConformance(fixtureOn(p, () => new FixtureVendor()));
      expect(verdicts.map((v) => v.check)).to.deep.equal(CONFORMANCE_CHECKS.map((c) => c.id));
      for (const v of verdicts) expect(v.violations, formatVerdict(v)).to.deep.equal([]);
      expect(verdicts.every((v) => v.ok && v.skipped === undefined)).to.equal(true);
      const byId = Object.fromEntries(verdicts.map((v) => [v.check, v.figures]));
      expect(byId["dma-unmap-drops-range"]).to.deep.equal({ pinnedInRange: 4, pinnedOutside: 4, dmaUnmapCalls: 1, leftInRange: 0 });
      expect(byId["close-leaves-nothing"]).to.deep.equal({ pinnedBeforeClose: 10, translationsBeforeClose: 10 });
    });

    it("every check passes on the mock GPU", async () => {
      const verdicts = await runConformance(mockGpuTarget({}, {}, MOCK_SMALL, p));
      for (const v of verdicts) expect(v.violations, formatVerdict(v)).to.deep.equal([]);
      expect(verdicts.every((v) => v.ok && v.skipped === undefined)).to.equal(true);
      const byId = Object.fromEntries(verdicts.map((v) => [v.check, v.figures]));
      expect(byId["isolation"]).to.deep.equal({ "addresses A": 6, "addresses B": 6 });
    });
  });
}
