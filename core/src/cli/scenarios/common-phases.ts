/**
 * Phases several scenarios share: scanning out a framebuffer (GGTT-style
 * writes, one pinned and mapped page each), exporting it as a dma-buf,
 * pinning into balloon memory and ballooning it out, a migration round, and
 * resets. Each notes what it saw per vGPU in the run's notes.
 */
import type { ScenarioContext, ScenarioVgpu } from "../scenario-api.js";
import { balloonBlock, balloonBlocks, pickFrames } from "./guest-memory.js";

/** 32 bpp scanout pages of a mode. */
export const scanoutPages = (width: number, height: number): number => Math.ceil((width * height * 4) / 4096);

/** Slots a scenario may use on a vGPU, clamped with a note. */
export function clampSlots(ctx: ScenarioContext, g: ScenarioVgpu, want: number, what: string): number {
  const slots = g.driver?.slots ?? 0;
  if (want <= slots) return want;
  ctx.note(`${g.name}: ${g.type} has ${slots} slots, so ${what} uses ${slots} of ${want} pages`);
  return slots;
}

/** Guest frames each vGPU's framebuffer took, by vGPU name. */
export type FrameTable = Map<string, number[]>;

export function mapFramebuffers(ctx: ScenarioContext, width: number, height: number, frames: FrameTable, firstSlot = 0): void {
  for (const g of ctx.vgpusWith("map")) {
    const pages = clampSlots(ctx, g, scanoutPages(width, height), `a ${width}x${height} scanout`);
    const before = { pinned: g.pins.livePages, maps: g.pins.mappingsLive };
    const gfns = pickFrames(ctx, g.vm, pages);
    g.driver!.map(firstSlot, gfns);
    frames.set(g.name, gfns);
    ctx.note(`${g.name}: ${pages} entries written for ${width}x${height}: ${g.pins.livePages - before.pinned} pages pinned, ${g.pins.mappingsLive - before.maps} device mappings`);
  }
}

/** Programs the plane, queries it and exports it; returns the dma-buf ids exported, by vGPU. */
export function exportPlanes(ctx: ScenarioContext, width: number, height: number, firstSlot = 0): Map<string, number> {
  const exported = new Map<string, number>();
  for (const g of ctx.vgpusWith("map", "setPlane")) {
    const pages = clampSlots(ctx, g, scanoutPages(width, height), "the plane");
    g.driver!.setPlane!(firstSlot, pages, width, height);
    const plane = g.vgpu.queryPlane("primary");
    if (plane === undefined || plane.dmabufId === 0) {
      ctx.note(`${g.name}: QUERY_GFX_PLANE found no plane`);
      continue;
    }
    const refs = g.pins.liveRefs;
    g.vgpu.getDmabuf(plane.dmabufId);
    ctx.note(`${g.name}: dma-buf ${plane.dmabufId} exported (${plane.width}x${plane.height}): pin references ${refs} -> ${g.pins.liveRefs} (the vendor's own references on its pages are not pins)`);
    const again = g.vgpu.queryPlane("primary");
    ctx.note(`${g.name}: re-query with the same mode ${again?.dmabufId === plane.dmabufId ? "reuses" : "does not reuse"} dma-buf ${plane.dmabufId}`);
    exported.set(g.name, plane.dmabufId);
  }
  return exported;
}

/** Points `pagesPerBlock` slots of every mapping vGPU at frames of balloon blocks [0, blocks); returns the vGPUs that did. */
export function pinIntoBalloon(ctx: ScenarioContext, blocks: number, pagesPerBlock: number, firstSlotOf: number | ((g: ScenarioVgpu) => number)): ScenarioVgpu[] {
  const used: ScenarioVgpu[] = [];
  for (const g of ctx.vgpusWith("map")) {
    const firstSlot = typeof firstSlotOf === "number" ? firstSlotOf : firstSlotOf(g);
    const n = Math.min(blocks, balloonBlocks(g.vm));
    if (n === 0) {
      ctx.note(`${g.name}: ${g.vm.name} has no balloon memory`);
      continue;
    }
    const gfns: number[] = [];
    for (let b = 0; b < n; b++) {
      const blk = balloonBlock(g.vm, b)!;
      for (let i = 0; i < Math.min(pagesPerBlock, blk.npages); i++) gfns.push(blk.first + i);
    }
    const slots = clampSlots(ctx, g, gfns.length, "balloon pages") - Math.max(0, firstSlot + gfns.length - (g.driver?.slots ?? 0));
    if (slots <= 0) {
      ctx.note(`${g.name}: no slot left for balloon pages after slot ${firstSlot}`);
      continue;
    }
    g.driver!.map(firstSlot, gfns.slice(0, slots));
    const first = balloonBlock(g.vm, 0)!;
    ctx.note(`${g.name}: ${slots} entries point into ${n} balloon blocks of ${g.vm.name}: ${g.pins.refsInRange(first.first, first.npages * n)} pin references there`);
    used.push(g);
  }
  return used;
}

