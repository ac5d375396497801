import { vendorConformance } from "@vgpu-iommu/conformance";
import { MOCK_LARGE } from "@vgpu-iommu/plugin-mock-gpu";
import { mockGpuTarget } from "../support/conformance-targets.js";

vendorConformance("mock GPU on KVM (dma-iommu, lazy flush)", mockGpuTarget());
vendorConformance("mock GPU on KVM (awkward geometry, 4-byte writes, 2016 intel-iommu, strict)", mockGpuTarget({ awkward: true, tableEntries: 1021 }, { dmaMode: "intel-2016", strict: true }));
vendorConformance("mock GPU on KVM (mock-large, direct mode)", mockGpuTarget({}, { dmaMode: "direct" }, MOCK_LARGE));
vendorConformance("mock GPU on KVM (staleShadows: GVT's window, detected)", mockGpuTarget({ staleShadows: true }), {
  deviations: {
    "no-stale-address": {
      reason: "staleShadows keeps dead addresses in shadow entries after dmaUnmap, as GVT does (vendors.md 1.7)",
      violation: /^conf-vgpu-\d+: after dmaUnmap its tables still expose 0xffff[c-f]000, which is no longer mapped for it$/,
    },
  },
});
