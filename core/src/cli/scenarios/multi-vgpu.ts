/**
 * vendors.md 5.12, several vGPUs on one physical GPU: up to 8 GVT vGPUs on
 * different VMs (one per VM), several per VM for NVIDIA-like vendors. They
 * all share the parent's one IOVA space and requester ID, so the IOMMU cannot
 * keep them apart: the check is that no vGPU's tables reach another's device
 * addresses, or addresses no longer mapped.
 */
import type { ScenarioDefinition, ScenarioVgpu } from "../scenario-api.js";
import { clampSlots } from "./common-phases.js";
import { pickFrames } from "./guest-memory.js";
import { int, params } from "./params.js";

interface Params {
  vgpus: number;
  pages: number;
}

export const multiVgpu: ScenarioDefinition<Params> = {
  name: "multi-vgpu",
  title: "Several vGPUs on one GPU",
  item: 12,
  description: "vGPUs added until there are enough on one parent, each maps pages, and none reaches another's device addresses",
  params: params({ vgpus: int(3, "vGPUs on the first vGPU's vendor", 2, 64), pages: int(256, "pages each vGPU maps", 1, 1 << 16) }),
  requires: { guestOps: ["map"] },
  phases(p) {
    return [
      {
        name: "add vGPUs",
        async run(ctx) {
          const first = ctx.vgpusWith("map")[0];
          if (first === undefined) return ctx.skip("the stack has no vGPU to add to");
          const same = (): ScenarioVgpu[] => ctx.vgpus.filter((g) => g.alive && g.vendor.id === first.vendor.id);
          let n = 0;
          while (same().length < p.vgpus) {
            if (first.vendor.vendor.availableInstances(first.type) === 0) {
              ctx.note(`${first.vendor.id}: no instance of ${first.type} left after ${same().length} vGPUs`);
              break;
            }
            let vm = first.vm;
            if (first.vendor.capabilities.onePerVm) vm = await ctx.addVm({ name: `extra-vm${++n}`, ramBytes: 64n << 20n });
            const g = await ctx.addVgpu(vm, first.vendor, first.type, `extra-vgpu${same().length}`);
            ctx.note(`${g.name}: added to ${vm.name} (${first.vendor.capabilities.onePerVm ? "one per VM" : "several per VM allowed"})`);
          }
        },
      },
      {
        name: "each maps pages",
        run(ctx) {
          for (const g of ctx.vgpusWith("map")) g.driver!.map(0, pickFrames(ctx, g.vm, clampSlots(ctx, g, p.pages, "the mapping")));
          ctx.snapshotIova(`${ctx.vgpus.filter((g) => g.alive).length} vGPUs mapped`);
        },
      },
      {
        name: "isolation check",
        run(ctx) {
          for (const g of ctx.vgpus.filter((x) => x.alive)) {
            const visible = g.driver?.visibleAddresses?.() ?? g.pins.liveDeviceAddresses();
            const findings = g.services.checkIsolation(visible);
            const foreign = findings.filter((f) => f.kind === "other-vgpu").length;
            const unmapped = findings.filter((f) => f.kind === "unmapped").length;
            ctx.note(`${g.name}: ${visible.length} device addresses visible, ${foreign} of another vGPU, ${unmapped} unmapped`);
            ctx.check(foreign === 0, `${g.name} reaches no other vGPU's device addresses`);
          }
        },
      },
    ];
  },
};
