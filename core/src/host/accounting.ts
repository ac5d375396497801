/**
 * Locked-memory accounting: `__account_locked_vm` and type1's `mm_lock_acct`.
 *
 * Model: the charge lands on `mm.lockedVm`; the limit is the RLIMIT_MEMLOCK of
 * `task`, and `bypass` (CAP_IPC_LOCK snapshotted by the caller) skips the
 * check but still counts the pages. Uncharging more than is charged WARNs once.
 * Taking the mmap lock is killable and can fail with -EINTR.
 */
import { inject, injectable } from "tsyringe";
import { FaultInjector } from "./fault-injector.js";
import { KernelLog } from "./kernel-log.js";
import type { Mm } from "./mm.js";
import type { Process } from "./process.js";
import { ERRNO } from "../errors/errno.js";

@injectable()
export class Accounting {
  constructor(
    @inject(KernelLog) private readonly log: KernelLog,
    @inject(FaultInjector) private readonly faults: FaultInjector,
  ) {}

  /** `__account_locked_vm(mm, pages, inc, task, bypass_rlim)`: 0 or -ENOMEM. */
  accountLockedVm(mm: Mm, pages: number, inc: boolean, task: Process, bypass: boolean): number {
    const lockedVm = mm.lockedVm + mm.baselineLockedVm;
    if (inc) {
      if (!bypass && lockedVm + pages > task.memlockLimitPages) return -ERRNO.ENOMEM;
      mm.lockedVm += pages;
    } else {
      if (pages > mm.lockedVm) this.log.warnOnce(true, "__account_locked_vm", "uncharging more than is locked", { pages, lockedVm: mm.lockedVm });
      mm.lockedVm -= pages;
    }
    return 0;
  }

  /**
   * `mm_lock_acct(task, mm, lock_cap, npage)`: signed npage; 0, -EINTR or -ENOMEM.
   * The killable lock fails only with a fatal signal pending. Callers that
   * uncharge ignore that failure in the kernel, where the pages then stay on an
   * mm that is about to die with its task; the model's tasks do not die of the
   * injected signal, so only a charge can be interrupted.
   */
  mmLockAcct(task: Process, mm: Mm, lockCap: boolean, npage: number): number {
    if (npage > 0 && this.faults.shouldFail("mmap_lock")) return -ERRNO.EINTR;
    return this.accountLockedVm(mm, Math.abs(npage), npage > 0, task, lockCap);
  }
}
