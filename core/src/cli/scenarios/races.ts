/**
 * vendors.md 5.14, races: type1 drops its lock while it calls dmaUnmap, so a
 * vendor may be pinning in the very range being unmapped; its own lock has to
 * serialise the two. Each round balloons out one block and, at a seeded
 * point, has the guest point entries into that block: before the unmap,
 * inside it before the vendor's sweep, inside it just after the sweep (type1
 * then finds pins again and calls dmaUnmap once more), or after it. Once the
 * block is gone, no pin may remain in it.
 */
import type { ScenarioDefinition } from "../scenario-api.js";
import { clampSlots } from "./common-phases.js";
import { balloonBlock, balloonBlocks } from "./guest-memory.js";
import { int, params } from "./params.js";

interface Params {
  rounds: number;
  pages: number;
}

const POINTS = ["before the unmap", "inside dmaUnmap, before the vendor's sweep", "inside dmaUnmap, after the vendor's sweep", "after the unmap"] as const;

export const races: ScenarioDefinition<Params> = {
  name: "races",
  title: "Races between dmaUnmap and pinning",
  item: 14,
  description: "guest entries into a balloon block written before, inside (either side of the vendor's sweep) and after its unmap; nothing stays pinned in removed memory",
  params: params({ rounds: int(8, "rounds per vGPU", 1, 10000), pages: int(16, "entries written into the block each round", 2, 4096) }),
  requires: { guestOps: ["map", "unmap"], balloon: true },
  phases(p) {
    return [
      {
        name: "interleaved unmap and pin",
        async run(ctx) {
          for (const g of ctx.vgpusWith("map", "unmap")) {
            const blocks = balloonBlocks(g.vm);
            if (blocks === 0) continue;
            const n = clampSlots(ctx, g, p.pages, "each round");
            const outcomes = new Map<string, number>();
            if (g.vendor.capabilities.ownRequesterId) ctx.note(`${g.name}: a VF pins nothing, so type1 has nothing to call dmaUnmap about: the rounds check that nothing is left`);
            for (let r = 0; r < p.rounds; r++) {
              const b = r % blocks;
              const blk = balloonBlock(g.vm, b)!;
              const gfns = Array.from({ length: Math.min(n, blk.npages) }, (_, i) => blk.first + i);
              const point = POINTS[ctx.rng.below(POINTS.length)]!;
              let pinned = -1;
              // Never throws: it may run inside dmaUnmap, where type1 expects the vendor back.
              const write = (): void => {
                const before = g.pins.refsInRange(blk.first, blk.npages);
                try {
                  g.driver!.map(1, gfns.slice(1));
                } catch {
                  // Refused (the guest sees an error): counted as refused below.
                }
                pinned = g.pins.refsInRange(blk.first, blk.npages) - before;
              };
              const unmaps = g.pins.invalidations;
              // One entry is in the block before anything else, so the unmap has a pin to call dmaUnmap about.
              g.driver!.map(0, gfns.slice(0, 1));
              if (point === POINTS[0]) write();
              else if (point === POINTS[1]) ctx.interleaveDmaUnmap(g, "before", write);
              else if (point === POINTS[2]) ctx.interleaveDmaUnmap(g, "after", write);
              const gone = await g.vm.vm.balloonOut(b, 1);
              if (point === POINTS[3]) write();
              const calls = g.pins.invalidations - unmaps;
              const left = g.pins.refsInRange(blk.first, blk.npages);
              const key = `${point}: ${pinned < 0 ? "never ran" : pinned > 0 ? "pinned" : "refused"}, ${calls} dmaUnmap call${calls === 1 ? "" : "s"}`;
              outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
              ctx.check(typeof gone === "bigint", `${g.vm.name}: balloon block ${b} goes out (${String(gone)})`);
              ctx.check(left === 0, `${g.name}: round ${r + 1} (${point}): no pin left in balloon block ${b} once it is gone (${left} left)`);
              g.driver!.unmap(0, gfns.length);
              await g.vm.vm.balloonIn(b, 1);
            }
            ctx.note(`${g.name}: ${p.rounds} rounds: ${[...outcomes].sort(([a], [c]) => (a < c ? -1 : 1)).map(([k, v]) => `${v} x ${k}`).join("; ")}`);
          }
        },
      },
    ];
  },
};
