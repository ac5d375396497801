#!/usr/bin/env node
/**
 * `vgpu-iommu`: the composition root and command line.
 *
 *   vgpu-iommu run [stack-file]   run the stack's scenario (the embedded default without a file)
 *   vgpu-iommu list               the plugins, adapters and scenarios it can find
 *   vgpu-iommu check stack-file   validate a stack without running it
 *
 * `run` prints the summary table (`--json`: the summary as JSON), writes the
 * trace (`--trace FILE`, Chrome Trace Event format) and the report
 * (`--report FILE.html`). Exit status: 0 for a clean run (or a skipped
 * scenario), 1 on a BUG, an invariant violation or a failed phase, 2 for an
 * invalid stack file (nothing runs) or a usage error.
 */
import "reflect-metadata";
import { readFileSync, writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { Command, InvalidArgumentError } from "commander";
import cliProgress from "cli-progress";
import { DEFAULT_STACK_SOURCE, DEFAULT_STACK_YAML } from "./default-stack.js";
import { discoverPlugins } from "./plugin-discovery.js";
import { buildReport } from "./report.js";
import { checkStack, runStack } from "./run-stack.js";
import type { RunProgress } from "./scenario-runner.js";
import { StackError } from "./stack-error.js";
import { renderSummary, summaryJson } from "./summary.js";
import { buildTrace, traceJson } from "./trace.js";

const seedArg = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 2147483647) throw new InvalidArgumentError("expected an integer in 0..2147483647");
  return n;
};

function readStack(file: string | undefined): { text: string; source: string } {
  return file === undefined ? { text: DEFAULT_STACK_YAML, source: DEFAULT_STACK_SOURCE } : { text: readFileSync(file, "utf8"), source: file };
}

/** A progress bar on stderr for runs longer than a second, on a terminal only. */
function progressBar(enabled: boolean): { update: (p: RunProgress) => Promise<void>; stop: () => void } {
  const started = performance.now();
  let bar: cliProgress.SingleBar | undefined;
  return {
    async update(p) {
      if (!enabled) return;
      if (bar === undefined && performance.now() - started > 1000) {
        bar = new cliProgress.SingleBar({ format: "{bar} {value}/{total} phases | {phase}", stream: process.stderr, clearOnComplete: true, hideCursor: true }, cliProgress.Presets.shades_classic);
        bar.start(p.total, p.done, { phase: p.phase });
      } else bar?.update(p.done, { phase: p.phase });
      // Let the terminal repaint between phases.
      await new Promise<void>((resolve) => setImmediate(resolve));
    },
    stop: () => bar?.stop(),
  };
}

function fail(e: unknown): never {
  if (e instanceof StackError) {
    process.stderr.write(`${e.message}\n${e.issues.length} problem${e.issues.length === 1 ? "" : "s"} in ${e.source}; nothing was run\n`);
    process.exit(2);
  }
  throw e;
}

const program = new Command("vgpu-iommu").description("A model of how a guest's memory reaches a GPU's DMA engine under mediated vGPUs").showHelpAfterError();
program.configureOutput({ outputError: (s, write) => write(s) });
program.exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));

program
  .command("run")
  .description("compose the stack, run its scenario, print the summary (the embedded default stack without a file)")
  .argument("[stack-file]", "a stack file in YAML or JSON")
  .option("--json", "print the summary as JSON")
  .option("--trace <file>", "write the run's events in the Chrome Trace Event format (Perfetto, chrome://tracing)")
  .option("--report <file>", "write a self-contained HTML report")
  .option("--seed <n>", "override the stack's seed", seedArg)
  .option("--scenario <name>", "run this scenario instead of the stack's, with its default parameters")
  .option("--no-progress", "never show a progress bar")
  .action(async (file: string | undefined, opts: { json?: boolean; trace?: string; report?: string; seed?: number; scenario?: string; progress: boolean }) => {
    const { text, source } = readStack(file);
    const bar = progressBar(opts.progress && process.stderr.isTTY === true);
    let run;
    try {
      run = await runStack(text, source, {
        onProgress: (p) => bar.update(p),
        overrides: { ...(opts.seed === undefined ? {} : { seed: opts.seed }), ...(opts.scenario === undefined ? {} : { scenario: opts.scenario }) },
      });
    } catch (e) {
      bar.stop();
      fail(e);
    }
    bar.stop();
    if (opts.trace !== undefined) writeFileSync(opts.trace, traceJson(buildTrace(run.recorder, run.summary)));
    if (opts.report !== undefined) writeFileSync(opts.report, buildReport(run.summary, run.recorder));
    process.stdout.write(opts.json === true ? summaryJson(run.summary) : renderSummary(run.summary));
    process.exitCode = run.exitStatus;
  });

