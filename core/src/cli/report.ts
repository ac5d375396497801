/**
 * The run's report: one self-contained HTML page (uPlot and its stylesheet
 * inlined, the data embedded as JSON; nothing is fetched) with charts of
 * pinned pages per vGPU and of each VM's locked_vm against its limit over
 * model time, a map of the device address space at the snapshot, and the
 * summary table. Charts are drawn when the page opens; `window.vgpuIommuReport`
 * says how many were drawn, for tests.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import type { IovaSnapshot, RunRecorder } from "./run-recorder.js";
import { SUMMARY_COLUMNS, summaryCells, type Summary } from "./summary.js";
import { humanSize } from "./sizes.js";

const require = createRequire(import.meta.url);

export interface Series {
  readonly label: string;
  readonly values: (number | null)[];
  readonly color: string;
  readonly dashed?: boolean;
}

export interface Chart {
  readonly id: string;
  readonly title: string;
  readonly yLabel: string;
  readonly x: number[];
  readonly series: readonly Series[];
  /** Lines under the chart (limits too far above the data to draw). */
  readonly captions: readonly string[];
}

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f"];
const HOST_COLOR = "#555555";

/** Step series from the trace's counter events, sampled at every change; each vGPU and VM keeps its colour across charts. */
export function counterCharts(rec: RunRecorder): Chart[] {
  // A VM takes the colour of its first vGPU, so a VM's charge and its vGPU's pins read together.
  const colorOf = (name: string): string => {
    const owners = rec.ledgers.map((l) => l.vgpu);
    let i = owners.indexOf(name);
    if (i < 0) i = rec.ledgers.findIndex((l) => l.vm === name);
    if (i < 0 && rec.vms.some((v) => v.name === name)) i = owners.length + rec.vms.findIndex((v) => v.name === name);
    return i < 0 ? HOST_COLOR : PALETTE[i % PALETTE.length]!;
  };
  const charts: Chart[] = [];
  const build = (id: string, title: string, yLabel: string, match: (name: string) => boolean, describe: (name: string, key: string) => { label: string; owner: string; dashed: boolean }): void => {
    const events = rec.events.filter((e) => e.ph === "C" && match(e.name));
    if (events.length === 0) return;
    const keys: string[] = [];
    for (const e of events) for (const k of Object.keys(e.args ?? {})) if (!keys.includes(`${e.name}\u0000${k}`)) keys.push(`${e.name}\u0000${k}`);
    const x: number[] = [];
    const current = new Map<string, number>();
    const values = keys.map(() => [] as (number | null)[]);
    for (const e of events) {
      for (const [k, v] of Object.entries(e.args ?? {})) current.set(`${e.name}\u0000${k}`, v as number);
      x.push(e.ts);
      keys.forEach((k, i) => values[i]!.push(current.get(k) ?? null));
    }
    x.push(rec.now);
    for (const col of values) col.push(col[col.length - 1] ?? null);
    const series = keys.map((k, i) => {
      const [name, key] = k.split("\u0000") as [string, string];
      const d = describe(name, key);
      return { label: d.label, values: values[i]!, color: colorOf(d.owner), dashed: d.dashed };
    });
    // A limit far above everything else would flatten the data: leave it off the chart and say so.
    const captions: string[] = [];
    const peak = Math.max(0, ...series.filter((s) => !s.dashed).flatMap((s) => s.values.map((v) => v ?? 0)));
    const shown = series.filter((s) => {
      if (!s.dashed || id !== "locked") return true;
      const limit = Math.max(...s.values.map((v) => v ?? 0));
      if (limit <= Math.max(4 * peak, 16)) return true;
      captions.push(`${s.label}: ${limit.toLocaleString("en-US")} pages, ${peak === 0 ? "with nothing charged" : `${Math.round(limit / peak).toLocaleString("en-US")} times the peak`}: off the chart.`);
      return false;
    });
    charts.push({ id, title, yLabel, x, series: shown, captions });
  };
  build("pinned", "Pinned pages per vGPU", "pages", (n) => n === "pinned pages", (_n, k) => ({ label: k, owner: k, dashed: k === "host frames pinned" }));
  build("locked", "locked_vm against RLIMIT_MEMLOCK", "pages", (n) => n.startsWith("locked_vm "), (n, k) => {
    const vm = n.slice("locked_vm ".length);
    return { label: `${vm} ${k === "limit" ? "RLIMIT_MEMLOCK" : "locked_vm"}`, owner: vm, dashed: k === "limit" };
  });
  build("iova", "Device address space held per vGPU", "bytes", (n) => n === "device address space (bytes)", (_n, k) => ({ label: k, owner: k, dashed: false }));
  return charts;
}

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

