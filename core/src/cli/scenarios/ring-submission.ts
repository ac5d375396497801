/**
 * vendors.md 5.2, ring and context submission: an ELSP-style submission whose
 * ring, context and batch the vendor copies with dmaRw (no pins), while the
 * workload's PPGTT is shadowed lazily: every present leaf pinned and mapped,
 * every page-table page write-protected. Pins = present leaves; protected
 * pages = table pages.
 */
import type { ScenarioDefinition } from "../scenario-api.js";
import { pickFrames } from "./guest-memory.js";
import { int, params } from "./params.js";

interface Params {
  leaves: number;
  workloads: number;
}

export const ringSubmission: ScenarioDefinition<Params> = {
  name: "ring-submission",
  title: "Ring and context submission",
  item: 2,
  description: "workload submissions: PPGTT leaves pinned and mapped, table pages write-protected, rings and batches copied without pins",
  params: params({
    leaves: int(64, "present leaf entries of each workload's PPGTT", 1, 1 << 16),
    workloads: int(2, "workloads submitted, each with its own PPGTT", 1, 64),
  }),
  requires: { guestOps: ["submit"] },
  phases(p) {
    return [
      {
        name: "submit workloads",
        run(ctx) {
          for (const g of ctx.vgpusWith("submit")) {
            for (let w = 0; w < p.workloads; w++) {
              const leaves = pickFrames(ctx, g.vm, p.leaves);
              const before = g.pins.livePages;
              const r = g.driver!.submit!(leaves);
              const pinned = g.pins.livePages - before;
              ctx.note(`${g.name}: workload ${w + 1} ${r.completed ? "completed" : "failed (failsafe)"}: ${r.shadowedLeaves} leaves shadowed, ${pinned} pages pinned, ${r.protectedPages} table pages write-protected, ${r.copiedBytes} bytes copied`);
              ctx.check(pinned <= p.leaves, `${g.name}: workload ${w + 1} pins no more than its ${p.leaves} present leaves (${pinned} pinned)`);
            }
          }
        },
      },
    ];
  },
};
