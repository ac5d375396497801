/**
 * The composition root of a run: loads the stack's plugins by package name,
 * checks what only the plugins can tell (their kind, their settings against
 * the schema they declare, vGPU types, one-vGPU-per-VM vendors, the scenario
 * and its parameters), builds the host, and composes the plugins into child
 * containers of it.
 *
 * Containers: one per run, holding the host and every plugin's settings; the
 * hypervisor adapter's below it; one per vendor (and per scenario plugin)
 * below the adapter's, so two vendors can each provide IVgpuVendor and
 * IScenarioProvider without clashing, and each vendor resolves the platform.
 *
 * Nothing here names an adapter or a plugin: they are strings from the stack.
 */
import { container as rootContainer, type DependencyContainer } from "tsyringe";
import { createHost, type Host } from "../host/host.js";
import { IHypervisorAdapter } from "../hypervisor/hypervisor-adapter.js";
import { PluginGraphError } from "../plugins/plugin-graph.js";
import { composeStack, loadPlugin } from "../plugins/plugin-host.js";
import { tokenName, type PluginManifest } from "../plugins/plugin-manifest.js";
import { IHost, IPluginSettings } from "../plugins/stack-tokens.js";
import { IVgpuPlatform, type VgpuPlatform } from "../vendor/vgpu-platform.js";
import { IVgpuVendor, type VgpuVendor } from "../vendor/vgpu-vendor.js";
import { IScenarioProvider, type ScenarioDefinition, type ScenarioProvider } from "./scenario-api.js";
import { assertSchema, checkSchema } from "./schema-check.js";
import { StackError, type StackIssue } from "./stack-error.js";
import { withPositions, type Stack } from "./stack-loader.js";
import { BUILTIN_SCENARIOS } from "./scenarios/index.js";

export interface LoadedPlugins {
  readonly hypervisor: PluginManifest;
  readonly vendors: readonly { readonly package: string; readonly manifest: PluginManifest }[];
  readonly extra: readonly { readonly package: string; readonly manifest: PluginManifest }[];
}

export interface ComposedVendor {
  readonly id: string;
  readonly vendor: VgpuVendor;
  readonly provider: ScenarioProvider | undefined;
}

export interface Composition {
  readonly host: Host;
  readonly platform: VgpuPlatform;
  readonly hypervisorId: string;
  readonly hypervisorProvider: ScenarioProvider | undefined;
  readonly vendors: readonly ComposedVendor[];
  /** Built-in scenarios, then each plugin's, by name. */
  readonly scenarios: ReadonlyMap<string, { readonly definition: ScenarioDefinition; readonly from: string }>;
}

const settingsSchemaOf = (m: PluginManifest): Record<string, unknown> | undefined => {
  const s = m.capabilities?.["settingsSchema"];
  return typeof s === "object" && s !== null ? (s as Record<string, unknown>) : undefined;
};

/** A manifest exported under another name than `plugin` (a package offering variants, such as a VF mode). */
async function loadExport(pkg: string, name: string): Promise<PluginManifest> {
  const mod = (await import(pkg)) as Record<string, unknown>;
  const m = mod[name] as PluginManifest | undefined;
  if (typeof m !== "object" || m === null || typeof m.register !== "function" || !Array.isArray(m.provides)) throw new Error(`${pkg} exports no plugin manifest named ${name}`);
  return m;
}

