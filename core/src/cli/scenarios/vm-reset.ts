/**
 * vendors.md 5.7, VM reset: VFIO_DEVICE_RESET (FLR) releases every GGTT slot
 * to scratch and every PPGTT; pins drop to the dma-buf references. Variant:
 * guest S3 (D3hot then D0) followed by reset, where GVT keeps its PPGTTs.
 */
import type { ScenarioDefinition } from "../scenario-api.js";
import { exportPlanes, mapFramebuffers, resetAll, type FrameTable } from "./common-phases.js";
import { int, params } from "./params.js";

interface Params {
  width: number;
  height: number;
}

export const vmReset: ScenarioDefinition<Params> = {
  name: "vm-reset",
  title: "VM reset",
  item: 7,
  description: "FLR after a scanout was mapped and exported; then an S3 resume followed by reset",
  params: params({ width: int(1920, "scanout width", 1, 8192), height: int(1080, "scanout height", 1, 8192) }),
  requires: { guestOps: ["map"] },
  phases(p) {
    const frames: FrameTable = new Map();
    return [
      {
        name: "scanout mapped and exported",
        run(ctx) {
          mapFramebuffers(ctx, p.width, p.height, frames);
          exportPlanes(ctx, p.width, p.height);
          ctx.snapshotIova("before the reset");
        },
      },
      {
        name: "FLR",
        async run(ctx) {
          await resetAll(ctx, "flr");
          for (const g of ctx.vgpusWith("map")) ctx.check(g.pins.mappingsLive <= g.pins.liveRefs, `${g.name}: after FLR every mapping left belongs to a pinned page`);
        },
      },
      { name: "scanout mapped again", run: (ctx) => mapFramebuffers(ctx, p.width, p.height, frames) },
      { name: "S3 resume then reset", run: (ctx) => resetAll(ctx, "d3-resume") },
    ];
  },
};
