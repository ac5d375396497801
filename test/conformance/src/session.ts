/**
 * One check's world: a fresh target, the recording vendor, the VMs the check
 * made, and the host counters it compares before and after.
 *
 * Model: VMs get 64 MiB of RAM and a balloon of 4 blocks of 2 MiB unless the
 * target overrides them; "low" frames are taken from 1 MiB up, "balloon"
 * frames are spread over one balloon block. A snapshot reads the platform's
 * host (pinned frames, type1 external pins, WARNs, crash), every VM's
 * translate API (live translations) and VMM (locked_vm), plus the target's
 * own counters.
 */
import type { Disposable, PlatformVm, VmSpec } from "@vgpu-iommu/core";
import type { CheckId, ConformanceTarget } from "./conformance-target.js";
import { RecordingVendor, type Subject } from "./recording-vendor.js";

const MiB = 1n << 20n;
export const DEFAULT_VM: Omit<VmSpec, "name"> = { ramBytes: 64n * MiB, balloon: { bytes: 8n * MiB, blockBytes: 2n * MiB } };
const LOW_FIRST_GFN = 0x100;

let serial = 0;

export type Snapshot = Readonly<Record<string, number>>;

export class Session {
  readonly vendor: RecordingVendor;
  readonly vms: PlatformVm[] = [];
  readonly #subscriptions: Disposable[] = [];

  constructor(
    readonly target: ConformanceTarget,
    readonly check: CheckId,
  ) {
    this.vendor = new RecordingVendor(target.vendor);
  }

  get spec(): Omit<VmSpec, "name"> {
    return { ...DEFAULT_VM, ...this.target.vmSpec };
  }

  async createVm(): Promise<PlatformVm> {
    const vm = await this.target.platform.createVm({ name: `conf-${this.check}-${++serial}`, ...this.spec });
    this.vms.push(vm);
    this.#subscriptions.push(vm.translate.on("revoked", (e) => this.vendor.subjects.get(e.vdev)?.ledger.markRevoked(e.handles)));
    return vm;
  }

  async addVgpu(vm: PlatformVm): Promise<Subject> {
    const wrapper = await vm.addVgpu(this.vendor, this.target.type, `conf-vgpu-${++serial}`);
    return this.vendor.subject(wrapper);
  }

  async exercise(subject: Subject, vm: PlatformVm, gfns: readonly number[]): Promise<void> {
    await this.target.exercise(subject.real, vm, gfns);
  }

  /** `n` frames from 1 MiB + `offset` pages. */
  lowFrames(n: number, offset = 0): number[] {
    return Array.from({ length: n }, (_, i) => LOW_FIRST_GFN + offset + i);
  }

  /** The frames of balloon block `block`: [first, end). */
  balloonBlock(vm: PlatformVm, block: number): [number, number] {
    if (vm.balloonBase === undefined) throw new Error("conformance: the VM has no balloon; keep `balloon` in the target's vmSpec");
    const pages = Number(this.spec.balloon!.blockBytes >> 12n);
    const first = Number(vm.balloonBase >> 12n) + block * pages;
    return [first, first + pages];
  }

  /** `n` frames spread over balloon block `block`. */
  balloonFrames(vm: PlatformVm, block: number, n: number): number[] {
    const [first, end] = this.balloonBlock(vm, block);
    const step = Math.max(1, Math.floor((end - first) / n));
    return Array.from({ length: n }, (_, i) => first + i * step);
  }

  /** The guest's RAM as the kit lays it out, as [first gfn, end) ranges: low RAM from 0, then the balloon. */
  guestRanges(vm: PlatformVm): [number, number][] {
    const ranges: [number, number][] = [[0, Number(this.spec.ramBytes >> 12n)]];
    if (vm.balloonBase !== undefined && this.spec.balloon !== undefined) {
      const first = Number(vm.balloonBase >> 12n);
      ranges.push([first, first + Number(this.spec.balloon.bytes >> 12n)]);
    }
    return ranges;
  }

  snapshot(): Snapshot {
    const s = this.target.platform.host.stats();
    let liveTranslations = 0;
    let lockedVm = 0;
    for (const vm of this.vms) {
      liveTranslations += vm.translate.liveCount();
      lockedVm += vm.vmm.mm.lockedVm;
    }
    return { pinnedFrames: s.pinnedFrames, externalPins: s.externalPins, warnings: s.warnings, crashed: s.crashed ? 1 : 0, liveTranslations, lockedVm, ...this.target.counters?.() };
  }

  /** Violations for every counter of `now` that differs from `base`. */
  compare(base: Snapshot, now: Snapshot, what: string, violations: string[]): void {
    for (const key of Object.keys(now)) if (now[key] !== base[key]) violations.push(`${what}: ${key} is ${now[key]}, was ${base[key]}`);
    if (now["crashed"] === 1) violations.push(`the host crashed: ${this.crashReason()}`);
  }

  crashReason(): string {
    const bug = this.target.platform.host.kernel.bug;
    return bug === undefined ? "no" : `BUG at ${bug.site}: ${bug.message}`;
  }

  async dispose(): Promise<void> {
    for (const s of this.#subscriptions) s.dispose();
    for (const vm of this.vms) {
      try {
        await vm.shutdown();
      } catch {
        // A check that crashed the host or leaked leaves a VM that cannot shut down cleanly.
      }
    }
    try {
      await this.target.dispose?.();
    } catch {
      // Same.
    }
  }
}
