/**
 * The KVM adapter as a plugin: it provides the hypervisor adapter and the
 * platform on the stack's host. Settings (from the stack file): dmaMode,
 * strict, generation, dmaMaskBits, maxSegmentSize, parentName.
 */
import { instanceCachingFactory } from "tsyringe";
import { IHost, IHypervisorAdapter, IPluginSettings, IVgpuPlatform, type PluginManifest } from "@vgpu-iommu/core";
import { createKvmStackOn, type KvmStackOptions } from "./kvm-stack.js";

const ID = "@vgpu-iommu/adapter-kvm";

const KEYS = ["dmaMode", "strict", "generation", "dmaMaskBits", "maxSegmentSize", "parentName"] as const;

/** The stack file's settings for this plugin; their values were checked against the stack schema. */
const options = (settings: Readonly<Record<string, unknown>> = {}): KvmStackOptions =>
  Object.fromEntries(KEYS.filter((k) => settings[k] !== undefined).map((k) => [k, settings[k]]));

export const plugin: PluginManifest = {
  id: ID,
  kind: "hypervisor-adapter",
  provides: [IVgpuPlatform, IHypervisorAdapter],
  requires: [IHost, IPluginSettings],
  capabilities: { addressModel: "host-dma-api", mergesSegments: "dma-iommu mode", isolationPerVgpu: false, supportsWriteTrack: true },
  register(c) {
    c.register(IVgpuPlatform, {
      useFactory: instanceCachingFactory((r) => createKvmStackOn(r.resolve(IHost), options(r.resolve(IPluginSettings)[ID]), r).platform),
    });
    c.register(IHypervisorAdapter, { useFactory: instanceCachingFactory((r) => r.resolve(IVgpuPlatform).adapter) });
  },
};
