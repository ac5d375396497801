/**
 * The run's trace in the Chrome Trace Event format (the JSON object form),
 * which Perfetto and chrome://tracing open. Timestamps are model steps shown
 * as microseconds: the order things happened in, not how long they took.
 */
import type { Summary } from "./summary.js";
import type { RunRecorder, TraceEvent } from "./run-recorder.js";

export interface TraceFile {
  readonly traceEvents: readonly TraceEvent[];
  readonly displayTimeUnit: "ms" | "ns";
  readonly otherData: Readonly<Record<string, unknown>>;
}

export function buildTrace(rec: RunRecorder, summary: Summary): TraceFile {
  const process: TraceEvent = { name: "process_name", cat: "__metadata", ph: "M", ts: 0, pid: 1, tid: 0, args: { name: `vgpu-iommu ${summary.scenario} on ${summary.stack}` } };
  return {
    traceEvents: [process, ...rec.events],
    displayTimeUnit: "ms",
    otherData: {
      generator: "vgpu-iommu",
      stack: summary.stack,
      scenario: summary.scenario,
      seed: summary.seed,
      result: summary.result,
      timeUnit: "one microsecond per model step",
      droppedEvents: rec.droppedEvents,
    },
  };
}

/** One event per line, so a large trace stays diffable and streams out without one huge string. */
export function traceJson(trace: TraceFile): string {
  const lines = trace.traceEvents.map((e) => JSON.stringify(e));
  return `{"displayTimeUnit":${JSON.stringify(trace.displayTimeUnit)},"otherData":${JSON.stringify(trace.otherData)},"traceEvents":[\n${lines.join(",\n")}\n]}\n`;
}
