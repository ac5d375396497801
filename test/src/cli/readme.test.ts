/**
 * The README stays true: its first command is `npm ci && npm start`, and
 * `npm start` runs the default scenario on the embedded default stack and
 * prints the summary; the stack file it shows is the embedded default; the
 * report screenshot it shows exists.
 */
import { expect } from "chai";
import { execFile } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_STACK_YAML } from "@vgpu-iommu/core/cli";
import { MAIN, REPO, vgpuIommu } from "./cli-support.js";

const readme = readFileSync(join(REPO, "README.md"), "utf8");
const blocks = [...readme.matchAll(/```(\w*)\n([\s\S]*?)```/g)].map((m) => ({ lang: m[1]!, text: m[2]! }));

describe("the README and the command", function () {
  this.timeout(60_000);

  it("the first command is npm ci && npm start, and npm start builds and runs vgpu-iommu run", () => {
    expect(blocks[0]!.lang).to.equal("sh");
    expect(blocks[0]!.text.split("\n")[0]).to.match(/^npm ci && npm start\s+#/);
    const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { scripts: Record<string, string> };
    expect(pkg.scripts["start"]).to.equal("tsc -b && node core/dist/cli/main.js run");
  });

  it("vgpu-iommu run prints the phases, the summary table and the result, with no progress bar off a terminal", async () => {
    const r = await vgpuIommu(["run"]);
    expect(r.status).to.equal(0);
    expect(r.stderr).to.equal("");
    const lines = r.stdout.split("\n");
    expect(lines[0]).to.equal("stack default: @vgpu-iommu/adapter-kvm with @vgpu-iommu/plugin-gvt, seed 1");
    expect(r.stdout).to.include("│                     │ pinned │ pinned │ at end │ refused │ / limit           │ made     │ at end    │ (peak)     │ dations │       │      │ tions  │");
    expect(r.stdout).to.include("│ vm0                 │ 2,153  │        │ 0      │ 0       │ 2,153 / 2,097,152 │ 2,153    │ 0         │ 8.4 MiB    │ 4       │ 0     │ 0    │ 0      │");
    expect(lines.at(-2)).to.equal("result: ok");
  });

  it("on a terminal, a run longer than a second shows a progress bar of its phases", async function () {
    if (!existsSync("/usr/bin/script")) this.skip();
    // util-linux script(1) gives the command a pseudo-terminal.
    const out = await new Promise<string>((resolve, reject) =>
      execFile("/usr/bin/script", ["-qec", `${process.execPath} ${MAIN} run`, "/dev/null"], { cwd: REPO, maxBuffer: 16 << 20 }, (err, stdout) => (err === null ? resolve(stdout) : reject(new Error(`script(1) failed: ${err.message}`)))),
    );
    expect(out).to.match(/[█░]{40} \d\/9 phases \| /);
    expect(out).to.include("result: ok");
  });

  it("the stack file it shows is the embedded default, and it shows the report", () => {
    const yaml = blocks.filter((b) => b.lang === "yaml");
    expect(yaml).to.have.length(1);
    expect(yaml[0]!.text).to.equal(DEFAULT_STACK_YAML);
    const image = /!\[[^\]]*\]\((media\/report\.png)\)/.exec(readme);
    expect(image).to.not.equal(null);
    expect(existsSync(join(REPO, image![1]!))).to.equal(true);
    expect(statSync(join(REPO, image![1]!)).size).to.be.greaterThan(50_000);
  });
});
