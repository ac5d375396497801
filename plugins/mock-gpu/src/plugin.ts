/**
 * The mock GPU as a plugin: a vendor manifest that provides IVgpuVendor with
 * one MockGpuVendor per container it is resolved in, and IScenarioProvider
 * with its guest driver for the command's scenarios.
 */
import { instancePerContainerCachingFactory, type DependencyContainer } from "tsyringe";
import { IVgpuVendor, type PluginManifest } from "@vgpu-iommu/core";
import { IScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { MockGpuVendor, type MockGpuOptions } from "./mock-gpu-vendor.js";
import { mockScenarioProvider } from "./scenario-support.js";

export const MOCK_GPU_PLUGIN_ID = "@vgpu-iommu/plugin-mock-gpu";

/** A manifest whose vendor is built with `options`. */
export function mockGpuPlugin(options: MockGpuOptions = {}): PluginManifest {
  return Object.freeze({
    id: MOCK_GPU_PLUGIN_ID,
    kind: "vendor" as const,
    provides: [IVgpuVendor, IScenarioProvider],
    requires: [],
    capabilities: Object.freeze({ onePerVm: false, migration: false, ownRequesterId: false, types: ["mock-small", "mock-large"], faultInjection: true }),
    register(container: DependencyContainer): void {
      container.register(IVgpuVendor, { useFactory: instancePerContainerCachingFactory(() => new MockGpuVendor(options)) });
      container.register(IScenarioProvider, { useValue: mockScenarioProvider });
    },
  });
}

export const plugin: PluginManifest = mockGpuPlugin();
