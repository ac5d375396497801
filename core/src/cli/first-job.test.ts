import { expect } from "chai";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { runFirstJob, FIRST_JOB_DEFAULTS } from "./first-job.js";

describe("vgpu-iommu run (first cut)", () => {
  it("pins, charges and releases the framebuffer as each step reports", async () => {
    const result = await runFirstJob();
    expect(result.crashed).to.equal(false);
    expect(result.invariantViolation).to.equal(undefined);
    const byStep = result.steps.map((s) => [s.pinnedIovas, s.hostPins, s.lockedVmPages, s.mappings, s.invalidations]);
    expect(byStep).to.deep.equal([
      [0, 0, 0, 0, 0],
      [0, 0, 0, 0, 0],
      [0, 0, 0, 1, 0],
      [2025, 2025, 2025, 1, 0],
      [2025, 2025, 2025, 1, 0],
      [2025, 2025, 2025, 1, 0],
      [0, 0, 0, 0, 1],
      [0, 0, 0, 0, 1],
    ]);
    expect(result.steps.every((s) => s.warnings === 0 && s.bugs === 0)).to.equal(true);
  });

  it("stops pinning at RLIMIT_MEMLOCK with -ENOMEM and still releases everything", async () => {
    const result = await runFirstJob({ ...FIRST_JOB_DEFAULTS, memlockMiB: 4 });
    const pinStep = result.steps[3]!;
    expect(pinStep.result).to.equal("1024 pinned then ENOMEM");
    expect(pinStep.lockedVmPages).to.equal(1024);
    expect(result.steps.at(-1)!.hostPins).to.equal(0);
  });

  it("prints JSON and exits 0 through the command line", async () => {
    const main = fileURLToPath(new URL("./main.js", import.meta.url));
    const { stdout } = await promisify(execFile)(process.execPath, [main, "run", "--json", "--guest-mib", "64"]);
    const parsed = JSON.parse(stdout) as { steps: { lockedVmPages: number }[]; crashed: boolean };
    expect(parsed.crashed).to.equal(false);
    expect(parsed.steps[3]!.lockedVmPages).to.equal(2025);
  });
});
