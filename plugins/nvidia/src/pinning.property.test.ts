/**
 * Random RM requests, notifier calls and resets against fake services: after
 * every step the vGPU's own view of its pins equals the backend's, the dirty
 * report is exactly the pinned set, the notifier leaves no IOVA-mode pin and
 * exactly one host-PFN reference less in its range, and close leaves nothing.
 */
import { expect } from "chai";
import fc from "fast-check";
import { KernelError } from "@vgpu-iommu/core";
import { openBench } from "./testing/harness.js";
import { setBits } from "./testing/harness.js";

const DOMAIN = 96;

type Op =
  | { kind: "pin"; mode: "GET_HOST_PFN" | "GET_IOVA"; frames: number[] }
  | { kind: "unpin"; mode: "GET_HOST_PFN" | "GET_IOVA"; frames: number[] }
  | { kind: "unmap"; first: number; n: number }
  | { kind: "reset" };

const frames = fc.array(fc.integer({ min: 0, max: DOMAIN - 1 }), { minLength: 1, maxLength: 40 });
const mode = fc.constantFrom("GET_HOST_PFN" as const, "GET_IOVA" as const);
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("pin" as const), mode, frames }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("unpin" as const), mode, frames }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("unmap" as const), first: fc.integer({ min: 0, max: DOMAIN - 1 }), n: fc.integer({ min: 1, max: 48 }) }) },
  { weight: 1, arbitrary: fc.constant({ kind: "reset" as const }) },
);

describe("nvidia mdev pinning: properties", () => {
  for (const hostPfnUnmap of ["once", "all"] as const) {
    it(`keeps the vGPU's pins equal to the backend's through random sequences (hostPfnUnmap ${hostPfnUnmap})`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops) => {
          const b = await openBench({ guest: { guestPages: DOMAIN }, vendor: { pinning: { hostPfnUnmap } } });
          const v = b.vgpus[0]!;
          const s = b.services[0]!;
          for (const o of ops) {
            if (o.kind === "pin") {
              try {
                v.translateGfns(o.frames, o.mode);
              } catch (e) {
                expect(e).to.be.instanceOf(KernelError);
                expect((e as KernelError).code).to.equal("EEXIST");
              }
            } else if (o.kind === "unpin") v.unpinGfns(o.frames, o.mode);
            else if (o.kind === "reset") await v.reset("flr");
            else {
              const end = Math.min(DOMAIN, o.first + o.n);
              let expected = 0;
              for (let g = o.first; g < end; g++) expected += hostPfnUnmap === "all" ? 0 : Math.max(0, v.hostPfnRefcount(g) - 1);
              v.dmaUnmap(BigInt(o.first) << 12n, BigInt(end - o.first) << 12n);
              expect(s.pinsIn(o.first, end), "pins left in the notified range").to.equal(expected);
            }
            expect(v.pins, "vGPU bookkeeping vs backend").to.equal(s.pinRefs);
            const pinned: number[] = [];
            for (let g = 0; g < DOMAIN; g++) if (s.refs[g]! > 0) pinned.push(g);
            expect(setBits(v.dirtyPages!(0, DOMAIN).bitmap, 0, DOMAIN), "dirty = pinned").to.deep.equal(pinned);
            expect(v.liveTranslations).to.equal(s.liveTranslations);
          }
          await b.teardown();
          expect([b.guest.totalPins, b.guest.lockedPages, b.guest.parent.mappedRanges]).to.deep.equal([0, 0, 0]);
          expect(b.guest.warnings).to.deep.equal([]);
        }),
        { numRuns: 150, seed: 6 },
      );
    });
  }
});
