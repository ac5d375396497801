/**
 * The Xen adapter as a plugin: it provides the hypervisor adapter and the
 * platform on the stack's host, and its scenario operations (the guest's own
 * balloon) with a scenario that uses them. Settings (from the stack file):
 * config, dmaMaskBits, parentName, swiotlbBytes, era, xenserverSetup.
 */
import { instanceCachingFactory } from "tsyringe";
import { IHost, IHypervisorAdapter, IPluginSettings, IVgpuPlatform, pluginSettings, type PluginManifest } from "@vgpu-iommu/core";
import { IScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { createXenStackOn, type XenStackOptions } from "./xen-stack.js";
import { xenScenarioProvider } from "./scenario-support.js";

const ID = "@vgpu-iommu/adapter-xen";

const KEYS = ["config", "dmaMaskBits", "parentName", "swiotlbBytes", "era", "xenserverSetup"] as const;

/** The JSON Schema the stack file's settings for this plugin are checked against. */
const SETTINGS_SCHEMA = {
  type: "object",
  additionalProperties: false,
  properties: {
    config: { enum: ["pv-identity", "pv-xenserver", "pvh-2024"], description: "Dom0 and PV-IOMMU: pv-identity (XenGT identity MFN), pv-xenserver (XenServer PV-IOMMU) or pvh-2024 (PVH Dom0, 2024 PV-IOMMU)" },
    dmaMaskBits: { type: "integer", minimum: 32, maximum: 64, description: "DMA mask bits of the parent GPU, 32..64" },
    parentName: { type: "string", pattern: "^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]$", description: 'a PCI address such as "0000:00:02.0"' },
    swiotlbBytes: { type: "integer", minimum: 1048576, maximum: 1073741824, description: "Dom0's swiotlb pool in bytes (PV configurations), 1 MiB..1 GiB" },
    era: { enum: ["2016", "current"], description: "Xen and Dom0 kernel behaviour: 2016 or current" },
    xenserverSetup: { type: "boolean", description: "pv-xenserver: build the whole foreign BFN region before the run (true or false)" },
  },
} as const;

export const plugin: PluginManifest = {
  id: ID,
  kind: "hypervisor-adapter",
  provides: [IVgpuPlatform, IHypervisorAdapter, IScenarioProvider],
  requires: [IHost, IPluginSettings],
  capabilities: {
    addressModel: "pv-identity: identity-mfn; pv-xenserver and pvh-2024: pviommu-bfn",
    mergesSegments: false,
    isolationPerVgpu: false,
    supportsWriteTrack: true,
    settingsSchema: SETTINGS_SCHEMA,
  },
  register(c) {
    c.register(IVgpuPlatform, {
      useFactory: instanceCachingFactory((r) => createXenStackOn(r.resolve(IHost), pluginSettings<XenStackOptions>(r, ID, KEYS), r).platform),
    });
    c.register(IHypervisorAdapter, { useFactory: instanceCachingFactory((r) => r.resolve(IVgpuPlatform).adapter) });
    c.register(IScenarioProvider, { useValue: xenScenarioProvider });
  },
};
