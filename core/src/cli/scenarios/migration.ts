/**
 * vendors.md 5.10, live-migration dirty tracking: each pre-copy round asks
 * the vendor for the pages it dirtied; every page still pinned must be
 * reported dirty, round after round, which is why long-lived GTT pins make
 * pre-copy converge worse. A vendor without migration (GVT) is skipped.
 */
import type { ScenarioDefinition } from "../scenario-api.js";
import { dirtyRound, mapFramebuffers, type FrameTable } from "./common-phases.js";
import { int, params } from "./params.js";

interface Params {
  rounds: number;
  width: number;
  height: number;
}

export const migrationDirty: ScenarioDefinition<Params> = {
  name: "migration-dirty",
  title: "Live-migration dirty tracking",
  item: 10,
  description: "pre-copy rounds over a mapped scanout: the dirty set always covers the pinned set",
  params: params({
    rounds: int(3, "pre-copy rounds", 1, 100),
    width: int(1920, "scanout width", 1, 8192),
    height: int(1080, "scanout height", 1, 8192),
  }),
  requires: { guestOps: ["map"], vendorCapability: "migration" },
  phases(p) {
    const frames: FrameTable = new Map();
    return [
      { name: "scanout mapped", run: (ctx) => mapFramebuffers(ctx, p.width, p.height, frames) },
      ...Array.from({ length: p.rounds }, (_, r) => ({ name: `pre-copy round ${r + 1}`, run: (ctx: Parameters<typeof dirtyRound>[0]) => dirtyRound(ctx, r + 1, frames) })),
    ];
  },
};