/** The device address space at the snapshot: one band per device, runs coloured by owner, and a table of the runs. */
export function iovaMap(snapshot: IovaSnapshot | undefined, owners: readonly string[]): string {
  if (snapshot === undefined || snapshot.segments.length === 0) return `<p>No device mappings were live at the snapshot${snapshot === undefined ? "" : ` (${esc(snapshot.label)})`}.</p>`;
  const color = (owner: string): string => PALETTE[Math.max(0, owners.indexOf(owner)) % PALETTE.length]!;
  const devices = [...new Set(snapshot.segments.map((s) => s.device))].sort();
  const parts: string[] = [`<p>At model step ${snapshot.at}: ${esc(snapshot.label)}.</p>`];
  for (const device of devices) {
    const segs = snapshot.segments.filter((s) => s.device === device).sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0));
    // Merge touching segments of one owner into runs.
    const runs: { owner: string; start: bigint; end: bigint }[] = [];
    for (const s of segs) {
      const last = runs[runs.length - 1];
      const end = s.addr + BigInt(s.length);
      if (last !== undefined && last.owner === s.owner && last.end === s.addr) last.end = end;
      else runs.push({ owner: s.owner, start: s.addr, end });
    }
    const lo = runs[0]!.start;
    const hi = runs.reduce((m, r) => (r.end > m ? r.end : m), lo);
    const span = Number(hi - lo) || 1;
    const width = 1000;
    const rects = runs
      .map((r) => {
        const x = (Number(r.start - lo) / span) * width;
        const w = Math.max(1, (Number(r.end - r.start) / span) * width);
        return `<rect x="${x.toFixed(2)}" y="0" width="${w.toFixed(2)}" height="40" fill="${color(r.owner)}"><title>${esc(r.owner)}: 0x${r.start.toString(16)}-0x${(r.end - 1n).toString(16)} (${humanSize(Number(r.end - r.start))})</title></rect>`;
      })
      .join("");
    const used = runs.reduce((a, r) => a + Number(r.end - r.start), 0);
    parts.push(
      `<h3>${esc(device)}: ${runs.length} runs, ${humanSize(used)} mapped in 0x${lo.toString(16)}-0x${(hi - 1n).toString(16)}</h3>`,
      `<svg class="iova-map" viewBox="0 0 ${width} 40" width="${width}" height="40" preserveAspectRatio="none" role="img" aria-label="IOVA map of ${esc(device)}"><rect x="0" y="0" width="${width}" height="40" fill="#eee"/>${rects}</svg>`,
      `<p class="legend">${[...new Set(runs.map((r) => r.owner))].map((o) => `<span style="color:${color(o)}">&#9632;</span> ${esc(o)}`).join(" &nbsp; ")}</p>`,
      `<details><summary>runs</summary><table><tr><th>owner</th><th>first</th><th>last</th><th>size</th></tr>${runs
        .slice(0, 500)
        .map((r) => `<tr><td>${esc(r.owner)}</td><td>0x${r.start.toString(16)}</td><td>0x${(r.end - 1n).toString(16)}</td><td>${humanSize(Number(r.end - r.start))}</td></tr>`)
        .join("")}</table>${runs.length > 500 ? `<p>and ${runs.length - 500} more</p>` : ""}</details>`,
    );
  }
  return parts.join("\n");
}

function readAsset(spec: string): string {
  return readFileSync(require.resolve(spec), "utf8");
}

