/**
 * The conformance kit on the NVIDIA-like plugin, on KVM and, unchanged, on Xen
 * in its three configurations: RM's
 * translate-gfn-to-pfn in both pin modes (vendors.md 2.2), mdev vGPUs sharing
 * the parent's requester ID; and the VF mode, where the isolation check does
 * not apply (own requester ID) and no vendor pin is made.
 */
import type { PlatformVm, Vgpu } from "@vgpu-iommu/core";
import { expect } from "chai";
import { CONFORMANCE_CHECKS, runConformance, vendorConformance } from "@vgpu-iommu/conformance";
import { NvidiaVendor, type AddrType, type NvidiaVgpu } from "@vgpu-iommu/plugin-nvidia";
import { vendorOn } from "../support/conformance-targets.js";
import { PLATFORMS, per } from "../support/platforms.js";

/**
 * One RM call per exercise. In IOVA mode a frame RM already holds is an error
 * (EEXIST, vendors.md 2.5), so RM asks only for frames it does not hold yet.
 */
const rmExercise =
  (mode: AddrType) =>
  (vgpu: Vgpu, _vm: PlatformVm, gfns: readonly number[]): void => {
    const nv = vgpu as NvidiaVgpu;
    const fresh = mode === "GET_IOVA" ? [...new Set(gfns)].filter((g) => nv.cacheSlot(g) === 0) : gfns;
    if (fresh.length > 0) nv.translateGfns(fresh, mode);
  };

for (const p of PLATFORMS) {
  // The shim's notifier unpins but RM keeps the batch's IOVAs until cleanup (vendors.md 2.2): the kit sees them stale.
  vendorConformance(`NVIDIA-like on ${p.label} (mdev, GET_IOVA)`, vendorOn(p, () => new NvidiaVendor(), "NV-2Q", rmExercise("GET_IOVA")), {
    deviations: {
      "no-stale-address": {
        reason: "vendors.md 2.2: the notifier unpins, RM keeps the batch's IOVAs until cleanup",
        violation: /^conf-vgpu-\d+: after dmaUnmap its tables still expose 0x[0-9a-f]+, which is no longer mapped for it$/,
      },
    },
  });
  // The shim's notifier drops ONE host-PFN reference per call (vendors.md 2.2, (I)): a frame RM pinned
  // twice is still pinned when dmaUnmap returns. On KVM type1's retry drains it; Xen calls dmaUnmap once
  // per block, so the frame stays pinned (Dom0 keeps the page) until RM unpins it or the vGPU closes.
  vendorConformance(`NVIDIA-like on ${p.label} (mdev, GET_HOST_PFN)`, vendorOn(p, () => new NvidiaVendor(), "NV-2Q", rmExercise("GET_HOST_PFN")), {
    deviations: {
      "dma-unmap-drops-range": per(p, {
        kvm: {
          reason: "vendors.md 2.2: host-PFN pages lose one reference per notifier call; type1 retries",
          violation: /^conf-vgpu-\d+: dmaUnmap\(0x100000000, 0x200000\) returned with 1 frame\(s\) of the range still pinned$/,
        },
        xen: {
          reason: "vendors.md 2.2: host-PFN pages lose one reference per notifier call; Xen does not retry, so one stays pinned",
          violation: /^conf-vgpu-\d+: (dmaUnmap\(0x100000000, 0x200000\) returned with 1 frame\(s\) of the range still pinned|1 frame\(s\) of the unplugged block still pinned)$/,
        },
      }),
    },
  });

  describe(`vendor conformance: NVIDIA-like on ${p.label} (VF, own requester ID)`, () => {
    it("every check is skipped, not failed: the VF makes no vendor pins and the IOMMU isolates it", async () => {
      const verdicts = await runConformance(vendorOn(p, () => new NvidiaVendor({ mode: "vf" }), "NV-2Q", rmExercise("GET_IOVA")));
      expect(verdicts.map((v) => [v.check, v.ok, v.skipped, v.violations])).to.deep.equal(
        CONFORMANCE_CHECKS.map((c) => [c.id, true, c.id === "isolation" ? "the vGPU has its own requester ID: the IOMMU isolates it" : "the vGPU has its own requester ID and makes no vendor pins (VF)", []]),
      );
    });
  });
}
