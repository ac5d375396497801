/**
 * The plugin host: loads plugins by package name (the way linters load theirs,
 * never by static import), checks the graph, then registers them, providers
 * first, into a child container of the caller's scope.
 */
import type { DependencyContainer } from "tsyringe";
import type { Token } from "../di/token.js";
import { checkPluginGraph, PluginGraphError } from "./plugin-graph.js";
import type { PluginManifest } from "./plugin-manifest.js";

const isManifest = (v: unknown): v is PluginManifest =>
  typeof v === "object" && v !== null && typeof (v as PluginManifest).id === "string" && typeof (v as PluginManifest).register === "function" && Array.isArray((v as PluginManifest).provides) && Array.isArray((v as PluginManifest).requires);

/** Imports a package and returns its `plugin` export. */
export async function loadPlugin(packageName: string): Promise<PluginManifest> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(packageName)) as Record<string, unknown>;
  } catch (e) {
    throw new PluginGraphError("missing-provider", [packageName], `cannot load plugin package ${packageName}: ${e instanceof Error ? e.message : String(e)}: install it or fix its name in the stack`);
  }
  const manifest = mod["plugin"];
  if (!isManifest(manifest)) throw new PluginGraphError("missing-provider", [packageName], `${packageName} exports no plugin manifest: a plugin package exports \`plugin\` = { id, kind, provides, requires, register }`);
  return manifest;
}

/** Checks the graph, then registers every plugin into a new child container of `scope`. */
export function composeStack(plugins: readonly PluginManifest[], scope: DependencyContainer, hostProvides: readonly Token<unknown>[] = []): DependencyContainer {
  const order = checkPluginGraph(plugins, hostProvides);
  const child = scope.createChildContainer();
  for (const p of order) p.register(child);
  return child;
}
