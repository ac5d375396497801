/**
 * The userspace vGPU manager plugin (nvidia-vgpu-mgr) as the shim sees it: a
 * process that answers the events the shim posts for a vGPU (VM start, reboot,
 * shutdown, register accesses), within a timeout (10 s for start, 25 s for
 * reboot and shutdown, 8 s for a register access), and that the shim kills
 * when a shutdown is not answered. The plugin itself is closed source; this
 * model only says how it answered.
 */
import type { ManagerEvent, ManagerResult } from "./events.js";

export interface VgpuManager {
  /** How the plugin answered `event` for `vgpu`. */
  post(vgpu: string, event: ManagerEvent): ManagerResult;
  /** SIGKILL of the plugin serving `vgpu` (close after an unanswered shutdown). */
  kill(vgpu: string): void;
  /** Whether the plugin serving `vgpu` exited within destroy's 5 s wait. */
  exited(vgpu: string): boolean;
}

/** A manager whose answers are set per event; every answer is "ok" until told otherwise. */
export class ScriptedManager implements VgpuManager {
  readonly #results = new Map<ManagerEvent, ManagerResult>();
  readonly posted: Record<ManagerEvent, number> = { VM_START: 0, VM_REBOOT: 0, VM_SHUTDOWN: 0, REGISTER_ACCESS: 0 };
  kills = 0;
  /** When false, destroy finds the plugin still running after 5 s. */
  exits = true;

  answer(event: ManagerEvent, result: ManagerResult): this {
    this.#results.set(event, result);
    return this;
  }

  post(_vgpu: string, event: ManagerEvent): ManagerResult {
    this.posted[event]++;
    return this.#results.get(event) ?? "ok";
  }

  kill(_vgpu: string): void {
    this.kills++;
  }

  exited(_vgpu: string): boolean {
    return this.exits;
  }
}
