/**
 * vendors.md 5.5, balloon or hot-unplug while pinned: entries point into
 * balloon memory, the hypervisor takes the blocks away (on KVM a v2
 * UNMAP_DMA per block, which calls every device's dmaUnmap with the whole
 * range), the vendor must drop every pin there before dmaUnmap returns; the
 * blocks come back and the guest points its entries at them again.
 *
 * Fault injection (`vendorIgnoresUnmap`): the vendor ignores dmaUnmap, so
 * type1 retries the unmap and, after 10 retries, hits its BUG_ON.
 */
import type { ScenarioDefinition, ScenarioVgpu } from "../scenario-api.js";
import { balloonIn, balloonOut, pinIntoBalloon } from "./common-phases.js";
import { bool, int, params } from "./params.js";

interface Params {
  blocks: number;
  pagesPerBlock: number;
  vendorIgnoresUnmap: boolean;
}

export const balloonWhilePinned: ScenarioDefinition<Params> = {
  name: "balloon-while-pinned",
  title: "Balloon or hot-unplug while pinned",
  item: 5,
  description: "balloon blocks with pinned pages taken away: dmaUnmap with the whole range, no pin may stay; optionally a vendor that ignores it (type1's BUG)",
  params: params({
    blocks: int(4, "balloon blocks to pin into and take away", 1, 1 << 20),
    pagesPerBlock: int(64, "entries pointing into each block", 1, 1 << 18),
    vendorIgnoresUnmap: bool(false, "inject a vendor that ignores dmaUnmap"),
  }),
  requires: { guestOps: ["map"], balloon: true },
  phases(p) {
    let used: ScenarioVgpu[] = [];
    return [
      { name: "pin into balloon memory", run: (ctx) => void (used = pinIntoBalloon(ctx, p.blocks, p.pagesPerBlock, 0)) },
      {
        name: "balloon out",
        async run(ctx) {
          if (p.vendorIgnoresUnmap) for (const g of used) ctx.setIgnoreDmaUnmap(g, true);
          await balloonOut(ctx, used, p.blocks, !p.vendorIgnoresUnmap);
        },
      },
      {
        name: "balloon in and remap",
        async run(ctx) {
          await balloonIn(ctx, used, p.blocks);
          used = pinIntoBalloon(ctx, p.blocks, p.pagesPerBlock, 0);
        },
      },
    ];
  },
};
