/**
 * The run's summary: one row per VM and per vGPU, and one for the host, with
 * what was pinned, charged, mapped, invalidated and violated; the phases and
 * the notes; and the result. The same stack file and seed give the same
 * summary, byte for byte: it holds model quantities only.
 */
import Table from "cli-table3";
import type { RunOutcome } from "./scenario-runner.js";
import type { Stack } from "./stack-loader.js";
import { humanSize } from "./sizes.js";

export type RunResult = "ok" | "skipped" | "bug" | "violation" | "error";

export interface SummaryRow {
  readonly kind: "vm" | "vgpu" | "host";
  readonly name: string;
  readonly vm: string | null;
  readonly vendor: string | null;
  readonly type: string | null;
  /** Pages pinned over the run (a vGPU's pin calls; for a VM, its vGPUs'). */
  readonly pagesPinned: number;
  readonly peakPinned: number;
  /** Still pinned at the end, after shutdown. The host row's peak and end count host frames with a pin. */
  readonly pinnedAtEnd: number;
  readonly pinsRefused: number;
  /** locked_vm charged to the VM's VMM process, in pages. */
  readonly lockedVmPeak: number | null;
  readonly lockedVmAtEnd: number | null;
  /** RLIMIT_MEMLOCK in pages at the end (a scenario may have lowered it); null when unlimited or not a VM. */
  readonly memlockLimit: number | null;
  readonly mappingsMade: number;
  readonly mappingsLive: number;
  /** Device address space held at the peak, in bytes. */
  readonly iovaBytesPeak: number;
  readonly invalidations: number;
  readonly warnings: number;
  readonly bugs: number;
  readonly violations: number;
}

export interface Summary {
  readonly stack: string;
  readonly scenario: string;
  readonly params: Readonly<Record<string, unknown>>;
  readonly seed: number;
  readonly hypervisor: string;
  readonly vendors: readonly string[];
  readonly result: RunResult;
  readonly skipped: string | null;
  readonly rows: readonly SummaryRow[];
  readonly phases: readonly { readonly name: string; readonly status: string; readonly detail: string | null }[];
  readonly notes: readonly string[];
  readonly warnings: readonly string[];
  readonly bugs: readonly string[];
  readonly violations: readonly string[];
  readonly errors: readonly string[];
  /** Model steps the run took. */
  readonly modelTime: number;
}

export function buildSummary(stack: Stack, scenario: string, params: Readonly<Record<string, unknown>>, outcome: RunOutcome): Summary {
  const rec = outcome.recorder;
  const count = (list: readonly { row: string }[], row: string): number => list.filter((f) => f.row === row).length;
  const rows: SummaryRow[] = [];
  for (const vm of rec.vms) {
    const ledgers = rec.ledgers.filter((l) => l.vm === vm.name);
    const vgpuRows: SummaryRow[] = ledgers.map((l) => ({
      kind: "vgpu",
      name: l.vgpu,
      vm: vm.name,
      vendor: l.vendor,
      type: l.type,
      pagesPinned: l.pinnedTotal,
      peakPinned: l.peakPages,
      pinnedAtEnd: l.livePages,
      pinsRefused: l.failedPins,
      lockedVmPeak: null,
      lockedVmAtEnd: null,
      memlockLimit: null,
      mappingsMade: l.mappingsMade,
      mappingsLive: l.mappingsLive,
      iovaBytesPeak: l.iovaBytesPeak,
      invalidations: l.invalidations,
      warnings: count(rec.warnings, l.vgpu),
      bugs: count(rec.bugs, l.vgpu),
      violations: count(rec.violations, l.vgpu),
    }));
    const sum = (f: (r: SummaryRow) => number): number => vgpuRows.reduce((a, r) => a + f(r), 0);
    rows.push({
      kind: "vm",
      name: vm.name,
      vm: null,
      vendor: null,
      type: null,
      pagesPinned: sum((r) => r.pagesPinned),
      peakPinned: vm.peakLockedVm,
      pinnedAtEnd: sum((r) => r.pinnedAtEnd),
      pinsRefused: sum((r) => r.pinsRefused),
      lockedVmPeak: vm.peakLockedVm,
      lockedVmAtEnd: vm.lastLockedVm,
      memlockLimit: vm.limit() ?? null,
      mappingsMade: sum((r) => r.mappingsMade),
      mappingsLive: sum((r) => r.mappingsLive),
      iovaBytesPeak: sum((r) => r.iovaBytesPeak),
      invalidations: sum((r) => r.invalidations),
      warnings: count(rec.warnings, vm.name),
      bugs: count(rec.bugs, vm.name),
      violations: count(rec.violations, vm.name),
    });
    rows.push(...vgpuRows);
  }
  rows.push({
    kind: "host",
    name: "host",
    vm: null,
    vendor: null,
    type: null,
    pagesPinned: rec.ledgers.reduce((a, l) => a + l.pinnedTotal, 0),
    peakPinned: rec.hostPinsPeak,
    pinnedAtEnd: rec.hostPins,
    pinsRefused: rec.ledgers.reduce((a, l) => a + l.failedPins, 0),
    lockedVmPeak: null,
    lockedVmAtEnd: null,
    memlockLimit: null,
    mappingsMade: rec.ledgers.reduce((a, l) => a + l.mappingsMade, 0),
    mappingsLive: rec.ledgers.reduce((a, l) => a + l.mappingsLive, 0),
    iovaBytesPeak: rec.ledgers.reduce((a, l) => a + l.iovaBytesPeak, 0),
    invalidations: rec.ledgers.reduce((a, l) => a + l.invalidations, 0),
    warnings: rec.warnings.length,
    bugs: rec.bugs.length,
    violations: rec.violations.length,
  });
  const result: RunResult =
    rec.bugs.length > 0 || outcome.crashed ? "bug" : rec.violations.length > 0 ? "violation" : rec.errors.length > 0 ? "error" : outcome.skipped !== undefined ? "skipped" : "ok";
  return {
    stack: stack.name,
    scenario,
    params,
    seed: stack.seed,
    hypervisor: stack.hypervisor.package,
    vendors: stack.vendors.map((v) => v.package),
    result,
    skipped: outcome.skipped ?? null,
    rows,
    phases: rec.phases.map((p) => ({ name: p.name, status: p.status, detail: p.detail ?? null })),
    notes: rec.notes,
    warnings: rec.warnings.map((w) => `${w.row}: ${w.what}`),
    bugs: rec.bugs.map((w) => `${w.row}: ${w.what}`),
    violations: rec.violations.map((w) => `${w.row}: ${w.what}`),
    errors: rec.errors.map((w) => `${w.row}: ${w.what}`),
    modelTime: rec.now,
  };
}

