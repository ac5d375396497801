import { expect } from "chai";
import type { PlatformVm } from "@vgpu-iommu/core";
import { CONFORMANCE_CHECKS, conformanceCheck, formatVerdict, runConformance, type ConformanceTarget } from "@vgpu-iommu/conformance";
import { BROKEN_FIXTURES, FixtureVendor, NeverUnpinsOnDmaUnmapVendor, ReportsPinsOnceVendor, UnmapsTwiceVendor } from "@vgpu-iommu/conformance/fixtures";
import { MOCK_SMALL } from "@vgpu-iommu/plugin-mock-gpu";
import { fixtureOn, mockGpuTarget } from "../support/conformance-targets.js";
import { PLATFORMS, per, type PlatformFactory } from "../support/platforms.js";

/**
 * The target's platform with a dirty log that reports a frame in one pass only: a backend without
 * type1's rule that pinned frames stay dirty (linux-vfio.md 5 finds none for iommufd access users).
 */
function dirtyOncePlatform(setup: () => Promise<ConformanceTarget>): () => Promise<ConformanceTarget> {
  return async () => {
    const t = await setup();
    const inner = t.platform;
    return { ...t, platform: { host: inner.host, adapter: inner.adapter, createVm: async (spec) => dirtyOnce(await inner.createVm(spec)) } };
  };
}

function dirtyOnce(vm: PlatformVm): PlatformVm {
  const log = vm.dirtyLog!;
  const reported = new Set<number>();
  return {
    name: vm.name,
    vmm: vm.vmm,
    translate: vm.translate,
    balloonBase: vm.balloonBase,
    addVgpu: (vendor, type, name) => vm.addVgpu(vendor, type, name),
    removeVgpu: (vgpu) => vm.removeVgpu(vgpu),
    guestWrite: (gpa, data) => vm.guestWrite(gpa, data),
    guestRead: (gpa, out) => vm.guestRead(gpa, out),
    balloonOut: (first, count) => vm.balloonOut(first, count),
    balloonIn: (first, count) => vm.balloonIn(first, count),
    shutdown: () => vm.shutdown(),
    dirtyLog: {
      start: () => log.start(),
      stop: () => log.stop(),
      read: async () => {
        const reports = await log.read();
        if (typeof reports === "number") return reports;
        return reports.map((r) => {
          const bitmap = r.bitmap.slice();
          for (let i = 0; i < r.npages; i++) {
            if (((bitmap[i >> 3]! >> (i & 7)) & 1) === 0) continue;
            if (reported.has(r.firstGfn + i)) bitmap[i >> 3]! &= ~(1 << (i & 7));
            else reported.add(r.firstGfn + i);
          }
          return { ...r, bitmap };
        });
      },
    },
  };
}

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
    "dirty-covers-pins": /^conf-vgpu-\d+: pass 2: its migration dirty report leaves 10 frame\(s\) it holds pinned clean \(gfns 256,257,258,259,264,265,266,267,\.\.\.\)$/,
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
      it("dirty-covers-pins also FAILS on a platform whose dirty log reports a pinned frame in one pass only", async () => {
        const v = await conformanceCheck("dirty-covers-pins").run(dirtyOncePlatform(fixtureOn(p, () => new FixtureVendor())));
        expect(v.violations.map((x) => x.replace(/^conf-vgpu-\d+: /, ""))).to.deep.equal([
          "pass 2: the platform's dirty log reports 10 frame(s) it holds pinned clean (gfns 256,257,258,259,264,265,266,267,...)",
          "pass 3: the platform's dirty log reports 12 frame(s) it holds pinned clean (gfns 256,257,258,259,264,265,266,267,...)",
        ]);
        expect(v.figures).to.deep.equal({ heldBeforeLogging: 6, heldAtLastPass: 12, platformPasses: 3, vendorPasses: 3 });
      });

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

    // Type1 re-sets the bit of every pinned frame after each read (KVM); Xen's model has no log of
    // device-dirtied frames, so the vendor's own report is all a VMM gets there.
    it(`reports-pins-once: the vendor's report misses every frame held since an earlier pass${p.hypervisor === "kvm" ? "; type1's log does not" : ", and nothing else logs them"}`, async () => {
      const v = await conformanceCheck("dirty-covers-pins").run(fixtureOn(p, () => new ReportsPinsOnceVendor()));
      expect(v.violations.map((x) => x.replace(/^conf-vgpu-\d+: /, ""))).to.deep.equal([
        "pass 2: its migration dirty report leaves 10 frame(s) it holds pinned clean (gfns 256,257,258,259,264,265,266,267,...)",
        "pass 3: its migration dirty report leaves 12 frame(s) it holds pinned clean (gfns 256,257,258,259,264,265,266,267,...)",
      ]);
      expect(v.figures).to.deep.equal({ heldBeforeLogging: 6, heldAtLastPass: 12, platformPasses: per(p, { kvm: 3, xen: 0 }), vendorPasses: 3 });
    });

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
      expect(byId["dirty-covers-pins"]).to.deep.equal({ heldBeforeLogging: 6, heldAtLastPass: 12, platformPasses: per(p, { kvm: 3, xen: 0 }), vendorPasses: 3 });
    });

    it(`every check passes on the mock GPU${p.hypervisor === "xen" ? "; dirty-covers-pins is skipped: no dirty log on Xen, no migration in the mock" : ""}`, async () => {
      const verdicts = await runConformance(mockGpuTarget({}, {}, MOCK_SMALL, p));
      for (const v of verdicts) expect(v.violations, formatVerdict(v)).to.deep.equal([]);
      const noDirtyLog = "the platform keeps no log of device-dirtied frames in the model and the vendor declares no migration: nothing reports dirty frames";
      expect(verdicts.map((v) => [v.check, v.ok, v.skipped])).to.deep.equal(CONFORMANCE_CHECKS.map((c) => [c.id, true, c.id === "dirty-covers-pins" ? per(p, { kvm: undefined, xen: noDirtyLog }) : undefined]));
      const byId = Object.fromEntries(verdicts.map((v) => [v.check, v.figures]));
      expect(byId["isolation"]).to.deep.equal({ "addresses A": 6, "addresses B": 6 });
    });
  });
}
