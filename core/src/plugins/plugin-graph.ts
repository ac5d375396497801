/**
 * Checks a stack's plugin graph before anything is resolved: every required
 * token has exactly one provider (a plugin or the host itself), and no plugin
 * depends on itself through others. Each failure is a PluginGraphError whose
 * message prints the path and says how to fix it.
 */
import type { Token } from "../di/token.js";
import { tokenName, type PluginManifest } from "./plugin-manifest.js";

export type PluginGraphErrorCode = "missing-provider" | "duplicate-provider" | "cycle";

export class PluginGraphError extends Error {
  constructor(
    readonly code: PluginGraphErrorCode,
    /** Plugin ids and token names along the failing path. */
    readonly path: readonly string[],
    message: string,
  ) {
    super(message);
    this.name = "PluginGraphError";
  }
}

/** Returns the plugins in dependency order (providers first), or throws PluginGraphError. */
export function checkPluginGraph(plugins: readonly PluginManifest[], hostProvides: readonly Token<unknown>[] = []): PluginManifest[] {
  const providerOf = new Map<Token<unknown>, PluginManifest>();
  for (const p of plugins) {
    for (const t of p.provides) {
      const other = providerOf.get(t);
      if (other !== undefined) {
        throw new PluginGraphError(
          "duplicate-provider",
          [other.id, tokenName(t), p.id],
          `${tokenName(t)} is provided by both ${other.id} and ${p.id}: keep one of them in the stack's plugins`,
        );
      }
      if (hostProvides.includes(t)) throw new PluginGraphError("duplicate-provider", ["host", tokenName(t), p.id], `${tokenName(t)} is provided by the host and by ${p.id}: remove ${p.id} from the stack's plugins`);
      providerOf.set(t, p);
    }
  }
  for (const p of plugins) {
    for (const t of p.requires) {
      if (!providerOf.has(t) && !hostProvides.includes(t)) {
        throw new PluginGraphError(
          "missing-provider",
          [p.id, tokenName(t)],
          `${p.id} requires ${tokenName(t)}, which no plugin in the stack provides: add a plugin that provides ${tokenName(t)} to the stack's plugins`,
        );
      }
    }
  }
  const order: PluginManifest[] = [];
  const state = new Map<PluginManifest, "visiting" | "done">();
  const visit = (p: PluginManifest, path: string[]): void => {
    const s = state.get(p);
    if (s === "done") return;
    if (s === "visiting") {
      const from = path.indexOf(p.id);
      const cycle = [...path.slice(from), p.id];
      throw new PluginGraphError("cycle", cycle, `plugin dependency cycle: ${cycle.join(" -> ")}: move the shared service into a plugin of its own, or drop one of the requirements`);
    }
    state.set(p, "visiting");
    for (const t of p.requires) {
      const provider = providerOf.get(t);
      if (provider !== undefined) visit(provider, [...path, p.id, `(${tokenName(t)})`]);
    }
    state.set(p, "done");
    order.push(p);
  };
  for (const p of plugins) visit(p, []);
  return order;
}
