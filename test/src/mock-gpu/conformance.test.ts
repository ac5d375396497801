import { vendorConformance } from "@vgpu-iommu/conformance";
import { MOCK_LARGE, MOCK_SMALL } from "@vgpu-iommu/plugin-mock-gpu";
import { mockGpuTarget } from "../support/conformance-targets.js";
import { XEN_PLATFORMS } from "../support/platforms.js";

/**
 * The stale addresses staleShadows leaves, in each Xen address model (1 GiB host): the MFN itself
 * (identity), 248 GiB + MFN (XenServer BFN), DFNs allocated top-down below 2^39 (2024).
 */
const STALE_ADDRESS: Readonly<Record<string, string>> = {
  "pv-identity": "0x[0-9a-f]{1,5}000",
  "pv-xenserver": "0x3e[0-3][0-9a-f]{4}000",
  "pvh-2024": "0x7fffff[0-9a-f]000",
};

const staleShadows = (platform: string) =>
  ({
    deviations: {
      "no-stale-address": {
        reason: "staleShadows keeps dead addresses in shadow entries after dmaUnmap, as GVT does (vendors.md 1.7)",
        violation: new RegExp(`^conf-vgpu-\\d+: after dmaUnmap its tables still expose ${STALE_ADDRESS[platform]}, which is no longer mapped for it$`),
      },
    },
  }) as const;

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

// The same plugin, unchanged, on Xen in each stack configuration.
for (const xen of XEN_PLATFORMS) {
  vendorConformance(`mock GPU on ${xen.label}`, mockGpuTarget({}, {}, MOCK_SMALL, xen));
  vendorConformance(`mock GPU on ${xen.label} (awkward geometry, 4-byte writes)`, mockGpuTarget({ awkward: true, tableEntries: 1021 }, {}, MOCK_SMALL, xen));
  vendorConformance(`mock GPU on ${xen.label} (mock-large)`, mockGpuTarget({}, {}, MOCK_LARGE, xen));
  vendorConformance(`mock GPU on ${xen.label} (staleShadows: GVT's window, detected)`, mockGpuTarget({ staleShadows: true }, {}, MOCK_SMALL, xen), staleShadows(xen.id));
}