/** Loads every plugin the stack names and checks their kinds and settings; throws StackError. */
export async function loadStackPlugins(stack: Stack): Promise<LoadedPlugins> {
  const issues: StackIssue[] = [];
  const load = async (pkg: string, path: string, kind: PluginManifest["kind"], token: symbol, exportName = "plugin"): Promise<PluginManifest | undefined> => {
    let m: PluginManifest;
    try {
      m = exportName === "plugin" ? await loadPlugin(pkg) : await loadExport(pkg, exportName);
    } catch (e) {
      issues.push({ path, value: pkg, allowed: `an installed plugin package (${e instanceof Error ? e.message : String(e)})` });
      return undefined;
    }
    if (m.kind !== kind && !(kind === "scenarios" && m.provides.includes(IScenarioProvider))) {
      issues.push({ path, value: pkg, allowed: `a ${kind} plugin: ${pkg} is a ${m.kind} plugin` });
      return undefined;
    }
    if (!m.provides.includes(token)) {
      issues.push({ path, value: pkg, allowed: `a plugin that provides ${tokenName(token)}: ${pkg} provides ${m.provides.map(tokenName).join(", ") || "nothing"}` });
      return undefined;
    }
    return m;
  };
  const hypervisor = await load(stack.hypervisor.package, "/hypervisor/package", "hypervisor-adapter", IVgpuPlatform);
  const vendors: { package: string; manifest: PluginManifest }[] = [];
  for (const [i, v] of stack.vendors.entries()) {
    const m = await load(v.package, `/vendors/${i}/package`, "vendor", IVgpuVendor, v.export);
    if (m !== undefined) vendors.push({ package: v.package, manifest: m });
  }
  const extra: { package: string; manifest: PluginManifest }[] = [];
  for (const [i, p] of stack.plugins.entries()) {
    const m = await load(p, `/plugins/${i}`, "scenarios", IScenarioProvider);
    if (m !== undefined) extra.push({ package: p, manifest: m });
  }
  const checkSettings = (m: PluginManifest, settings: Readonly<Record<string, unknown>>, path: string): void => {
    const schema = settingsSchemaOf(m);
    if (schema === undefined) return;
    try {
      assertSchema(schema);
    } catch (e) {
      issues.push({ path, value: m.id, allowed: `a plugin whose settingsSchema compiles (${e instanceof Error ? e.message : String(e)})` });
      return;
    }
    issues.push(...checkSchema(schema, settings, path));
  };
  if (hypervisor !== undefined) checkSettings(hypervisor, stack.hypervisor.settings, "/hypervisor/settings");
  stack.vendors.forEach((v, i) => {
    const m = vendors.find((x) => x.package === v.package)?.manifest;
    if (m !== undefined) checkSettings(m, v.settings, `/vendors/${i}/settings`);
  });
  if (issues.length > 0 || hypervisor === undefined) throw new StackError(stack.source, withPositions(issues, stack.locate));
  return { hypervisor, vendors, extra };
}

/** A host as the stack describes it: RAM, seed, type1 parameters, and fragmentation. */
export function createStackHost(stack: Stack, scope: DependencyContainer = rootContainer): Host {
  const host = createHost({ ramBytes: stack.hostRamBytes, seed: stack.seed }, scope);
  if (stack.iommu.dmaEntryLimit !== undefined) host.type1Params.dmaEntryLimit = stack.iommu.dmaEntryLimit;
  if (stack.iommu.disableHugepages !== undefined) host.type1Params.disableHugepages = stack.iommu.disableHugepages;
  if (stack.iommu.allowUnsafeInterrupts !== undefined) host.type1Params.allowUnsafeInterrupts = stack.iommu.allowUnsafeInterrupts;
  fragment(host, stack.fragmentation);
  return host;
}

/**
 * Breaks up `fraction` of the host's free 2 MiB blocks, as other tenants
 * would have: each is taken whole and its frames freed one by one, in a
 * seeded order, so they return as scattered 4 KiB frames and no THP fault can
 * have them as a block.
 */
function fragment(host: Host, fraction: number): void {
  const phys = host.phys;
  const blocks = Math.round(phys.freeBlocks * fraction);
  if (blocks === 0) return;
  const frames = new Uint32Array(blocks * 512);
  for (let b = 0; b < blocks; b++) {
    const base = phys.allocBlock();
    for (let k = 0; k < 512; k++) frames[b * 512 + k] = base + k;
  }
  phys.rng.shuffle(frames);
  for (let i = 0; i < frames.length; i++) phys.release(frames[i]!);
}

