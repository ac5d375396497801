/**
 * The default tour: what pinning, accounting and mapping do over a VM's life.
 * Boot and scanout (vendors.md 5.1), display export, balloon while pinned
 * (5.5), a migration round (5.10, where the vendor can migrate), an FLR
 * (5.7), then shutdown by the runner.
 */
import type { ScenarioDefinition, ScenarioVgpu } from "../scenario-api.js";
import { balloonIn, balloonOut, dirtyRound, exportPlanes, mapFramebuffers, pinIntoBalloon, resetAll, type FrameTable } from "./common-phases.js";
import { int, params } from "./params.js";

interface Params {
  width: number;
  height: number;
  balloonBlocks: number;
  pagesPerBlock: number;
}

export const lifecycle: ScenarioDefinition<Params> = {
  name: "lifecycle",
  title: "A VM's life",
  description: "scanout, dma-buf export, balloon while pinned, a migration round where supported, FLR and shutdown",
  params: params({
    width: int(1920, "scanout width", 1, 8192),
    height: int(1080, "scanout height", 1, 8192),
    balloonBlocks: int(4, "balloon blocks pinned into and taken away", 0, 1 << 20),
    pagesPerBlock: int(32, "entries pointing into each block", 1, 1 << 18),
  }),
  requires: { guestOps: ["map"] },
  phases(p) {
    const frames: FrameTable = new Map();
    let ballooned: ScenarioVgpu[] = [];
    return [
      { name: "boot: scanout mapped", run: (ctx) => mapFramebuffers(ctx, p.width, p.height, frames) },
      { name: "display: dma-buf exported", run: (ctx) => void exportPlanes(ctx, p.width, p.height) },
      {
        name: "balloon memory pinned",
        run(ctx) {
          if (p.balloonBlocks === 0) return;
          // Balloon entries go after the scanout's, or at the end of the table when the scanout filled it.
          const entries = p.balloonBlocks * p.pagesPerBlock;
          ballooned = pinIntoBalloon(ctx, p.balloonBlocks, p.pagesPerBlock, (g) => Math.max(0, Math.min(frames.get(g.name)?.length ?? 0, (g.driver?.slots ?? 0) - entries)));
          ctx.snapshotIova("scanouts and balloon pages mapped");
        },
      },
      { name: "balloon out", run: (ctx) => balloonOut(ctx, ballooned, p.balloonBlocks) },
      { name: "balloon in", run: (ctx) => balloonIn(ctx, ballooned, p.balloonBlocks) },
      { name: "migration round", run: (ctx) => dirtyRound(ctx, 1, frames) },
      { name: "reset (FLR)", run: (ctx) => resetAll(ctx, "flr") },
    ];
  },
};
