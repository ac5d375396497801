/**
 * The conformance kit on the GVT-g-like plugin, on KVM and, unchanged, on Xen
 * in its three configurations. Exercise = the guest's
 * i915-like driver writing GGTT entries of the vGPU's aperture slice (eager,
 * per-write pinning, vendors.md 1.4). GVT allows one vGPU per VM, so the
 * isolation check puts its two vGPUs in two VMs.
 */
import type { PlatformVm, Vgpu } from "@vgpu-iommu/core";
import { vendorConformance } from "@vgpu-iommu/conformance";
import { GvtVendor, type GvtVgpu } from "@vgpu-iommu/plugin-gvt";
import { GuestGfxDriver } from "@vgpu-iommu/plugin-gvt/testing";
import { vendorOn } from "../support/conformance-targets.js";
import { PLATFORMS } from "../support/platforms.js";

function ggttExercise(): (vgpu: Vgpu, vm: PlatformVm, gfns: readonly number[]) => void {
  const next = new WeakMap<Vgpu, number>();
  return (vgpu, vm, gfns) => {
    const g = vgpu as GvtVgpu;
    const driver = new GuestGfxDriver(g, vm, 0x3000, 16);
    const first = next.get(g) ?? 0;
    for (let i = 0; i < gfns.length; i++) driver.ggttWrite(g.ggtt.apStart + first + i, gfns[i]!);
    next.set(g, first + gfns.length);
  };
}

const STALE = /^conf-vgpu-\d+: after dmaUnmap its tables still expose 0x[0-9a-f]+, which is no longer mapped for it$/;

// GVT leaves shadow entries holding the dead DMA addresses until the guest rewrites them or a reset (vendors.md 1.7).
for (const p of PLATFORMS) {
  vendorConformance(`GVT-g-like on ${p.label} (GGTT)`, vendorOn(p, () => new GvtVendor(), "GVTg_V5_8", ggttExercise()), {
    deviations: { "no-stale-address": { reason: "vendors.md 1.7: shadow PTEs go stale after dmaUnmap", violation: STALE } },
  });
}
