/**
 * The GVT-g vendor as a plugin: it provides IVgpuVendor, one GvtVendor (one
 * physical GPU) per container. Settings from the stack file, when the stack
 * provides them (IPluginSettings, keyed by this plugin's id): the
 * GvtGpuOptions fields (apertureBytes, fences, maxVgpus, huge2M, ips64K,
 * upstreamQuirks, ...).
 */
import { instanceCachingFactory } from "tsyringe";
import { IVgpuVendor, pluginSettings, type PluginManifest } from "@vgpu-iommu/core";
import { IScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { GvtVendor, type GvtGpuOptions } from "./gvt-vendor.js";
import { gvtScenarioProvider } from "./scenario-support.js";

export const GVT_PLUGIN_ID = "@vgpu-iommu/plugin-gvt";

const KEYS = ["name", "apertureBytes", "fences", "hostApertureBytes", "hostHiddenBytes", "hostFences", "maxVgpus", "huge2M", "ips64K", "upstreamQuirks"] as const;

/** A manifest whose vendor uses `options` (stack settings, when present, take precedence). */
export function gvtPlugin(options: GvtGpuOptions = {}): PluginManifest {
  return {
    id: GVT_PLUGIN_ID,
    kind: "vendor",
    provides: [IVgpuVendor, IScenarioProvider],
    requires: [],
    capabilities: { onePerVm: true, migration: false, ownRequesterId: false, types: ["GVTg_V5_8", "GVTg_V5_4", "GVTg_V5_2", "GVTg_V5_1"], maxVgpus: options.maxVgpus ?? 8 },
    register(c) {
      c.register(IVgpuVendor, { useFactory: instanceCachingFactory((r) => new GvtVendor({ ...options, ...pluginSettings<GvtGpuOptions>(r, GVT_PLUGIN_ID, KEYS) })) });
      c.register(IScenarioProvider, { useValue: gvtScenarioProvider });
    },
  };
}

export const plugin: PluginManifest = gvtPlugin();
