/**
 * The KVM adapter as a plugin: it provides the hypervisor adapter and the
 * platform on the stack's host. Settings (from the stack file): dmaMode,
 * strict, generation, dmaMaskBits, maxSegmentSize, parentName.
 */
import { instanceCachingFactory } from "tsyringe";
import { IHost, IHypervisorAdapter, IPluginSettings, IVgpuPlatform, pluginSettings, type PluginManifest } from "@vgpu-iommu/core";
import { IScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { createKvmStackOn, type KvmStackOptions } from "./kvm-stack.js";
import { kvmScenarioProvider } from "./scenario-support.js";

const ID = "@vgpu-iommu/adapter-kvm";

const KEYS = ["dmaMode", "strict", "generation", "dmaMaskBits", "maxSegmentSize", "parentName"] as const;

/** The JSON Schema the stack file's settings for this plugin are checked against. */
const SETTINGS_SCHEMA = {
  type: "object",
  additionalProperties: false,
  properties: {
    dmaMode: { enum: ["dma-iommu", "intel-2016", "direct"], description: "the parent GPU's DMA API: dma-iommu, intel-2016 or direct" },
    strict: { type: "boolean", description: "strict IOTLB invalidation instead of the flush queue (true or false)" },
    generation: { enum: ["2016", "current"], description: "KVM behaviour: 2016 or current" },
    dmaMaskBits: { type: "integer", minimum: 32, maximum: 64, description: "DMA mask bits of the parent GPU, 32..64" },
    maxSegmentSize: { type: "integer", minimum: 4096, maximum: 4294967295, description: "the parent's maximum DMA segment in bytes, 4096..4294967295" },
    parentName: { type: "string", pattern: "^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]$", description: 'a PCI address such as "0000:00:02.0"' },
  },
} as const;

export const plugin: PluginManifest = {
  id: ID,
  kind: "hypervisor-adapter",
  provides: [IVgpuPlatform, IHypervisorAdapter, IScenarioProvider],
  requires: [IHost, IPluginSettings],
  capabilities: { addressModel: "host-dma-api", mergesSegments: "dma-iommu mode", isolationPerVgpu: false, supportsWriteTrack: true, settingsSchema: SETTINGS_SCHEMA },
  register(c) {
    c.register(IVgpuPlatform, {
      useFactory: instanceCachingFactory((r) => createKvmStackOn(r.resolve(IHost), pluginSettings<KvmStackOptions>(r, ID, KEYS), r).platform),
    });
    c.register(IHypervisorAdapter, { useFactory: instanceCachingFactory((r) => r.resolve(IVgpuPlatform).adapter) });
    c.register(IScenarioProvider, { useValue: kvmScenarioProvider });
  },
};