/** Balloons out blocks [0, blocks) of each VM of `vgpus` and checks that no vGPU kept a pin there. */
export async function balloonOut(ctx: ScenarioContext, vgpus: readonly ScenarioVgpu[], blocks: number, expectClean = true): Promise<void> {
  for (const vm of new Set(vgpus.map((g) => g.vm))) {
    const n = Math.min(blocks, balloonBlocks(vm));
    const r = await vm.vm.balloonOut(0, n);
    ctx.note(`${vm.name}: balloon out of ${n} blocks: ${typeof r === "bigint" ? `${r} bytes removed` : `errno ${r}`}`);
    const first = balloonBlock(vm, 0)!;
    for (const g of vgpus.filter((x) => x.vm === vm)) {
      const left = g.pins.refsInRange(first.first, first.npages * n);
      if (expectClean) ctx.check(left === 0, `${g.name} holds no pin in ballooned-out memory (${left} left)`);
      else ctx.note(`${g.name}: ${left} pin references left in ballooned-out memory`);
    }
  }
}

export async function balloonIn(ctx: ScenarioContext, vgpus: readonly ScenarioVgpu[], blocks: number): Promise<void> {
  for (const vm of new Set(vgpus.map((g) => g.vm))) {
    const n = Math.min(blocks, balloonBlocks(vm));
    const r = await vm.vm.balloonIn(0, n);
    ctx.note(`${vm.name}: balloon in of ${n} blocks: ${r === 0 ? "ok" : `errno ${r}`}`);
  }
}

/** One pre-copy round: the pages each migrating vGPU reports dirty over low RAM, and whether they cover its pins. */
export function dirtyRound(ctx: ScenarioContext, round: number, frames: FrameTable): void {
  for (const g of ctx.vgpus) {
    if (!g.alive) continue;
    if (!g.vendor.capabilities.migration || g.vgpu.dirtyPages === undefined) {
      ctx.note(`${g.name}: ${g.vendor.id} has no migration: no dirty tracking (not supported by ${g.vendor.id})`);
      continue;
    }
    const gfns = frames.get(g.name) ?? [];
    if (gfns.length === 0) continue;
    const lo = Math.min(...gfns);
    const hi = Math.max(...gfns) + 1;
    const report = g.vgpu.dirtyPages(lo, hi - lo);
    let dirty = 0;
    for (let i = 0; i < report.npages; i++) if ((report.bitmap[i >> 3]! >> (i & 7)) & 1) dirty++;
    let pinnedClean = 0;
    for (const gfn of gfns) {
      const i = gfn - report.firstGfn;
      const bit = i >= 0 && i < report.npages ? (report.bitmap[i >> 3]! >> (i & 7)) & 1 : 0;
      if (bit === 0 && g.pins.refsInRange(gfn, 1) > 0) pinnedClean++;
    }
    ctx.note(`${g.name}: round ${round}: ${dirty} dirty pages, ${g.pins.livePages} still pinned`);
    ctx.check(pinnedClean === 0, `${g.name} reports every pinned page dirty in round ${round} (${pinnedClean} pinned pages reported clean)`);
  }
}

export async function resetAll(ctx: ScenarioContext, kind: "flr" | "engine" | "d3-resume"): Promise<void> {
  for (const g of ctx.vgpus) {
    if (!g.alive) continue;
    const before = { refs: g.pins.liveRefs, maps: g.pins.mappingsLive };
    await g.vgpu.reset(kind);
    ctx.note(`${g.name}: reset (${kind}): pin references ${before.refs} -> ${g.pins.liveRefs}, device mappings ${before.maps} -> ${g.pins.mappingsLive}`);
  }
}
