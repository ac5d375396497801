/**
 * vendors.md 5.3, guest PTE churn: an 8-byte rewrite maps the new frame then
 * unmaps the old; split 4-byte writes; clearing the present bit unpins; one
 * frame in two entries is one pin; a frame used as 4K then as a 2M base; then
 * random rewrites over a window of entries, after which clearing every entry
 * must leave the vGPU holding nothing.
 */
import type { ScenarioDefinition } from "../scenario-api.js";
import { pickFrames, pickRun } from "./guest-memory.js";
import { int, params } from "./params.js";

interface Params {
  entries: number;
  rewrites: number;
}

export const pteChurn: ScenarioDefinition<Params> = {
  name: "pte-churn",
  title: "Guest PTE churn",
  item: 3,
  description: "rewrites, split writes, cleared entries, shared frames and random churn over a window of entries",
  params: params({
    entries: int(256, "entries the random churn rewrites", 8, 1 << 20),
    rewrites: int(2000, "random rewrites", 0, 1 << 24),
  }),
  requires: { guestOps: ["map", "unmap"] },
  phases(p) {
    return [
      {
        name: "rewrite, clear, share",
        run(ctx) {
          for (const g of ctx.vgpusWith("map", "unmap")) {
            const d = g.driver!;
            const [a, b, c, e] = pickFrames(ctx, g.vm, 4) as [number, number, number, number];
            if (g.vendor.capabilities.ownRequesterId) {
              d.map(0, [a]);
              d.map(0, [b]);
              d.unmap(0, 1);
              ctx.check(g.pins.pinnedTotal === 0, `${g.name}: a VF vGPU pins nothing while the guest rewrites its entries`);
              continue;
            }
            d.map(0, [a]);
            d.map(0, [b]);
            ctx.check(g.pins.refsInRange(a, 1) === 0 && g.pins.refsInRange(b, 1) > 0, `${g.name}: an 8-byte rewrite maps the new frame and releases the old`);
            d.unmap(0, 1);
            ctx.check(g.pins.refsInRange(b, 1) === 0, `${g.name}: clearing the present bit releases the frame`);
            d.map(2, [c]);
            d.map(3, [c]);
            ctx.note(`${g.name}: one frame in two entries holds ${g.pins.refsInRange(c, 1)} pin reference(s)`);
            d.unmap(2, 2);
            ctx.check(g.pins.refsInRange(c, 1) === 0, `${g.name}: clearing both entries of a shared frame releases it`);
            if (d.mapHalves !== undefined) {
              d.mapHalves(1, e);
              ctx.note(`${g.name}: a split 4-byte write of one entry: ${g.pins.refsInRange(e, 1)} pin reference(s) on its frame`);
              d.unmap(1, 1);
            } else ctx.note(`${g.name}: split 4-byte writes: not supported by ${g.vendor.id}`);
            if (d.mapHuge !== undefined) {
              const base = pickRun(ctx, g.vm, 512, 512);
              d.map(4, [base]);
              d.mapHuge(5, base, 2 << 20);
              ctx.note(`${g.name}: frame ${base} as a 4K entry then as a 2M base: ${g.pins.refsInRange(base, 1)} reference(s) on it, ${g.pins.refsInRange(base, 512)} on the 2M run`);
              d.unmap(4, 2);
            } else ctx.note(`${g.name}: a 4K frame reused as a 2M base: not supported by ${g.vendor.id}`);
          }
        },
      },
      {
        name: "random churn",
        async run(ctx) {
          for (const g of ctx.vgpusWith("map", "unmap")) {
            const n = Math.min(p.entries, g.driver!.slots);
            const pool = pickFrames(ctx, g.vm, Math.max(8, n >> 1));
            for (let i = 0; i < p.rewrites; i++) {
              const slot = ctx.rng.below(n);
              if (ctx.rng.below(8) === 0) g.driver!.unmap(slot, 1);
              else g.driver!.map(slot, [pool[ctx.rng.below(pool.length)]!]);
              if ((i & 1023) === 1023) await ctx.tick();
            }
            ctx.note(`${g.name}: ${p.rewrites} random rewrites over ${n} entries and ${pool.length} frames: ${g.pins.livePages} pages pinned, ${g.pins.mappingsLive} device mappings`);
            g.driver!.unmap(0, n);
            ctx.check(g.pins.liveRefs === 0, `${g.name} holds no pin once every entry is cleared (${g.pins.liveRefs} references left)`);
          }
        },
      },
    ];
  },
};
