/**
 * The command's default run, in process: the embedded default stack composed
 * by package name (the KVM adapter and the GVT-g plugin, loaded the way the
 * command loads them), its lifecycle scenario, and what the summary says.
 */
import { expect } from "chai";
import { DEFAULT_STACK_SOURCE, DEFAULT_STACK_YAML } from "./default-stack.js";
import { runStack } from "./run-stack.js";
import { renderSummary } from "./summary.js";

describe("vgpu-iommu run on the embedded default", function () {
  this.timeout(60_000);

  it("pins, charges and releases two 2,153-page working sets; the table says so", async () => {
    const { summary, exitStatus } = await runStack(DEFAULT_STACK_YAML, DEFAULT_STACK_SOURCE);
    expect(exitStatus).to.equal(0);
    expect(summary.result).to.equal("ok");
    expect(summary.rows.map((r) => [r.name, r.pagesPinned, r.lockedVmPeak, r.pinnedAtEnd, r.mappingsLive, r.violations])).to.deep.equal([
      ["vm0", 2153, 2153, 0, 0, 0],
      ["vgpu0", 2153, null, 0, 0, 0],
      ["vm1", 2153, 2153, 0, 0, 0],
      ["vgpu1", 2153, null, 0, 0, 0],
      ["host", 4306, null, 0, 0, 0],
    ]);
    const text = renderSummary(summary);
    expect(text).to.include("│ vm0                 │ 2,153  │        │ 0      │ 0       │ 2,153 / 2,097,152 │");
    expect(text.endsWith("result: ok\n")).to.equal(true);
  });

  it("a second run in the same process gives the same summary", async () => {
    const a = await runStack(DEFAULT_STACK_YAML, DEFAULT_STACK_SOURCE);
    const b = await runStack(DEFAULT_STACK_YAML, DEFAULT_STACK_SOURCE);
    expect(JSON.stringify(b.summary)).to.equal(JSON.stringify(a.summary));
  });
});
