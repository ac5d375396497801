/// <reference lib="dom" />
/**
 * The run's outputs: the trace (Chrome Trace Event format) parsed and its
 * events checked against the summary of the same run; the HTML report opened
 * in headless Chromium (Debian's chromium, as .ci/run installs it) with no
 * network, its charts found drawn, and a screenshot taken; and determinism:
 * the same stack and seed give the same summary, trace and report, byte for
 * byte.
 */
import { expect } from "chai";
import { existsSync, mkdtempSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import type { Summary, TraceEvent } from "@vgpu-iommu/core/cli";
import { KVM, VENDORS, smallStack, tempDir, vgpuIommu, writeTemp } from "./cli-support.js";

const CHROMIUM = "/usr/bin/chromium";

interface TraceFileJson {
  readonly traceEvents: TraceEvent[];
  readonly displayTimeUnit: string;
  readonly otherData: Record<string, unknown>;
}

describe("vgpu-iommu run: trace, report, determinism", function () {
  this.timeout(120_000);
  const dir = tempDir();
  const tracePath = join(dir, "trace.json");
  const reportPath = join(dir, "report.html");
  let summary: Summary;
  let trace: TraceFileJson;

  before(async function () {
    this.timeout(120_000);
    const r = await vgpuIommu(["run", "--json", "--no-progress", "--trace", tracePath, "--report", reportPath]);
    expect(r.status).to.equal(0);
    summary = JSON.parse(r.stdout) as Summary;
    trace = JSON.parse(readFileSync(tracePath, "utf8")) as TraceFileJson;
  });

  describe("the trace", () => {
    it("is a Chrome Trace Event object: traceEvents, a time unit, and the run in otherData", () => {
      expect(trace.displayTimeUnit).to.equal("ms");
      expect(trace.otherData).to.deep.equal({ generator: "vgpu-iommu", stack: "default", scenario: "lifecycle", seed: 1, result: "ok", timeUnit: "one microsecond per model step", droppedEvents: 0 });
      for (const e of trace.traceEvents) {
        expect(e).to.have.property("ph").that.is.oneOf(["M", "X", "b", "e", "i", "C"]);
        expect(e.pid).to.equal(1);
        expect(Number.isInteger(e.ts)).to.equal(true);
      }
    });

    it("names one track per component", () => {
      const names = trace.traceEvents.filter((e) => e.ph === "M" && e.name === "thread_name").map((e) => (e.args as { name: string }).name);
      expect(names).to.include.members(["vm vm0", "vm vm1", "scenario", "vgpu vgpu0", "vgpu vgpu1", "vgpu0 mappings", "vgpu1 mappings", "type1 container 1", "type1 container 2", "type1 container 1 MAP_DMA", "type1 container 2 MAP_DMA"]);
      expect(new Set(names).size).to.equal(names.length);
      const process = trace.traceEvents.find((e) => e.name === "process_name")!;
      expect(process.args).to.deep.equal({ name: "vgpu-iommu lifecycle on default" });
    });

    it("model time: timestamps strictly increase in file order, and end at the summary's model time", () => {
      const timed = trace.traceEvents.filter((e) => e.ph !== "M" && e.ph !== "X");
      for (let i = 1; i < timed.length; i++) expect(timed[i]!.ts).to.be.greaterThan(timed[i - 1]!.ts);
      const last = Math.max(...trace.traceEvents.map((e) => e.ts + (e.dur ?? 0)));
      expect(last).to.be.at.most(summary.modelTime);
      expect(summary.modelTime - last).to.be.lessThan(3);
    });

    it("phases are spans on the scenario track, in the summary's order", () => {
      const spans = trace.traceEvents.filter((e) => e.ph === "X" && e.cat === "phase");
      expect(spans.map((e) => e.name)).to.deep.equal([...summary.phases.map((p) => p.name).slice(0, -1), "shutdown"]);
      for (let i = 1; i < spans.length; i++) expect(spans[i]!.ts).to.be.at.least(spans[i - 1]!.ts + spans[i - 1]!.dur!);
    });

    it("pins and device mappings are async spans, each ended once, as many as the summary counts", () => {
      const open = new Map<string, number>();
      const made = new Map<string, number>();
      for (const e of trace.traceEvents) {
        if (e.ph !== "b" && e.ph !== "e") continue;
        const key = `${e.cat}:${e.id!}`;
        if (e.ph === "b") {
          open.set(key, (open.get(key) ?? 0) + 1);
          if (e.cat === "map") made.set(e.id!.split(":")[0]!, (made.get(e.id!.split(":")[0]!) ?? 0) + 1);
        } else {
          expect(open.get(key), `an end without a begin: ${key}`).to.be.greaterThan(0);
          open.set(key, open.get(key)! - 1);
        }
      }
      expect([...open.values()].every((n) => n === 0), "every span ended").to.equal(true);
      // GVT translates one page per GGTT entry: one span per page pinned.
      expect(made.get("vgpu0")).to.equal(summary.rows.find((r) => r.name === "vgpu0")!.mappingsMade);
      expect(made.get("vgpu1")).to.equal(2153);
      const mapDma = trace.traceEvents.filter((e) => e.cat === "type1" && e.ph === "b");
      // Each VM: low RAM, the BIOS ROM, high RAM, and 512 virtio-mem blocks, each a MAP_DMA; 4 blocks come back after the balloon.
      expect(mapDma).to.have.length(2 * (3 + 512 + 4));
    });

    it("counters: pinned pages per vGPU and host, device address space, and locked_vm against its limit per VM", () => {
      const counters = trace.traceEvents.filter((e) => e.ph === "C");
      expect([...new Set(counters.map((e) => e.name))]).to.deep.equal(["locked_vm vm0", "locked_vm vm1", "pinned pages", "device address space (bytes)"]);
      const pinned = counters.filter((e) => e.name === "pinned pages").map((e) => e.args as Record<string, number>);
      expect(Object.keys(pinned[0]!)).to.deep.equal(["vgpu0", "host frames pinned"]);
      expect(Math.max(...pinned.map((a) => a["vgpu0"] ?? 0))).to.equal(2153);
      expect(Math.max(...pinned.map((a) => a["host frames pinned"]!))).to.equal(4306);
      expect(pinned.at(-1)).to.deep.equal({ vgpu0: 0, vgpu1: 0, "host frames pinned": 0 });
      const locked = counters.filter((e) => e.name === "locked_vm vm0").map((e) => e.args as Record<string, number>);
      expect(locked.every((a) => a["limit"] === 2_097_152)).to.equal(true);
      expect(Math.max(...locked.map((a) => a["locked_vm"]!))).to.equal(2153);
      expect(locked.at(-1)).to.deep.equal({ locked_vm: 0, limit: 2_097_152 });
    });

    it("invalidations: one type1 invalidation and one dmaUnmap per ballooned block with pins", () => {
      const sent = trace.traceEvents.filter((e) => e.name === "invalidation sent");
      const unmaps = trace.traceEvents.filter((e) => e.name === "dma_unmap");
      expect(sent).to.have.length(8);
      expect(unmaps).to.have.length(8);
      expect(unmaps.filter((e) => e.tid === trace.traceEvents.find((m) => m.ph === "M" && (m.args as { name: string }).name === "vgpu vgpu0")!.tid)).to.have.length(4);
    });
  });

  describe("the report", () => {
    it("is one self-contained page: uPlot inlined, nothing to fetch", () => {
      const html = readFileSync(reportPath, "utf8");
      expect(html.startsWith("<!doctype html>")).to.equal(true);
      expect(html).to.not.match(/<script[^>]+src=|<link[^>]+href=|@import|url\(http/);
      expect(html).to.include("uPlot");
      expect(html).to.include('<table>\n<tr><th></th><th>pages pinned</th>');
    });

    it("opens in headless Chromium with no network: three charts drawn, the IOVA map and the summary; a screenshot", async () => {
      expect(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`).to.equal(true);
      const profile = mkdtempSync(join(tmpdir(), "vgpu-iommu-chromium-"));
      const context = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        viewport: { width: 1100, height: 900 },
        args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      });
      try {
        const page = await context.newPage();
        const requests: string[] = [];
        const errors: string[] = [];
        await page.route("**/*", (route) => {
          const url = route.request().url();
          if (url.startsWith("file://")) return route.continue();
          requests.push(url);
          return route.abort();
        });
        page.on("pageerror", (e) => errors.push(String(e)));
        await page.goto(`file://${reportPath}`);
        await page.waitForFunction(() => (window as { vgpuIommuReport?: { charts: number } }).vgpuIommuReport !== undefined);
        const drawn = await page.evaluate(() => {
          const report = (window as unknown as { vgpuIommuReport: { charts: number } }).vgpuIommuReport;
          const inked = [...document.querySelectorAll(".uplot canvas")].map((c) => {
            const canvas = c as HTMLCanvasElement;
            const data = canvas.getContext("2d")!.getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i]! > 0) n++;
            return n;
          });
          return {
            charts: report.charts,
            titles: [...document.querySelectorAll(".uplot .u-title")].map((t) => t.textContent),
            inked,
            iovaRuns: document.querySelectorAll("svg.iova-map rect").length,
            rows: [...document.querySelectorAll("table tr.vgpu th, table tr.vm th")].map((t) => t.textContent),
            captions: [...document.querySelectorAll("p.caption")].map((p) => p.textContent),
          };
        });
        expect(errors).to.deep.equal([]);
        expect(requests).to.deep.equal([]);
        expect(drawn.charts).to.equal(3);
        expect(drawn.titles).to.deep.equal(["Pinned pages per vGPU", "locked_vm against RLIMIT_MEMLOCK", "Device address space held per vGPU"]);
        expect(drawn.inked).to.have.length(3);
        for (const n of drawn.inked) expect(n, "pixels drawn on a chart").to.be.greaterThan(5000);
        expect(drawn.iovaRuns).to.be.greaterThan(1);
        expect(drawn.rows).to.deep.equal(["vm0", "vgpu0 (GVTg_V5_4)", "vm1", "vgpu1 (GVTg_V5_4)"]);
        expect(drawn.captions[1]).to.equal("vm0 RLIMIT_MEMLOCK: 2,097,152 pages, 974 times the peak: off the chart. vm1 RLIMIT_MEMLOCK: 2,097,152 pages, 974 times the peak: off the chart.");
        const shot = join(dir, "report.png");
        await page.screenshot({ path: shot, fullPage: true });
        const png = readFileSync(shot);
        expect(png.subarray(1, 4).toString()).to.equal("PNG");
        expect(statSync(shot).size).to.be.greaterThan(50_000);
      } finally {
        await context.close();
      }
    });
  });

  describe("determinism", () => {
    it("the same stack file and seed give the same summary, trace and report, byte for byte; another seed another run", async () => {
      const file = writeTemp("det.yaml", smallStack(KVM, VENDORS[0]!, "hostile-guest"));
      const out = tempDir();
      const run = (seed: string, n: number) => vgpuIommu(["run", file, "--json", "--seed", seed, "--trace", join(out, `t${n}.json`), "--report", join(out, `r${n}.html`)]);
      const [a, b, c] = [await run("11", 1), await run("11", 2), await run("12", 3)];
      expect(a.status).to.equal(0);
      expect(b.stdout).to.equal(a.stdout);
      expect(readFileSync(join(out, "t2.json"), "utf8")).to.equal(readFileSync(join(out, "t1.json"), "utf8"));
      expect(readFileSync(join(out, "r2.html"), "utf8")).to.equal(readFileSync(join(out, "r1.html"), "utf8"));
      expect((JSON.parse(a.stdout) as Summary).seed).to.equal(11);
      expect(c.stdout).to.not.equal(a.stdout);
      const notes = (s: string) => (JSON.parse(s) as Summary).notes.filter((n) => n.includes("random BAR0 accesses"));
      expect(notes(c.stdout)).to.not.deep.equal(notes(a.stdout));
    });
  });
});