program
  .command("check")
  .description("validate a stack file without running it")
  .argument("<stack-file>", "a stack file in YAML or JSON")
  .action(async (file: string) => {
    const { text, source } = readStack(file);
    try {
      const r = await checkStack(text, source);
      process.stdout.write(
        `${source}: valid: ${r.stack.hypervisor.package}, ${r.stack.vendors.map((v) => v.package).join(", ")}; ${r.stack.vms.length} VMs, ${r.stack.vgpus.length} vGPUs; scenario ${r.scenario.name} ${JSON.stringify(r.params)}\n`,
      );
    } catch (e) {
      fail(e);
    }
  });

program
  .command("list")
  .description("show the plugins, adapters and scenarios it can find")
  .option("--json", "print the catalog as JSON")
  .action(async (opts: { json?: boolean }) => {
    const catalog = await discoverPlugins();
    if (opts.json === true) {
      const out = {
        plugins: catalog.plugins.map((p) => ({ package: p.package, kind: p.manifest.kind, provides: p.provides, types: p.types, guestOps: p.guestOps, hypervisorOps: p.hypervisorOps, scenarios: p.scenarios, problem: p.problem ?? null })),
        scenarios: catalog.scenarios.map((s) => ({ name: s.definition.name, item: s.definition.item ?? null, title: s.definition.title, from: s.from, runsOn: s.runsOn })),
      };
      process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
      return;
    }
    const lines: string[] = [];
    for (const [title, kind] of [
      ["Hypervisor adapters", "hypervisor-adapter"],
      ["Vendor plugins", "vendor"],
      ["Other plugins", "other"],
    ] as const) {
      const ps = catalog.plugins.filter((p) => (kind === "other" ? p.manifest.kind !== "hypervisor-adapter" && p.manifest.kind !== "vendor" : p.manifest.kind === kind));
      if (ps.length === 0) continue;
      lines.push(`${title}:`);
      for (const p of ps) {
        lines.push(`  ${p.package}  provides ${p.provides.join(", ")}`);
        if (p.types.length > 0) lines.push(`      types: ${p.types.join(", ")}`);
        if (p.vendorCapabilities !== undefined) lines.push(`      capabilities: ${Object.entries(p.vendorCapabilities).map(([k, v]) => `${k}=${String(v)}`).join(", ")}`);
        if (p.guestOps.length > 0) lines.push(`      guest operations: ${p.guestOps.join(", ")}`);
        if (p.hypervisorOps.length > 0) lines.push(`      hypervisor operations: ${p.hypervisorOps.join(", ")}`);
        if (p.scenarios.length > 0) lines.push(`      scenarios: ${p.scenarios.join(", ")}`);
        if (p.problem !== undefined) lines.push(`      (could not be composed: ${p.problem})`);
      }
    }
    lines.push("Scenarios:");
    for (const s of catalog.scenarios) {
      const item = s.definition.item === undefined ? "" : ` (vendors.md 5.${s.definition.item})`;
      lines.push(`  ${s.definition.name.padEnd(22)} ${s.definition.title}${item}${s.from === "built-in" ? "" : ` [from ${s.from}]`}`);
      lines.push(`  ${"".padEnd(22)} runs on: ${s.runsOn.length === 0 ? "nothing installed" : s.runsOn.join(", ")}`);
    }
    process.stdout.write(`${lines.join("\n")}\n`);
  });

await program.parseAsync(process.argv);
