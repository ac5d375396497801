/**
 * vendors.md 5.6, memslot churn: an SMRAM or ROM remap deletes and recreates
 * a memory slot (page-track's flush_slot drops write-protection there, and
 * translations of its frames are revoked); a BAR move is refused while a vGPU
 * is attached (Linux 6.6+); write-protecting a frame in no memslot is -EINVAL.
 */
import { ERRNO, errnoName } from "../../errors/errno.js";
import type { ScenarioDefinition } from "../scenario-api.js";
import { frameOutsideRam, pickRun } from "./guest-memory.js";
import { int, params } from "./params.js";

interface Params {
  pages: number;
}

const rc = (r: number): string => (r === 0 ? "ok" : `-${errnoName(r) ?? String(-r)}`);

export const memslotChurn: ScenarioDefinition<Params> = {
  name: "memslot-churn",
  title: "Memslot churn",
  item: 6,
  description: "a memory slot deleted and recreated under pinned pages, a memslot move refused, write-protection outside any memslot refused",
  params: params({ pages: int(64, "pages mapped in the slot before the churn", 1, 1 << 16) }),
  requires: { guestOps: ["map"] },
  phases(p) {
    const runs = new Map<string, number>();
    return [
      {
        name: "map pages",
        run(ctx) {
          for (const g of ctx.vgpusWith("map")) {
            const first = pickRun(ctx, g.vm, p.pages);
            g.driver!.map(0, Array.from({ length: Math.min(p.pages, g.driver!.slots) }, (_, i) => first + i));
            runs.set(g.name, first);
          }
        },
      },
      {
        name: "delete and recreate the slot",
        async run(ctx) {
          for (const g of ctx.vgpusWith("map")) {
            const hv = g.vm.hypervisor;
            if (hv?.recreateMemslot === undefined) {
              ctx.note(`${g.vm.name}: recreating a memslot: not supported by ${ctx.hypervisorId}`);
              continue;
            }
            const first = runs.get(g.name)!;
            const before = { refs: g.pins.liveRefs, inv: g.pins.mappingsLive };
            const r = await hv.recreateMemslot(BigInt(first) << 12n);
            ctx.note(`${g.vm.name}: memslot deleted and recreated: ${rc(r)}; ${g.name} pin references ${before.refs} -> ${g.pins.liveRefs}, mappings ${before.inv} -> ${g.pins.mappingsLive}`);
            ctx.check(g.pins.refsInRange(first, p.pages) === 0, `${g.name} holds no pin in a deleted memslot`);
          }
        },
      },
      {
        name: "move the slot",
        async run(ctx) {
          for (const g of ctx.vgpusWith("map")) {
            const hv = g.vm.hypervisor;
            if (hv?.moveMemslot === undefined) {
              ctx.note(`${g.vm.name}: moving a memslot: not supported by ${ctx.hypervisorId}`);
              continue;
            }
            const r = await hv.moveMemslot(BigInt(runs.get(g.name)!) << 12n, 1n << 40n);
            ctx.note(`${g.vm.name}: memslot move by 1 TiB with ${g.name} attached: ${rc(r)}`);
          }
        },
      },
      {
        name: "write-protect outside any memslot",
        run(ctx) {
          for (const g of ctx.vgpus.filter((x) => x.alive)) {
            const r = g.services.protect(frameOutsideRam(g.vm));
            ctx.note(`${g.name}: write-protecting a frame in no memslot: ${rc(r)}`);
            ctx.check(r === -ERRNO.EINVAL, `${g.name}: write-protecting a frame in no memslot is -EINVAL (got ${rc(r)})`);
          }
        },
      },
    ];
  },
};
