/**
 * `xen-guest-balloon`: the guest's own balloon driver takes memory from under
 * a vGPU, as it does on Xen (hypervisors.md 4.9: XenGT has no callback here).
 *
 * Each vGPU points `pages` entries at the first frames of its VM's first
 * balloon block and write-protects `protect` of them. The guest then gives
 * the block back to Xen itself (XENMEM_decrease_reservation): the device
 * model is not in the loop, so no vGPU gets a dmaUnmap. What the host still
 * sees is the P2M change: the core revokes every translation listing one of
 * the frames, the ioreq server's tracker ends their write protection and
 * tells the vGPUs that held it, and frames the vendor pinned directly stay
 * allocated to it. The run notes what each vGPU still holds and how many of
 * the device addresses its tables use are no longer mapped (a DMA there
 * faults). The guest then populates the block again (fresh frames) and points
 * the same entries at it; whether the vendor translates them again or keeps
 * what the core revoked is the vendor's, and the run notes it.
 *
 * Check: no write protection survives in memory the guest gave back.
 */
import { defineScenario, type ScenarioContext, type ScenarioVgpu, type ScenarioVm } from "@vgpu-iommu/core/scenarios";
import { errnoName } from "@vgpu-iommu/core";
import type { XenPlatformVm } from "./xen-platform.js";

interface Params {
  pages: number;
  protect: number;
}

const PAGE = 4096n;

/** Balloon block 0 of a VM: its first frame and frame count, or undefined without a balloon. */
function firstBlock(vm: ScenarioVm): { first: number; npages: number } | undefined {
  const base = vm.vm.balloonBase;
  const b = vm.spec.balloon;
  return base === undefined || b === undefined ? undefined : { first: Number(base / PAGE), npages: Number(b.blockBytes / PAGE) };
}

const rc = (r: number | bigint): string => (typeof r === "bigint" ? `${r / PAGE} pages` : r === 0 ? "ok" : `-${errnoName(r) ?? String(-r)}`);

/** Device addresses the vGPU's tables use, and how many of them are no longer mapped. */
function unmappedVisible(g: ScenarioVgpu): { visible: number; unmapped: number } {
  const visible = g.driver?.visibleAddresses?.() ?? g.pins.liveDeviceAddresses();
  return { visible: visible.length, unmapped: g.services.checkIsolation(visible).filter((f) => f.kind === "unmapped").length };
}

export const guestBalloon = defineScenario<Params>({
  name: "xen-guest-balloon",
  title: "The guest balloons out by itself (Xen)",
  description: "the guest's balloon driver gives pinned, mapped and write-protected frames back to Xen with no device model in the loop: no dmaUnmap, the P2M change revokes translations and ends write protection; then it repopulates the block",
  params: {
    type: "object",
    additionalProperties: false,
    properties: {
      pages: { type: "integer", minimum: 1, maximum: 1 << 18, default: 64, description: "entries pointing into balloon block 0 (an integer in 1..262144)" },
      protect: { type: "integer", minimum: 0, maximum: 1 << 18, default: 4, description: "frames of those write-protected (an integer in 0..262144)" },
    },
  },
  requires: { guestOps: ["map"], hypervisorOps: ["decreaseReservation", "populatePhysmap"], balloon: true },
  phases(p) {
    const used = new Map<ScenarioVgpu, number[]>();
    const vms = (): ScenarioVm[] => [...new Set([...used.keys()].map((g) => g.vm))];
    return [
      {
        name: "map and protect in balloon memory",
        run(ctx) {
          for (const g of ctx.vgpusWith("map")) {
            const blk = firstBlock(g.vm);
            if (blk === undefined) {
              ctx.note(`${g.name}: ${g.vm.name} has no balloon memory`);
              continue;
            }
            const gfns = Array.from({ length: Math.min(p.pages, blk.npages, g.driver!.slots) }, (_, i) => blk.first + i);
            g.driver!.map(0, gfns);
            let prot = 0;
            for (const gfn of gfns.slice(0, p.protect)) if (g.services.protect(gfn) === 0) prot++;
            used.set(g, gfns);
            ctx.note(`${g.name}: ${gfns.length} entries point into balloon block 0 of ${g.vm.name}: ${g.pins.refsInRange(blk.first, blk.npages)} pin references, ${g.pins.mappingsLive} device mappings, ${prot} frames write-protected`);
          }
        },
      },
      {
        name: "the guest balloons out by itself",
        async run(ctx) {
          for (const vm of vms()) await balloonOut(ctx, vm, [...used.keys()].filter((g) => g.vm === vm));
        },
      },
      {
        name: "the guest balloons in, the entries are written again",
        async run(ctx) {
          for (const vm of vms()) {
            const blk = firstBlock(vm)!;
            const r = await vm.hypervisor!.populatePhysmap!(BigInt(blk.first) * PAGE, BigInt(blk.npages) * PAGE);
            ctx.note(`${vm.name}: the guest repopulates balloon block 0 (XENMEM_populate_physmap): ${rc(r)}`);
          }
          for (const [g, gfns] of used) {
            if (!g.alive) continue;
            g.driver!.map(0, gfns);
            const { visible, unmapped } = unmappedVisible(g);
            ctx.note(`${g.name}: entries written again: ${g.pins.mappingsLive} device mappings, ${visible} device addresses visible, ${unmapped} unmapped`);
          }
        },
      },
    ];
  },
});

async function balloonOut(ctx: ScenarioContext, vm: ScenarioVm, vgpus: readonly ScenarioVgpu[]): Promise<void> {
  const blk = firstBlock(vm)!;
  const tracker = (vm.vm as XenPlatformVm).tracker;
  const dropped: string[] = [];
  const sub = tracker.on("protectionDropped", (e) => dropped.push(`${vm.name}: write protection of ${e.frames.length} frames ended with their P2M entries; told: ${e.vgpus.join(", ")}`));
  const before = vgpus.map((g) => ({ refs: g.pins.refsInRange(blk.first, blk.npages), maps: g.pins.mappingsLive, told: g.pins.invalidations }));
  const r = await vm.hypervisor!.decreaseReservation!(BigInt(blk.first) * PAGE, BigInt(blk.npages) * PAGE);
  sub.dispose();
  ctx.note(`${vm.name}: the guest gives balloon block 0 back (XENMEM_decrease_reservation), no dmaUnmap: ${rc(r)}`);
  for (const line of dropped) ctx.note(line);
  vgpus.forEach((g, i) => {
    const b = before[i]!;
    const { visible, unmapped } = unmappedVisible(g);
    ctx.note(
      `${g.name}: pin references in the block ${b.refs} -> ${g.pins.refsInRange(blk.first, blk.npages)}, device mappings ${b.maps} -> ${g.pins.mappingsLive}, invalidations told ${g.pins.invalidations - b.told}; ${visible} device addresses visible, ${unmapped} unmapped`,
    );
    const left = tracker.protectedIn(g.name, blk.first, blk.npages);
    ctx.check(left === 0, `${g.name} keeps no write protection in memory the guest gave back (${left} frames)`);
  });
}
