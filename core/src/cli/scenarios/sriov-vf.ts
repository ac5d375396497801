/**
 * vendors.md 5.15, SR-IOV (VF) vGPUs: a VF has its own requester ID, so guest
 * RAM is mapped into its IOMMU domain and the vendor pins nothing; its
 * partition is reserved at creation and creation fails with -ENOSPC once the
 * pool is exhausted.
 */
import { isKernelError } from "../../errors/kernel-error.js";
import type { ScenarioDefinition } from "../scenario-api.js";
import { pickFrames } from "./guest-memory.js";
import { int, params } from "./params.js";

interface Params {
  pages: number;
}

export const sriovVf: ScenarioDefinition<Params> = {
  name: "sriov-vf",
  title: "SR-IOV VF vGPU",
  item: 15,
  description: "VF vGPUs: no vendor pins; instances created until the pool is exhausted (-ENOSPC)",
  params: params({ pages: int(256, "pages the guest maps", 1, 1 << 16) }),
  requires: { vendorCapability: "ownRequesterId" },
  phases(p) {
    return [
      {
        name: "guest maps memory",
        run(ctx) {
          for (const g of ctx.vgpus.filter((x) => x.alive && x.vendor.capabilities.ownRequesterId)) {
            if (g.driver === undefined) continue;
            g.driver.map(0, pickFrames(ctx, g.vm, Math.min(p.pages, g.driver.slots)));
            ctx.note(`${g.name}: ${p.pages} pages mapped by the guest: ${g.pins.pinnedTotal} pinned by the vendor`);
            ctx.check(g.pins.pinnedTotal === 0, `${g.name}: a VF vGPU pins nothing`);
          }
        },
      },
      {
        name: "create until the pool is exhausted",
        async run(ctx) {
          for (const v of ctx.vendors.filter((x) => x.capabilities.ownRequesterId)) {
            // Vendors may refuse to mix types on one GPU: create more of the type already in use.
            const type = ctx.vgpus.find((g) => g.vendor.id === v.id)?.type ?? v.vendor.listTypes()[0]!.name;
            let made = 0;
            let i = 0;
            for (;;) {
              const vm = await ctx.addVm({ name: `vf-vm${++i}`, ramBytes: 64n << 20n });
              try {
                await ctx.addVgpu(vm, v, type, `vf${i}`);
                made++;
              } catch (e) {
                ctx.note(`${v.id}: ${type}: ${made} more created, then ${isKernelError(e) ? `${e.code} (${e.reason})` : String(e)}`);
                ctx.check(isKernelError(e) && e.code === "ENOSPC", `${v.id}: creation fails with -ENOSPC once the pool is exhausted`);
                await ctx.shutdownVm(vm);
                break;
              }
              if (i > 256) break;
            }
          }
        },
      },
    ];
  },
};
