/**
 * vendors.md 5.4, huge pages: a 2M entry on THP-backed RAM is one 2 MiB pin
 * and one 2 MiB mapping; on fragmented host memory the contiguity check fails
 * and it splits into 512 single-page pins; 64K entries always split into 16;
 * a 1G entry is an error.
 */
import { isKernelError } from "../../errors/kernel-error.js";
import type { ScenarioDefinition } from "../scenario-api.js";
import { lowRamFrames, pickRun } from "./guest-memory.js";
import { params, int } from "./params.js";

interface Params {
  hugeEntries: number;
}

const SIZES: readonly [string, number][] = [
  ["2M", 2 << 20],
  ["64K", 64 << 10],
  ["1G", 1 << 30],
];

export const hugePages: ScenarioDefinition<Params> = {
  name: "huge-pages",
  title: "Huge pages",
  item: 4,
  description: "2M, 64K and 1G guest entries: how many pins and mappings each becomes on the VM's backing",
  params: params({ hugeEntries: int(4, "2M entries to write", 1, 4096) }),
  requires: { guestOps: ["mapHuge", "unmap"] },
  phases(p) {
    return SIZES.map(([label, bytes]) => ({
      name: `${label} entries`,
      run(ctx) {
        for (const g of ctx.vgpusWith("mapHuge", "unmap")) {
          const pages = bytes / 4096;
          const count = label === "2M" ? p.hugeEntries : 1;
          const before = { translations: g.pins.mappingsLive, pinned: g.pins.livePages };
          try {
            for (let i = 0; i < count; i++) {
              const { first, end } = lowRamFrames(g.vm);
              // A guest smaller than the page still writes the entry: at frame 0, whatever backs it.
              const base = end - first >= 2 * pages ? pickRun(ctx, g.vm, pages, pages) : 0;
              g.driver!.mapHuge!(i, base, bytes);
            }
            ctx.note(`${g.name}: ${count} ${label} entries on ${g.vm.spec.backing ?? "scattered-4k"} RAM: ${g.pins.livePages - before.pinned} pages pinned, ${g.pins.mappingsLive - before.translations} device mappings`);
          } catch (e) {
            ctx.note(`${g.name}: a ${label} entry: ${isKernelError(e) ? `${e.code} (${e.reason})` : String(e)}`);
          }
          g.driver!.unmap(0, count);
        }
      },
    }));
  },
};
