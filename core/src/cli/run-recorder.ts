/**
 * The run's recorder: a model clock, the trace events, the counters, and the
 * findings (WARNs, BUGs, violations, notes) the summary and the report are
 * built from.
 *
 * Model time is a step counter: every recorded event advances it by one, so a
 * trace's timestamps (in microseconds, as the Chrome Trace Event format wants)
 * are the order in which things happened, identical from run to run. Nothing
 * here reads a wall clock.
 *
 * Tracks: one thread track per component (the scenario, the kernel log, each
 * type1 container, each VM's translate API, each vGPU), async tracks for the
 * pins and device mappings of each vGPU (spans from pin to unpin), and counter
 * tracks for pinned pages and each VM's locked_vm against its limit. A counter
 * is emitted only when one of its values changed.
 *
 * Invariants: timestamps strictly increase in record order; every async end
 * has a begin with the same id earlier in the trace.
 */
import type { PinLedger } from "./pin-ledger.js";

export type TracePhase = "X" | "b" | "e" | "i" | "C" | "M";

export interface TraceEvent {
  readonly name: string;
  readonly cat: string;
  readonly ph: TracePhase;
  readonly ts: number;
  readonly pid: number;
  readonly tid: number;
  readonly dur?: number;
  readonly id?: string;
  readonly s?: "g" | "p" | "t";
  readonly args?: Readonly<Record<string, unknown>>;
}

export interface VmRecord {
  readonly name: string;
  readonly process: string;
  /** Reads the VMM's locked_vm (pages). */
  readonly lockedVm: () => number;
  /** RLIMIT_MEMLOCK in pages, or undefined when unlimited. */
  readonly limit: () => number | undefined;
  /** The VMM has CAP_IPC_LOCK: locked_vm may pass the limit. */
  readonly capIpcLock: () => boolean;
  peakLockedVm: number;
  lastLockedVm: number;
}

export interface Finding {
  /** The summary row it belongs to: a vGPU or VM name, or "host". */
  readonly row: string;
  readonly what: string;
}

export interface PhaseRecord {
  readonly name: string;
  readonly start: number;
  readonly end: number;
  readonly status: "ok" | "skipped" | "failed" | "crashed";
  readonly detail?: string;
}

export interface IovaSnapshot {
  readonly label: string;
  readonly at: number;
  readonly segments: readonly { readonly device: string; readonly owner: string; readonly addr: bigint; readonly length: number }[];
}

const PID = 1;
export const MAX_TRACE_EVENTS = 2_000_000;

export class RunRecorder {
  readonly events: TraceEvent[] = [];
  readonly ledgers: PinLedger[] = [];
  readonly vms: VmRecord[] = [];
  readonly warnings: Finding[] = [];
  readonly bugs: Finding[] = [];
  readonly violations: Finding[] = [];
  readonly errors: Finding[] = [];
  readonly notes: string[] = [];
  readonly phases: PhaseRecord[] = [];
  snapshot: IovaSnapshot | undefined;
  droppedEvents = 0;
  /** Host frames with a pin: at the last sample, and the most at any sample. */
  hostPins = 0;
  hostPinsPeak = 0;
  #clock = 0;
  readonly #tids = new Map<string, number>();
  readonly #counters = new Map<string, string>();
  #hostPins: () => number = () => 0;

  /** The current model time. */
  get now(): number {
    return this.#clock;
  }

  tick(): number {
    return ++this.#clock;
  }

  /** The thread track of a component, created (with its name) on first use. */
  track(component: string): number {
    let tid = this.#tids.get(component);
    if (tid === undefined) {
      tid = this.#tids.size + 1;
      this.#tids.set(component, tid);
      this.#push({ name: "thread_name", cat: "__metadata", ph: "M", ts: 0, pid: PID, tid, args: { name: component } });
      this.#push({ name: "thread_sort_index", cat: "__metadata", ph: "M", ts: 0, pid: PID, tid, args: { sort_index: tid } });
    }
    return tid;
  }

  instant(component: string, name: string, cat: string, args?: Record<string, unknown>): void {
    const tid = this.track(component);
    this.#push({ name, cat, ph: "i", s: "t", ts: this.tick(), pid: PID, tid, ...(args === undefined ? {} : { args }) });
  }

  /** A span whose start was taken with `tick()` earlier and which ends now. */
  complete(component: string, name: string, cat: string, start: number, args?: Record<string, unknown>): void {
    const tid = this.track(component);
    const end = this.tick();
    this.#push({ name, cat, ph: "X", ts: start, dur: end - start, pid: PID, tid, ...(args === undefined ? {} : { args }) });
  }

  beginAsync(component: string, name: string, cat: string, id: string, args?: Record<string, unknown>): void {
    this.#push({ name, cat, ph: "b", id, ts: this.tick(), pid: PID, tid: this.track(component), ...(args === undefined ? {} : { args }) });
  }

  endAsync(component: string, name: string, cat: string, id: string, args?: Record<string, unknown>): void {
    this.#push({ name, cat, ph: "e", id, ts: this.tick(), pid: PID, tid: this.track(component), ...(args === undefined ? {} : { args }) });
  }

  addLedger(ledger: PinLedger): void {
    this.ledgers.push(ledger);
  }

  ledger(vgpu: string): PinLedger | undefined {
    return this.ledgers.find((l) => l.vgpu === vgpu);
  }

  addVm(vm: VmRecord): void {
    this.vms.push(vm);
  }

  setHostPins(read: () => number): void {
    this.#hostPins = read;
  }

  note(text: string): void {
    this.notes.push(text);
    this.instant("scenario", text, "note");
  }

  warn(row: string, what: string): void {
    this.warnings.push({ row, what });
  }

  bug(row: string, what: string): void {
    this.bugs.push({ row, what });
  }

  violation(row: string, what: string): void {
    this.violations.push({ row, what });
    this.instant("scenario", `violation: ${what}`, "violation", { row });
  }

  error(row: string, what: string): void {
    this.errors.push({ row, what });
  }

  /** Reads every counter and emits the ones that changed; tracks peaks. */
  sample(): void {
    if (this.ledgers.length > 0) {
      const args: Record<string, number> = {};
      for (const l of this.ledgers) args[l.vgpu] = l.livePages;
      this.hostPins = this.#hostPins();
      if (this.hostPins > this.hostPinsPeak) this.hostPinsPeak = this.hostPins;
      args["host frames pinned"] = this.hostPins;
      this.#counter("pinned pages", args);
      const iova: Record<string, number> = {};
      for (const l of this.ledgers) iova[l.vgpu] = l.iovaBytesLive;
      this.#counter("device address space (bytes)", iova);
    }
    for (const vm of this.vms) {
      const locked = vm.lockedVm();
      vm.lastLockedVm = locked;
      if (locked > vm.peakLockedVm) vm.peakLockedVm = locked;
      const limit = vm.limit();
      this.#counter(`locked_vm ${vm.name}`, limit === undefined ? { locked_vm: locked } : { locked_vm: locked, limit });
    }
  }

  #counter(name: string, args: Record<string, number>): void {
    const key = JSON.stringify(args);
    if (this.#counters.get(name) === key) return;
    this.#counters.set(name, key);
    this.#push({ name, cat: "counter", ph: "C", ts: this.tick(), pid: PID, tid: 0, args });
  }

  #push(e: TraceEvent): void {
    if (this.events.length >= MAX_TRACE_EVENTS && e.ph !== "M" && e.ph !== "C") {
      this.droppedEvents++;
      return;
    }
    this.events.push(e);
  }
}
