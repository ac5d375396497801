/**
 * Tokens every stack provides to its plugins: the simulated host, and each
 * plugin's settings from the stack file (keyed by plugin id).
 */
import { createToken } from "../di/token.js";
import type { Host } from "../host/host.js";

export const IHost = createToken<Host>("IHost");

export type PluginSettings = Readonly<Record<string, Readonly<Record<string, unknown>>>>;
export const IPluginSettings = createToken<PluginSettings>("IPluginSettings");
