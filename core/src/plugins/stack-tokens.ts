/**
 * Tokens every stack provides to its plugins: the simulated host, and each
 * plugin's settings from the stack file (keyed by plugin id).
 */
import type { DependencyContainer } from "tsyringe";
import { createToken } from "../di/token.js";
import type { Host } from "../host/host.js";

export const IHost = createToken<Host>("IHost");

export type PluginSettings = Readonly<Record<string, Readonly<Record<string, unknown>>>>;
export const IPluginSettings = createToken<PluginSettings>("IPluginSettings");

/**
 * The settings the stack gave plugin `id`, limited to `keys` (their values were
 * checked against the plugin's settings schema); {} where the stack gives none.
 */
export function pluginSettings<T extends object>(r: DependencyContainer, id: string, keys: readonly (keyof T & string)[]): Partial<T> {
  if (!r.isRegistered(IPluginSettings, true)) return {};
  const s = r.resolve(IPluginSettings)[id] ?? {};
  return Object.fromEntries(keys.filter((k) => s[k] !== undefined).map((k) => [k, s[k]])) as Partial<T>;
}
