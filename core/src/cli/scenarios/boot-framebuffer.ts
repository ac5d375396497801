/**
 * vendors.md 5.1, boot and framebuffer mapping: the guest driver writes one
 * GGTT entry per scanout page (1920x1080x32bpp: 2,025 writes, 2,025 pins and
 * device mappings), QEMU queries the plane and exports it as a dma-buf (extra
 * page references), a re-query with the same mode reuses it, and a mode
 * change maps a new scanout and releases the old dma-buf.
 */
import type { ScenarioDefinition } from "../scenario-api.js";
import { clampSlots, exportPlanes, mapFramebuffers, scanoutPages, type FrameTable } from "./common-phases.js";
import { pickFrames } from "./guest-memory.js";
import { bool, int, params } from "./params.js";

interface Params {
  width: number;
  height: number;
  modeChange: boolean;
}

export const bootFramebuffer: ScenarioDefinition<Params> = {
  name: "boot-framebuffer",
  title: "Boot and framebuffer mapping",
  item: 1,
  description: "GGTT writes for a scanout, one pin and one device mapping per page; plane query, dma-buf export and reuse; a mode change",
  params: params({
    width: int(1920, "scanout width in pixels", 1, 8192),
    height: int(1080, "scanout height in pixels", 1, 8192),
    modeChange: bool(true, "switch to 1280x720 afterwards"),
  }),
  requires: { guestOps: ["map"] },
  phases(p) {
    const frames: FrameTable = new Map();
    const dmabufs = new Map<string, number>();
    return [
      { name: "GGTT writes for the scanout", run: (ctx) => mapFramebuffers(ctx, p.width, p.height, frames) },
      {
        name: "plane query and dma-buf export",
        run(ctx) {
          for (const [name, id] of exportPlanes(ctx, p.width, p.height)) dmabufs.set(name, id);
          ctx.snapshotIova(`${p.width}x${p.height} scanouts mapped`);
        },
      },
      {
        name: "mode change to 1280x720",
        run(ctx) {
          if (!p.modeChange) return;
          for (const g of ctx.vgpusWith("map", "unmap")) {
            const old = frames.get(g.name) ?? [];
            const pages = clampSlots(ctx, g, scanoutPages(1280, 720), "the new mode");
            const at = old.length + pages <= g.driver!.slots ? old.length : 0;
            const gfns = pickFrames(ctx, g.vm, pages);
            const refs = g.pins.liveRefs;
            if (at === 0) g.driver!.unmap(0, old.length);
            g.driver!.map(at, gfns);
            if (g.driver!.setPlane !== undefined) {
              g.driver!.setPlane(at, pages, 1280, 720);
              const plane = g.vgpu.queryPlane("primary");
              const oldId = dmabufs.get(g.name);
              if (plane !== undefined && plane.dmabufId !== 0) g.vgpu.getDmabuf(plane.dmabufId);
              if (oldId !== undefined) g.vgpu.releaseDmabuf(oldId);
            }
            if (at !== 0) g.driver!.unmap(0, old.length);
            ctx.note(`${g.name}: mode change: ${pages} new entries, pin references ${refs} -> ${g.pins.liveRefs}`);
          }
        },
      },
    ];
  },
};
