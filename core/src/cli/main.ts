#!/usr/bin/env node
/**
 * `vgpu-iommu`: the composition root and command line. `run` executes the main
 * job on its embedded default and prints what was pinned and charged at each
 * step; `--json` prints the same records in machine form. The exit status is
 * non-zero when the simulated host crashed or an invariant was violated.
 */
import "reflect-metadata";
import { Command, InvalidArgumentError } from "commander";
import Table from "cli-table3";
import { FIRST_JOB_DEFAULTS, runFirstJob, type JobResult } from "./first-job.js";

const positiveInt = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError("expected a positive integer");
  return n;
};

function printTable(result: JobResult): void {
  const table = new Table({ style: { head: [], border: [] }, head: ["step", "result", "vendor-pinned IOVAs", "host pins", "locked_vm (pages)", "memlock limit", "mappings", "invalidations", "WARNs", "BUGs"] });
  for (const s of result.steps) table.push([s.step, s.result, s.pinnedIovas, s.hostPins, s.lockedVmPages, s.memlockLimitPages, s.mappings, s.invalidations, s.warnings, s.bugs]);
  process.stdout.write(`${table.toString()}\n`);
  if (result.invariantViolation !== undefined) process.stdout.write(`invariant violated: ${result.invariantViolation}\n`);
  if (result.crashed) process.stdout.write("the simulated host crashed (BUG)\n");
}

const program = new Command("vgpu-iommu").description("A model of how a guest's memory reaches a GPU's DMA engine under mediated vGPUs");

program
  .command("run")
  .description("run the main job on its embedded default: pin, charge, invalidate, release")
  .option("--guest-mib <n>", "guest RAM in MiB", positiveInt, FIRST_JOB_DEFAULTS.guestMiB)
  .option("--memlock-mib <n>", "RLIMIT_MEMLOCK of the VMM process in MiB", positiveInt, FIRST_JOB_DEFAULTS.memlockMiB)
  .option("--framebuffer-pages <n>", "pages the mock vGPU pins", positiveInt, FIRST_JOB_DEFAULTS.framebufferPages)
  .option("--seed <n>", "seed of the host's frame placement", positiveInt, FIRST_JOB_DEFAULTS.seed)
  .option("--json", "print the step records as JSON")
  .action(async (opts: { guestMib: number; memlockMib: number; framebufferPages: number; seed: number; json?: boolean }) => {
    const result = await runFirstJob({ guestMiB: opts.guestMib, memlockMiB: opts.memlockMib, framebufferPages: opts.framebufferPages, seed: opts.seed });
    if (opts.json === true) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    else printTable(result);
    if (result.crashed || result.invariantViolation !== undefined) process.exitCode = 1;
  });

await program.parseAsync(process.argv);
