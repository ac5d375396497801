/**
 * vendors.md 5.13, a hostile guest: an entry pointing outside guest RAM (the
 * pin is refused with -EINVAL: a scratch entry, nothing pinned), a table
 * write outside the vGPU's partition (ignored), and random MMIO accesses of
 * every size and alignment: each is accepted or refused with an errno, and
 * none may crash the host.
 */
import { isKernelError } from "../../errors/kernel-error.js";
import { VFIO_PCI_BAR0_REGION_INDEX } from "../../vendor/vgpu-vendor.js";
import type { ScenarioDefinition } from "../scenario-api.js";
import { frameOutsideRam } from "./guest-memory.js";
import { int, params } from "./params.js";

interface Params {
  accesses: number;
  barBytes: number;
}

const SIZES = [1, 2, 3, 4, 8, 16];

export const hostileGuest: ScenarioDefinition<Params> = {
  name: "hostile-guest",
  title: "A hostile guest",
  item: 13,
  description: "entries outside guest RAM and outside the partition, and random MMIO accesses: refused or ignored, never a crash",
  params: params({
    accesses: int(500, "random BAR0 accesses", 0, 1 << 20),
    barBytes: int(0x4000, "span of BAR0 offsets the accesses hit", 16, 1 << 30),
  }),
  phases(p) {
    return [
      {
        name: "entry outside guest RAM",
        run(ctx) {
          for (const g of ctx.vgpusWith("map")) {
            const gfn = frameOutsideRam(g.vm);
            const failed = g.pins.failedPins;
            try {
              g.driver!.map(0, [gfn]);
              ctx.note(`${g.name}: an entry at frame ${gfn}, outside guest RAM: ${g.pins.failedPins - failed} pin(s) refused, ${g.pins.refsInRange(gfn, 1)} held`);
            } catch (e) {
              ctx.note(`${g.name}: an entry at frame ${gfn}, outside guest RAM: refused with ${isKernelError(e) ? e.code : String(e)}`);
            }
            ctx.check(g.pins.refsInRange(gfn, 1) === 0, `${g.name} pins nothing outside guest RAM`);
            g.driver!.unmap(0, 1);
          }
        },
      },
      {
        name: "write outside the partition",
        run(ctx) {
          for (const g of ctx.vgpusWith("writeOutsidePartition")) {
            const refs = g.pins.liveRefs;
            g.driver!.writeOutsidePartition!(0x2000);
            ctx.check(g.pins.liveRefs === refs, `${g.name} ignores a table write outside its partition`);
          }
        },
      },
      {
        name: "random MMIO",
        run(ctx) {
          for (const g of ctx.vgpus.filter((x) => x.alive)) {
            const outcome = new Map<string, number>();
            for (let i = 0; i < p.accesses; i++) {
              const size = SIZES[ctx.rng.below(SIZES.length)]!;
              const offset = BigInt(ctx.rng.below(p.barBytes));
              const write = ctx.rng.below(2) === 0;
              let key: string;
              try {
                if (write) {
                  const data = new Uint8Array(size);
                  for (let b = 0; b < size; b++) data[b] = ctx.rng.below(256);
                  g.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, offset, data);
                } else g.vgpu.read(VFIO_PCI_BAR0_REGION_INDEX, offset, size);
                key = "accepted";
              } catch (e) {
                if (!isKernelError(e)) throw e;
                key = e.code;
              }
              outcome.set(key, (outcome.get(key) ?? 0) + 1);
            }
            const parts = [...outcome].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, n]) => `${n} ${k}`);
            ctx.note(`${g.name}: ${p.accesses} random BAR0 accesses: ${parts.join(", ") || "none"}`);
            ctx.check(!ctx.host.kernel.crashed, `random MMIO on ${g.name} does not crash the host`);
          }
        },
      },
    ];
  },
};
