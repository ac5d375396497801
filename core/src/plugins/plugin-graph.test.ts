import { expect } from "chai";
import { container } from "tsyringe";
import { createToken } from "../di/token.js";
import { checkPluginGraph, PluginGraphError } from "./plugin-graph.js";
import { composeStack } from "./plugin-host.js";
import type { PluginManifest } from "./plugin-manifest.js";

interface Clock {
  now(): number;
}
const IClock = createToken<Clock>("IClock");
const IA = createToken<unknown>("IA");
const IB = createToken<unknown>("IB");
const IHost = createToken<unknown>("IHost");

const plugin = (id: string, provides: symbol[], requires: symbol[], register: PluginManifest["register"] = () => undefined): PluginManifest => ({ id, kind: "tooling", provides, requires, register });

const graphError = (fn: () => unknown): PluginGraphError => {
  try {
    fn();
  } catch (e) {
    if (e instanceof PluginGraphError) return e;
    throw e;
  }
  throw new Error("no PluginGraphError");
};

describe("plugin graph", () => {
  it("orders providers before their users, counting what the host provides", () => {
    const a = plugin("a", [IA], [IB, IHost]);
    const b = plugin("b", [IB], []);
    expect(checkPluginGraph([a, b], [IHost]).map((p) => p.id)).to.deep.equal(["b", "a"]);
  });

  it("names the plugin and the token when a provider is missing, and how to fix it", () => {
    const e = graphError(() => checkPluginGraph([plugin("@x/gvt", [], [IClock])]));
    expect(e.code).to.equal("missing-provider");
    expect(e.path).to.deep.equal(["@x/gvt", "IClock"]);
    expect(e.message).to.equal("@x/gvt requires IClock, which no plugin in the stack provides: add a plugin that provides IClock to the stack's plugins");
  });

  it("refuses two providers of one token", () => {
    const e = graphError(() => checkPluginGraph([plugin("kvm", [IA], []), plugin("xen", [IA], [])]));
    expect(e.code).to.equal("duplicate-provider");
    expect(e.path).to.deep.equal(["kvm", "IA", "xen"]);
  });

  it("prints the cycle's path", () => {
    const e = graphError(() => checkPluginGraph([plugin("a", [IA], [IB]), plugin("b", [IB], [IA])]));
    expect(e.code).to.equal("cycle");
    expect(e.path).to.deep.equal(["a", "(IB)", "b", "(IA)", "a"]);
  });

  it("registers nothing when the graph is bad, and everything in order when it is good", () => {
    const registered: string[] = [];
    const scope = container.createChildContainer();
    expect(() => composeStack([plugin("a", [IA], [IB], () => registered.push("a"))], scope)).to.throw(PluginGraphError);
    expect(registered).to.deep.equal([]);
    const child = composeStack(
      [
        plugin("user", [IA], [IClock], (c) => {
          registered.push("user");
          c.register(IA, { useFactory: (r) => r.resolve(IClock).now() });
        }),
        plugin("clock", [IClock], [], (c) => {
          registered.push("clock");
          c.register(IClock, { useValue: { now: () => 42 } });
        }),
      ],
      scope,
    );
    expect(registered).to.deep.equal(["clock", "user"]);
    expect(child.resolve(IA)).to.equal(42);
    expect(scope.isRegistered(IA)).to.equal(false);
  });
});
