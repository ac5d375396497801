/**
 * vendors.md 5.8, guest driver unload and reload, engine hang: a reset of all
 * engines (GDRST) drops PPGTT shadows only, so GGTT pins survive; unloading
 * the driver clears every entry, which must release every pin; reloading maps
 * the scanout again.
 */
import type { ScenarioDefinition } from "../scenario-api.js";
import { mapFramebuffers, resetAll, type FrameTable } from "./common-phases.js";
import { int, params } from "./params.js";

interface Params {
  width: number;
  height: number;
}

export const driverReload: ScenarioDefinition<Params> = {
  name: "driver-reload",
  title: "Driver reload and engine hang",
  item: 8,
  description: "an engine reset with the scanout mapped (GGTT pins survive), then driver unload (every entry cleared) and reload",
  params: params({ width: int(1920, "scanout width", 1, 8192), height: int(1080, "scanout height", 1, 8192) }),
  requires: { guestOps: ["map", "unmap"] },
  phases(p) {
    const frames: FrameTable = new Map();
    const pinned = new Map<string, number>();
    return [
      {
        name: "scanout mapped",
        run(ctx) {
          mapFramebuffers(ctx, p.width, p.height, frames);
          for (const g of ctx.vgpusWith("map")) pinned.set(g.name, g.pins.livePages);
        },
      },
      {
        name: "engine hang: reset of all engines",
        async run(ctx) {
          await resetAll(ctx, "engine");
          for (const g of ctx.vgpusWith("map")) ctx.note(`${g.name}: ${g.pins.livePages} of ${pinned.get(g.name) ?? 0} GGTT-pinned pages survive the engine reset`);
        },
      },
      {
        name: "driver unload",
        run(ctx) {
          for (const g of ctx.vgpusWith("map", "unmap")) {
            g.driver!.unmap(0, frames.get(g.name)?.length ?? 0);
            ctx.check(g.pins.liveRefs === 0, `${g.name} holds no pin after the guest driver cleared every entry (${g.pins.liveRefs} left)`);
          }
        },
      },
      { name: "driver reload", run: (ctx) => mapFramebuffers(ctx, p.width, p.height, frames) },
    ];
  },
};
