/**
 * A plugin may contribute scenarios of its own through IScenarioProvider:
 * they are listed with the built-ins, validated and run the same way, and a
 * name that clashes with another scenario is a stack error.
 */
import { expect } from "chai";
import { container } from "tsyringe";
import { createHost } from "../host/host.js";
import type { PluginManifest } from "../plugins/plugin-manifest.js";
import { IScenarioProvider, defineScenario, type ScenarioProvider } from "./scenario-api.js";
import { runScenario } from "./scenario-runner.js";
import { StackError } from "./stack-error.js";
import { composeOn, loadStackPlugins, resolveScenario } from "./stack-composer.js";
import { loadStack } from "./stack-loader.js";
import { buildSummary } from "./summary.js";

const STACK = `hypervisor: { package: "@vgpu-iommu/adapter-kvm" }
host: { memory: 2GiB }
vendors: [ { package: "@vgpu-iommu/plugin-mock-gpu" } ]
vms: [ { name: vm0, memory: 128MiB } ]
vgpus: [ { name: g0, vm: vm0, vendor: "@vgpu-iommu/plugin-mock-gpu", type: mock-small } ]
scenario: { name: three-pins, params: { pages: 3 } }
`;

const provider = (name: string): ScenarioProvider => ({
  scenarios: [
    defineScenario<{ pages: number }>({
      name,
      title: "Three pins",
      description: "maps a few pages through the guest driver",
      params: { type: "object", additionalProperties: false, properties: { pages: { type: "integer", minimum: 1, default: 1, description: "pages (1 or more)" } } },
      requires: { guestOps: ["map"] },
      phases: (p) => [
        {
          name: "map",
          run(ctx) {
            const g = ctx.vgpus[0]!;
            g.driver!.map(0, Array.from({ length: p.pages }, (_, i) => 0x2000 + i));
            ctx.note(`${g.name}: ${g.pins.livePages} pages pinned`);
          },
        },
      ],
    }),
  ],
});

const scenarioPlugin = (name: string): PluginManifest => ({
  id: "@example/scenarios",
  kind: "scenarios",
  provides: [IScenarioProvider],
  requires: [],
  register: (c) => c.register(IScenarioProvider, { useValue: provider(name) }),
});

describe("scenarios contributed by a plugin", function () {
  this.timeout(30_000);

  it("are composed, validated with their own schema, and run like the built-ins", async () => {
    const stack = loadStack(STACK, "s.yaml");
    const loaded = await loadStackPlugins(stack);
    const scope = container.createChildContainer();
    const composition = composeOn(stack, { ...loaded, extra: [{ package: "@example/scenarios", manifest: scenarioPlugin("three-pins") }] }, createHost({ ramBytes: 2n << 30n, seed: 1 }, scope), scope);
    expect(composition.scenarios.get("three-pins")!.from).to.equal("@example/scenarios");
    const { definition, params } = resolveScenario(stack, composition);
    expect(params).to.deep.equal({ pages: 3 });
    const outcome = await runScenario(stack, composition, definition, params);
    const summary = buildSummary(stack, definition.name, params, outcome);
    expect(summary.result).to.equal("ok");
    expect(summary.notes).to.deep.equal(["g0: 3 pages pinned"]);
    expect(summary.rows.find((r) => r.name === "g0")).to.include({ pagesPinned: 3, pinnedAtEnd: 0 });
  });

  it("a name another scenario has is refused, naming both", async () => {
    const stack = loadStack(STACK, "s.yaml");
    const loaded = await loadStackPlugins(stack);
    const scope = container.createChildContainer();
    try {
      composeOn(stack, { ...loaded, extra: [{ package: "@example/scenarios", manifest: scenarioPlugin("races") }] }, createHost({ ramBytes: 2n << 30n, seed: 1 }, scope), scope);
      expect.fail("composed");
    } catch (e) {
      expect(e).to.be.instanceOf(StackError);
      expect((e as StackError).issues.map((i) => [i.path, i.allowed])).to.deep.equal([["/plugins/0", "a plugin whose scenario names are its own: races is already a built-in scenario"]]);
    }
  });
});