/** Composes the loaded plugins on `host`; throws StackError when the plugin graph is bad. */
export function composeOn(stack: Stack, plugins: LoadedPlugins, host: Host, scope: DependencyContainer = rootContainer): Composition {
  const issues: StackIssue[] = [];
  const settings: Record<string, Readonly<Record<string, unknown>>> = { [plugins.hypervisor.id]: stack.hypervisor.settings };
  for (const v of plugins.vendors) settings[v.manifest.id] = stack.vendors.find((x) => x.package === v.package)?.settings ?? {};
  const base = scope.createChildContainer();
  base.register(IHost, { useValue: host });
  base.register(IPluginSettings, { useValue: settings });
  const graphIssue = (path: string, pkg: string, e: unknown): void => {
    if (!(e instanceof PluginGraphError)) throw e;
    issues.push({ path, value: pkg, allowed: `a plugin whose requirements the stack meets (${e.message})` });
  };
  let hvContainer: DependencyContainer;
  try {
    hvContainer = composeStack([plugins.hypervisor], base, [IHost, IPluginSettings]);
  } catch (e) {
    graphIssue("/hypervisor/package", stack.hypervisor.package, e);
    throw new StackError(stack.source, withPositions(issues, stack.locate));
  }
  let platform: VgpuPlatform;
  try {
    platform = hvContainer.resolve(IVgpuPlatform);
  } catch (e) {
    issues.push({ path: "/hypervisor/settings", value: stack.hypervisor.settings, allowed: `settings ${stack.hypervisor.package} can build a platform with on this host (${e instanceof Error ? e.message : String(e)})` });
    throw new StackError(stack.source, withPositions(issues, stack.locate));
  }
  const provided = [IHost, IPluginSettings, ...plugins.hypervisor.provides.filter((t) => t !== IScenarioProvider)];
  if (!provided.includes(IHypervisorAdapter)) provided.push(IHypervisorAdapter);
  const providerIn = (c: DependencyContainer, m: PluginManifest): ScenarioProvider | undefined => (m.provides.includes(IScenarioProvider) ? c.resolve(IScenarioProvider) : undefined);
  const hypervisorProvider = providerIn(hvContainer, plugins.hypervisor);
  const vendors: ComposedVendor[] = [];
  plugins.vendors.forEach((v) => {
    const i = stack.vendors.findIndex((x) => x.package === v.package);
    try {
      const c = composeStack([v.manifest], hvContainer, provided);
      vendors.push({ id: v.manifest.id, vendor: c.resolve(IVgpuVendor), provider: providerIn(c, v.manifest) });
    } catch (e) {
      if (e instanceof PluginGraphError) graphIssue(`/vendors/${i}/package`, v.package, e);
      else issues.push({ path: `/vendors/${i}/settings`, value: stack.vendors[i]?.settings, allowed: `settings ${v.package} can build its vendor with (${e instanceof Error ? e.message : String(e)})` });
    }
  });
  const scenarios = new Map<string, { definition: ScenarioDefinition; from: string }>();
  for (const s of BUILTIN_SCENARIOS) scenarios.set(s.name, { definition: s, from: "built-in" });
  const contribute = (from: string, provider: ScenarioProvider | undefined, path: string): void => {
    for (const s of provider?.scenarios ?? []) {
      const other = scenarios.get(s.name);
      if (other !== undefined) issues.push({ path, value: from, allowed: `a plugin whose scenario names are its own: ${s.name} is already a ${other.from} scenario` });
      else scenarios.set(s.name, { definition: s, from });
    }
  };
  contribute(plugins.hypervisor.id, hypervisorProvider, "/hypervisor/package");
  for (const v of vendors) contribute(v.id, v.provider, `/vendors/${stack.vendors.findIndex((x) => x.package === v.id)}/package`);
  plugins.extra.forEach((p, i) => {
    try {
      const c = composeStack([p.manifest], hvContainer, provided);
      contribute(p.manifest.id, c.resolve(IScenarioProvider), `/plugins/${i}`);
    } catch (e) {
      graphIssue(`/plugins/${i}`, p.package, e);
    }
  });
  if (issues.length > 0) throw new StackError(stack.source, withPositions(issues, stack.locate));
  return { host, platform, hypervisorId: plugins.hypervisor.id, hypervisorProvider, vendors, scenarios };
}

/** The scenario and its parameters (defaults filled in), and the vGPU checks only live vendors can answer; throws StackError. */
export function resolveScenario(stack: Stack, composition: Composition): { definition: ScenarioDefinition; params: Record<string, unknown> } {
  const issues: StackIssue[] = [];
  stack.vgpus.forEach((g, i) => {
    const v = composition.vendors.find((x) => x.id === g.vendor);
    if (v === undefined) return;
    const types = v.vendor.listTypes().map((t) => t.name);
    if (!types.includes(g.type)) issues.push({ path: `/vgpus/${i}/type`, value: g.type, allowed: `a type of ${g.vendor}: ${types.join(", ")}` });
    if (v.vendor.capabilities.onePerVm) {
      const first = stack.vgpus.findIndex((x) => x.vm === g.vm && x.vendor === g.vendor);
      if (first !== i) issues.push({ path: `/vgpus/${i}/vm`, value: g.vm, allowed: `a VM without a vGPU of ${g.vendor}, which allows one per VM: /vgpus/${first} is already in ${g.vm}` });
    }
  });
  const entry = composition.scenarios.get(stack.scenario.name);
  if (entry === undefined) {
    issues.push({ path: "/scenario/name", value: stack.scenario.name, allowed: `one of ${[...composition.scenarios.keys()].join(", ")}` });
    throw new StackError(stack.source, withPositions(issues, stack.locate));
  }
  const params = structuredClone(stack.scenario.params) as Record<string, unknown>;
  issues.push(...checkSchema(entry.definition.params, params, "/scenario/params", true));
  if (issues.length > 0) throw new StackError(stack.source, withPositions(issues, stack.locate));
  return { definition: entry.definition, params };
}
