/**
 * Bench results: one record per named case, printed as JSON lines or as a
 * table. A target is a bound the value must not exceed; `met` is computed from
 * the measured value, never set by hand.
 */

export interface CaseResult {
  readonly case: string;
  readonly unit: string;
  readonly value: number;
  /** The matching figure of the baseline sketch, measured in the same run. */
  readonly baseline?: number;
  /** Upper bound; absent for baseline cases. */
  readonly target?: number;
  readonly met?: boolean;
  readonly note?: string;
  /** Every repetition, in run order, when the value is their median. */
  readonly runs?: readonly number[];
}

export interface Measured {
  readonly value: number;
  readonly runs?: readonly number[];
  readonly note?: string;
}

export function result(name: string, unit: string, m: Measured, target?: number, baseline?: number): CaseResult {
  return {
    case: name,
    unit,
    value: round(m.value),
    ...(baseline === undefined ? {} : { baseline: round(baseline) }),
    ...(target === undefined ? {} : { target, met: m.value <= target }),
    ...(m.note === undefined ? {} : { note: m.note }),
    ...(m.runs === undefined ? {} : { runs: m.runs.map(round) }),
  };
}

export const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

const round = (v: number): number => (Math.abs(v) >= 100 ? Math.round(v * 10) / 10 : Math.round(v * 1000) / 1000);

export function formatJson(r: CaseResult): string {
  return JSON.stringify(r);
}

/** A fixed-width table, one row per case, notes below it. */
export function formatTable(results: readonly CaseResult[]): string {
  const header = ["case", "value", "unit", "target", "baseline", "met"];
  const rows = results.map((r) => [
    r.case,
    String(r.value),
    r.unit,
    r.target === undefined ? "-" : `<= ${r.target}`,
    r.baseline === undefined ? "-" : String(r.baseline),
    r.met === undefined ? "-" : r.met ? "yes" : "NO",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => (i === 0 || i === 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  const out = [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)];
  const notes = results.filter((r) => r.note !== undefined);
  if (notes.length > 0) out.push("", ...notes.map((r) => `${r.case}: ${r.note}`));
  return out.join("\n");
}
