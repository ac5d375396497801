/**
 * The kit as a mocha suite: `vendorConformance(name, setup)` defines one
 * `describe` with one `it` per check of vendors.md 4.3. A failed check
 * reports its violations and figures; a check that cannot apply (a VF vGPU
 * with its own requester ID, a vendor that only pins, no dirty log on the
 * platform and no migration in the vendor) is skipped, its reason in the title.
 *
 * A vendor that models a real driver's known deviation declares it: the check
 * must then FAIL, and every violation must match the declared pattern, so the
 * suite turns red both when the deviation disappears and when anything else
 * goes wrong.
 *
 *   import { vendorConformance } from "@vgpu-iommu/conformance";
 *   vendorConformance("my-vendor on KVM", async () => ({ platform, vendor, type, exercise }));
 */
import { expect } from "chai";
import { CONFORMANCE_CHECKS, formatVerdict } from "./checks.js";
import type { CheckId, ConformanceTarget } from "./conformance-target.js";

export interface KnownDeviation {
  /** Why the vendor deviates, with the reference (e.g. "vendors.md 2.2: one host-PFN reference per notifier call"). */
  readonly reason: string;
  /** Every violation of the check must match. */
  readonly violation: RegExp;
}

export interface ConformanceSuiteOptions {
  readonly deviations?: Partial<Record<CheckId, KnownDeviation>>;
}

export function vendorConformance(name: string, setup: () => Promise<ConformanceTarget>, options: ConformanceSuiteOptions = {}): void {
  describe(`vendor conformance: ${name}`, function () {
    for (const c of CONFORMANCE_CHECKS) {
      const deviation = options.deviations?.[c.id];
      it(`${c.id} (4.3 item ${c.clause}): ${c.title}${deviation === undefined ? "" : ` [known deviation: ${deviation.reason}]`}`, async function () {
        const verdict = await c.run(setup);
        if (verdict.skipped !== undefined) {
          // Mocha's skip takes no reason: the title carries it into the report.
          this.test!.title += ` [skipped: ${verdict.skipped}]`;
          this.skip();
        }
        if (deviation === undefined) {
          expect(verdict.violations, formatVerdict(verdict)).to.deep.equal([]);
          expect(verdict.ok).to.equal(true);
          return;
        }
        expect(verdict.ok, `the declared deviation did not occur:\n${formatVerdict(verdict)}`).to.equal(false);
        expect(
          verdict.violations.filter((v) => !deviation.violation.test(v)),
          formatVerdict(verdict),
        ).to.deep.equal([]);
      });
    }
  });
}