/** Non-zero on a BUG, an invariant violation or a failed phase. */
export const exitStatusOf = (s: Summary): number => (s.result === "ok" || s.result === "skipped" ? 0 : 1);

/** The summary as JSON: stable key order, two-space indent, newline-terminated. */
export const summaryJson = (s: Summary): string => `${JSON.stringify(s, null, 2)}\n`;

const n = (v: number): string => v.toLocaleString("en-US");

/** Column heads; a newline splits a head over two lines in the terminal. */
export const SUMMARY_COLUMNS = [
  "",
  "pages\npinned",
  "peak\npinned",
  "pinned\nat end",
  "pins\nrefused",
  "locked_vm peak\n/ limit",
  "DMA maps\nmade",
  "maps live\nat end",
  "IOVA space\n(peak)",
  "invali-\ndations",
  "WARNs",
  "BUGs",
  "viola-\ntions",
] as const;

/** One table row per summary row, as strings; VM rows show locked_vm against the limit. */
export function summaryCells(r: SummaryRow): string[] {
  const locked = r.kind === "vm" ? `${n(r.lockedVmPeak ?? 0)} / ${r.memlockLimit === null ? "unlimited" : n(r.memlockLimit)}` : "";
  return [
    r.kind === "vgpu" ? `  ${r.name} (${r.type ?? ""})` : r.name,
    n(r.pagesPinned),
    r.kind === "vm" ? "" : n(r.peakPinned),
    n(r.pinnedAtEnd),
    n(r.pinsRefused),
    locked,
    n(r.mappingsMade),
    n(r.mappingsLive),
    humanSize(r.iovaBytesPeak),
    n(r.invalidations),
    n(r.warnings),
    n(r.bugs),
    n(r.violations),
  ];
}

export function renderSummary(s: Summary): string {
  const out: string[] = [];
  out.push(`stack ${s.stack}: ${s.hypervisor} with ${s.vendors.join(", ")}, seed ${s.seed}`);
  out.push(`scenario ${s.scenario} ${JSON.stringify(s.params)}`);
  out.push("");
  for (const p of s.phases) out.push(`  ${p.status === "ok" ? "ok     " : p.status.padEnd(7)} ${p.name}${p.detail === null ? "" : `: ${p.detail}`}`);
  if (s.notes.length > 0) {
    out.push("");
    for (const note of s.notes) out.push(`  - ${note}`);
  }
  const table = new Table({ head: [...SUMMARY_COLUMNS], style: { head: [], border: [] } });
  for (const r of s.rows) table.push(summaryCells(r));
  out.push("", table.toString(), "");
  out.push("locked_vm and its limit are in 4 KiB pages; pinned at end and maps live at end are after every VM shut down.");
  for (const [label, list] of [
    ["WARN", s.warnings],
    ["BUG", s.bugs],
    ["violation", s.violations],
    ["error", s.errors],
  ] as const) {
    for (const line of list) out.push(`${label}: ${line}`);
  }
  const verdict: Record<string, string> = {
    ok: "result: ok",
    skipped: `result: skipped: ${s.skipped ?? ""}`,
    bug: "result: BUG: the simulated host crashed",
    violation: "result: invariant violated",
    error: "result: the scenario failed",
  };
  out.push(verdict[s.result]!);
  return `${out.join("\n")}\n`;
}
