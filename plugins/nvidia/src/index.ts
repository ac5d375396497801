import "reflect-metadata";
import { IVgpuVendor, type PluginManifest } from "@vgpu-iommu/core";
import { IScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { NvidiaVendor, type NvidiaVendorOptions } from "./nvidia-vendor.js";
import { nvidiaScenarioProvider } from "./scenario-support.js";

export * from "./events.js";
export * from "./gpu-profile.js";
export * from "./partition.js";
export * from "./bitmap-allocator.js";
export * from "./gpu-resources.js";
export * from "./gpfn-list.js";
export * from "./mapping-cache.js";
export * from "./mdev-pinning.js";
export * from "./manager.js";
export * from "./nvidia-vgpu.js";
export * from "./nvidia-vendor.js";
export * from "./bench.js";
export * from "./scenario-support.js";

/** A manifest providing one NVIDIA-like vendor (a fresh GPU per composed stack). */
export function nvidiaPlugin(options: NvidiaVendorOptions = {}): PluginManifest {
  const mode = options.mode ?? "mdev";
  return {
    id: "@vgpu-iommu/plugin-nvidia",
    kind: "vendor",
    provides: [IVgpuVendor, IScenarioProvider],
    requires: [],
    capabilities: { mode, onePerVm: false, migration: true, ownRequesterId: mode === "vf", pinModes: mode === "vf" ? [] : ["GET_HOST_PFN", "GET_IOVA"] },
    register(container) {
      container.register(IVgpuVendor, { useValue: new NvidiaVendor(options) });
      container.register(IScenarioProvider, { useValue: nvidiaScenarioProvider });
    },
  };
}

/** The default plugin: mdev vGPUs (shared requester ID) on the default 48 GiB GPU. */
export const plugin: PluginManifest = nvidiaPlugin();

/** The SR-IOV variant: VF vGPUs with their own requester ID, no vendor pins. */
export const vfPlugin: PluginManifest = nvidiaPlugin({ mode: "vf" });
