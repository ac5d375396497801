/**
 * What `vgpu-iommu list` shows: every package of the @vgpu-iommu scope the
 * command can resolve that exports a plugin manifest, what each provides,
 * the vendors' types and guest operations, the adapters' hypervisor
 * operations, and every scenario (built-in and contributed) with the plugins
 * that can run it. Plugins are composed on a small probe host to ask them.
 */
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { container as rootContainer } from "tsyringe";
import { createHost } from "../host/host.js";
import { IHypervisorAdapter } from "../hypervisor/hypervisor-adapter.js";
import { composeStack, loadPlugin } from "../plugins/plugin-host.js";
import { tokenName, type PluginManifest } from "../plugins/plugin-manifest.js";
import { IHost, IPluginSettings } from "../plugins/stack-tokens.js";
import { IVgpuPlatform } from "../vendor/vgpu-platform.js";
import { IVgpuVendor, type VendorCapabilities } from "../vendor/vgpu-vendor.js";
import { IScenarioProvider, type ScenarioDefinition, type ScenarioProvider } from "./scenario-api.js";
import { BUILTIN_SCENARIOS } from "./scenarios/index.js";

const SCOPE = "@vgpu-iommu";

export interface FoundPlugin {
  readonly package: string;
  readonly manifest: PluginManifest;
  readonly provides: readonly string[];
  readonly types: readonly string[];
  readonly vendorCapabilities: VendorCapabilities | undefined;
  readonly guestOps: readonly string[];
  readonly hypervisorOps: readonly string[];
  readonly scenarios: readonly string[];
  readonly problem: string | undefined;
}

export interface Catalog {
  readonly plugins: readonly FoundPlugin[];
  readonly scenarios: readonly { readonly definition: ScenarioDefinition; readonly from: string; readonly runsOn: readonly string[] }[];
}

/** Package names of the scope visible from this module, sorted. */
export function scopePackages(): string[] {
  const require = createRequire(import.meta.url);
  const names = new Set<string>();
  for (const dir of require.resolve.paths(`${SCOPE}/x`) ?? []) {
    const scoped = join(dir, SCOPE);
    if (!existsSync(scoped)) continue;
    for (const entry of readdirSync(scoped)) if (!entry.startsWith(".")) names.add(`${SCOPE}/${entry}`);
  }
  return [...names].sort();
}

export async function discoverPlugins(packages: readonly string[] = scopePackages()): Promise<Catalog> {
  const manifests: { package: string; manifest: PluginManifest }[] = [];
  for (const pkg of packages) {
    try {
      manifests.push({ package: pkg, manifest: await loadPlugin(pkg) });
    } catch {
      // Not a plugin (the core, the test suites): not listed.
    }
  }
  const scope = rootContainer.createChildContainer();
  const host = createHost({ ramBytes: 64n << 20n, seed: 1 }, scope);
  const base = scope.createChildContainer();
  base.register(IHost, { useValue: host });
  base.register(IPluginSettings, { useValue: {} });
  const adapters = manifests.filter((m) => m.manifest.provides.includes(IVgpuPlatform));
  let adapterContainer: ReturnType<typeof composeStack> | undefined;
  const found: FoundPlugin[] = [];
  const scenarios: { definition: ScenarioDefinition; from: string }[] = BUILTIN_SCENARIOS.map((d) => ({ definition: d, from: "built-in" }));
  for (const { package: pkg, manifest } of manifests) {
    let provider: ScenarioProvider | undefined;
    let types: string[] = [];
    let caps: VendorCapabilities | undefined;
    let problem: string | undefined;
    try {
      const isAdapter = manifest.provides.includes(IVgpuPlatform);
      let c;
      if (isAdapter) {
        c = composeStack([manifest], base, [IHost, IPluginSettings]);
        adapterContainer ??= c;
      } else {
        const parent = adapterContainer ?? (adapters[0] === undefined ? base : (adapterContainer = composeStack([adapters[0].manifest], base, [IHost, IPluginSettings])));
        const provided = parent === base ? [IHost, IPluginSettings] : [IHost, IPluginSettings, IVgpuPlatform, IHypervisorAdapter];
        c = composeStack([manifest], parent, provided);
      }
      if (manifest.provides.includes(IVgpuVendor)) {
        const vendor = c.resolve(IVgpuVendor);
        types = vendor.listTypes().map((t) => t.name);
        caps = vendor.capabilities;
      }
      if (manifest.provides.includes(IScenarioProvider)) provider = c.resolve(IScenarioProvider);
    } catch (e) {
      problem = e instanceof Error ? e.message : String(e);
    }
    for (const s of provider?.scenarios ?? []) scenarios.push({ definition: s, from: manifest.id });
    found.push({
      package: pkg,
      manifest,
      provides: manifest.provides.map(tokenName),
      types,
      vendorCapabilities: caps,
      guestOps: [...(provider?.guestOps ?? [])],
      hypervisorOps: [...(provider?.hypervisorOps ?? [])],
      scenarios: (provider?.scenarios ?? []).map((s) => s.name),
      problem,
    });
  }
  return {
    plugins: found,
    scenarios: scenarios.map((s) => ({ ...s, runsOn: runsOn(s.definition, found) })),
  };
}

/** The vendors (for a guest or vendor requirement) and adapters (for a hypervisor requirement) a scenario can run on. */
function runsOn(d: ScenarioDefinition, plugins: readonly FoundPlugin[]): string[] {
  const req = d.requires ?? {};
  const vendors = plugins.filter((p) => p.vendorCapabilities !== undefined);
  const adapters = plugins.filter((p) => p.manifest.provides.includes(IVgpuPlatform));
  const okVendors = vendors.filter((v) => (req.guestOps ?? []).every((op) => v.guestOps.includes(op)) && (req.vendorCapability === undefined || v.vendorCapabilities![req.vendorCapability]));
  const okAdapters = adapters.filter((a) => (req.hypervisorOps ?? []).every((op) => a.hypervisorOps.includes(op)));
  return [...okAdapters.map((a) => a.package), ...okVendors.map((v) => v.package)];
}
