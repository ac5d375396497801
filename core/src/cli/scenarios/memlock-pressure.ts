/**
 * vendors.md 5.11, memory-lock pressure: with RLIMIT_MEMLOCK lowered (as
 * prlimit would, on the running VMM) in an mdev-only container, pins fail
 * with -ENOMEM once locked_vm reaches the limit; a GVT-like vendor points the
 * entries at scratch and the guest keeps running. locked_vm never exceeds the
 * limit without CAP_IPC_LOCK.
 */
import { isKernelError } from "../../errors/kernel-error.js";
import type { ScenarioDefinition } from "../scenario-api.js";
import { parseSize } from "../sizes.js";
import { clampSlots } from "./common-phases.js";
import { pickFrames } from "./guest-memory.js";
import { int, params } from "./params.js";

interface Params {
  memlock: string;
  pages: number;
}

export const memlockPressure: ScenarioDefinition<Params> = {
  name: "memlock-pressure",
  title: "Memory-lock pressure",
  item: 11,
  description: "RLIMIT_MEMLOCK lowered under the VMM, then more pages mapped than it allows",
  params: params({
    memlock: { type: "string", pattern: "^([0-9]+(KiB|MiB|GiB)|stack)$", default: "1MiB", description: 'the lowered RLIMIT_MEMLOCK, such as "1MiB", or "stack" to keep the stack\'s' },
    pages: int(512, "pages each vGPU maps", 1, 1 << 20),
  }),
  requires: { guestOps: ["map"] },
  phases(p) {
    return [
      {
        name: "lower RLIMIT_MEMLOCK",
        run(ctx) {
          if (p.memlock === "stack") return;
          const bytes = parseSize(p.memlock)!;
          for (const vm of new Set(ctx.vgpusWith("map").map((g) => g.vm))) {
            vm.vm.vmm.rlimitMemlock = bytes;
            ctx.note(`${vm.name}: RLIMIT_MEMLOCK lowered to ${p.memlock} (${vm.vm.vmm.memlockLimitPages} pages), locked_vm is ${vm.vm.vmm.mm.lockedVm}`);
          }
        },
      },
      {
        name: "map past the limit",
        run(ctx) {
          for (const g of ctx.vgpusWith("map")) {
            const n = clampSlots(ctx, g, p.pages, "the mapping");
            const failed = g.pins.failedPins;
            const gfns = pickFrames(ctx, g.vm, n);
            // In requests of 64 pages, as a guest driver would; a vendor that reports failure to the guest throws.
            const refused = new Map<string, number>();
            for (let at = 0; at < n; at += 64) {
              try {
                g.driver!.map(at, gfns.slice(at, at + 64));
              } catch (e) {
                const code = isKernelError(e) ? e.code : String(e);
                refused.set(code, (refused.get(code) ?? 0) + 1);
              }
            }
            const vmm = g.vm.vm.vmm;
            const errors = [...refused].map(([code, k]) => `${k} requests refused with ${code}`).join(", ");
            ctx.note(`${g.name}: ${n} entries written: ${g.pins.livePages} pages pinned, ${g.pins.failedPins - failed} pin calls refused${errors === "" ? "" : ` (the guest saw ${errors})`}; locked_vm ${vmm.mm.lockedVm} of ${vmm.memlockLimitPages} pages`);
            if (!vmm.capable("CAP_IPC_LOCK")) ctx.check(vmm.mm.lockedVm <= vmm.memlockLimitPages, `${g.vm.name}: locked_vm stays within RLIMIT_MEMLOCK`);
          }
        },
      },
    ];
  },
};
