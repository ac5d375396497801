/**
 * A plugin is a manifest: what it provides, what it requires, and a function
 * that registers its providers into a container. Packages export it as
 * `plugin`. Nothing asks which plugin a service came from: consumers resolve
 * tokens, and a plugin's differences are its declared capabilities.
 */
import type { DependencyContainer } from "tsyringe";
import type { Token } from "../di/token.js";

export type PluginKind = "hypervisor-adapter" | "vendor" | "scenarios" | "tooling";

export interface PluginManifest {
  /** The package name, so error messages say what to add or remove. */
  readonly id: string;
  readonly kind: PluginKind;
  readonly provides: readonly Token<unknown>[];
  readonly requires: readonly Token<unknown>[];
  /** Declared capabilities, for listing and for consumers that adapt to them. */
  readonly capabilities?: Readonly<Record<string, unknown>>;
  register(container: DependencyContainer): void;
}

export const tokenName = (t: Token<unknown>): string => t.description ?? String(t);
