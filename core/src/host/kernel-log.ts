/**
 * Kernel failure semantics of the simulated host.
 *
 * - An errno is a typed error thrown to the caller (see errors/).
 * - A WARN is recorded and announced; tests assert the count stays zero.
 * - A BUG_ON puts the host into a crashed state: the BUG is recorded, and every
 *   later entry point fails with HostCrashedError. The Node process never dies.
 */
import { Observable } from "../events/emitter.js";
import { HostCrashedError, type BugRecord } from "../errors/kernel-error.js";

export interface WarnRecord {
  readonly site: string;
  readonly message: string;
  readonly details: Readonly<Record<string, unknown>>;
}

export interface KernelLogEvents {
  warned(warning: WarnRecord): void;
  crashed(bug: BugRecord): void;
  logged(message: string): void;
}

export class KernelLog extends Observable<KernelLogEvents> {
  readonly warnings: WarnRecord[] = [];
  readonly messages: string[] = [];
  #bug: BugRecord | undefined;
  readonly #warnedOnce = new Set<string>();

  get crashed(): boolean {
    return this.#bug !== undefined;
  }

  get bug(): BugRecord | undefined {
    return this.#bug;
  }

  /** `WARN(cond, ...)`: returns the condition, so call sites read like the kernel's. */
  warnOn(condition: boolean, site: string, message: string, details: Record<string, unknown> = {}): boolean {
    if (!condition) return false;
    const warning = { site, message, details };
    this.warnings.push(warning);
    this.emit("warned", warning);
    return true;
  }

  /** `WARN_ONCE`: fires at most once per site for the life of the host. */
  warnOnce(condition: boolean, site: string, message: string, details: Record<string, unknown> = {}): boolean {
    if (!condition) return false;
    if (!this.#warnedOnce.has(site)) {
      this.#warnedOnce.add(site);
      this.warnOn(true, site, message, details);
    }
    return true;
  }

  /** `pr_warn`: a message in the log, not a WARN. */
  prWarn(message: string): void {
    this.messages.push(message);
    this.emit("logged", message);
  }

  /** `BUG_ON(cond)`: crashes the simulated host when the condition holds. */
  bugOn(condition: boolean, site: string, message: string, details: Record<string, unknown> = {}): void {
    if (condition) this.crash({ site, message, details });
  }

  crash(bug: BugRecord): never {
    if (this.#bug === undefined) {
      this.#bug = bug;
      this.emit("crashed", bug);
    }
    throw new HostCrashedError(this.#bug);
  }

  /** Every entry point calls this first: a crashed host answers nothing else. */
  assertAlive(): void {
    if (this.#bug !== undefined) throw new HostCrashedError(this.#bug);
  }
}
