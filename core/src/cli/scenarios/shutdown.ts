/**
 * vendors.md 5.9, shutdown and close: with scanouts mapped, each VM shuts
 * down (device fds closed first, then groups, then the container); every pin
 * and mapping is released and every charge returned, VM by VM.
 */
import type { ScenarioDefinition } from "../scenario-api.js";
import { mapFramebuffers, type FrameTable } from "./common-phases.js";
import { int, params } from "./params.js";

interface Params {
  width: number;
  height: number;
}

export const shutdown: ScenarioDefinition<Params> = {
  name: "shutdown",
  title: "Shutdown and close",
  item: 9,
  description: "VMs shut down one by one with scanouts mapped: nothing pinned, mapped or charged is left",
  params: params({ width: int(1920, "scanout width", 1, 8192), height: int(1080, "scanout height", 1, 8192) }),
  requires: { guestOps: ["map"] },
  phases(p) {
    const frames: FrameTable = new Map();
    return [
      { name: "scanout mapped", run: (ctx) => mapFramebuffers(ctx, p.width, p.height, frames) },
      {
        name: "shut down VM by VM",
        async run(ctx) {
          for (const vm of ctx.vms.filter((v) => v.alive)) {
            const locked = vm.vm.vmm.mm.lockedVm;
            await ctx.shutdownVm(vm);
            const mine = ctx.vgpus.filter((g) => g.vm === vm);
            ctx.note(`${vm.name}: shut down: locked_vm ${locked} -> ${vm.vm.vmm.mm.lockedVm} pages`);
            for (const g of mine) ctx.check(g.pins.liveRefs === 0 && g.pins.mappingsLive === 0, `${g.name} holds nothing after its VM shut down (${g.pins.liveRefs} pins, ${g.pins.mappingsLive} mappings)`);
            ctx.check(vm.vm.vmm.mm.lockedVm === 0, `${vm.name}: locked_vm returns to 0 at shutdown`);
          }
        },
      },
    ];
  },
};