const DRAW = `
(function () {
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var drawn = 0;
  data.charts.forEach(function (c) {
    var el = document.getElementById("chart-" + c.id);
    var series = [{ label: "model step" }];
    var values = [c.x];
    c.series.forEach(function (s, i) {
      series.push({ label: s.label, stroke: s.color, width: 2, dash: s.dashed ? [6, 4] : undefined, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } });
      values.push(s.values);
    });
    var caption = document.getElementById("caption-" + c.id);
    if (caption) caption.textContent = c.captions.join(" ");
    new uPlot({ title: c.title, width: 1000, height: 300, series: series, scales: { x: { time: false } }, axes: [{ label: "model step" }, { label: c.yLabel, size: 80 }] }, values, el);
    drawn++;
  });
  window.vgpuIommuReport = { charts: drawn };
})();
`;

export function buildReport(summary: Summary, rec: RunRecorder): string {
  const charts = counterCharts(rec);
  const owners = rec.ledgers.map((l) => l.vgpu);
  const data = JSON.stringify({ charts }).replace(/</g, "\\u003c");
  const js = readAsset("uplot/dist/uPlot.iife.min.js").replace(/<\/script/gi, "<\\/script");
  const css = readAsset("uplot/dist/uPlot.min.css");
  const rows = summary.rows
    .map((r) => `<tr class="${r.kind}">${summaryCells(r).map((c, i) => (i === 0 ? `<th>${esc(c.trim())}</th>` : `<td>${esc(c)}</td>`)).join("")}</tr>`)
    .join("\n");
  const list = (title: string, items: readonly string[]): string => (items.length === 0 ? "" : `<h2>${esc(title)}</h2><ul>${items.map((i) => `<li>${esc(i)}</li>`).join("")}</ul>`);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vgpu-iommu: ${esc(summary.scenario)} on ${esc(summary.stack)}</title>
<style>${css}</style>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; } th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; } th { text-align: left; }
tr.vm th { font-weight: 600; } tr.vgpu th { padding-left: 24px; font-weight: normal; } tr.host th { font-style: italic; }
.result-ok, .result-skipped { color: #2a7; } .result-bug, .result-violation, .result-error { color: #c22; }
.chart { margin: 16px 0; } .legend { margin: 4px 0 16px; }
</style>
</head>
<body>
<h1>vgpu-iommu: ${esc(summary.scenario)}</h1>
<p>Stack <b>${esc(summary.stack)}</b>: ${esc(summary.hypervisor)} with ${esc(summary.vendors.join(", "))}, seed ${summary.seed}.
Parameters <code>${esc(JSON.stringify(summary.params))}</code>. Result: <b class="result-${summary.result}">${esc(summary.result)}${summary.skipped === null ? "" : `: ${esc(summary.skipped)}`}</b>.
Time is in model steps (${summary.modelTime} in all).</p>
<h2>Over the run</h2>
${charts.map((c) => `<div class="chart" id="chart-${c.id}"></div><p class="caption" id="caption-${c.id}"></p>`).join("\n")}
<h2>Device address space</h2>
${iovaMap(rec.snapshot, owners)}
<h2>Summary</h2>
<table>
<tr>${SUMMARY_COLUMNS.map((c) => `<th>${esc(c.replace("-\n", "").replace("\n", " "))}</th>`).join("")}</tr>
${rows}
</table>
<p>locked_vm and its limit are in 4 KiB pages; "pinned at end" and "maps live at end" are after every VM shut down.</p>
<h2>Phases</h2>
<ul>${summary.phases.map((p) => `<li>${esc(p.status)}: ${esc(p.name)}${p.detail === null ? "" : `: ${esc(p.detail)}`}</li>`).join("")}</ul>
${list("Notes", summary.notes)}
${list("WARNs", summary.warnings)}
${list("BUGs", summary.bugs)}
${list("Invariant violations", summary.violations)}
${list("Errors", summary.errors)}
<script type="application/json" id="report-data">${data}</script>
<script>${js}</script>
<script>${DRAW}</script>
</body>
</html>
`;
}
