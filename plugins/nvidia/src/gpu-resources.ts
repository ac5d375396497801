/**
 * The GPU-side resources of vGPUs and the RFC's creation sequence
 * (vendors.md 2.3):
 *
 *   1. register the vGPU (a VF in VF mode: gfid = VF id + 1),
 *   2. channels: a contiguous first-fit range of prev_pow2(pool / max_instance)
 *      IDs, -ENOSPC when none; its first channel is the plugin's,
 *   3. FB: a contiguous first-fit run of VMMU segments (partition.ts), -ENOMEM,
 *   4. the management heap (host<->GSP buffers) mapped into BAR1,
 *   5. the per-vGPU GSP RM client, 6. the GSP "bootload", 7. the RPC channel.
 *
 * Each step unwinds the earlier ones when a later one fails; destroy scrubs the
 * guest FB with copy-engine work (counted in bytes) and frees in reverse order.
 * Only homogeneous vGPUs are supported: while any vGPU exists, other types
 * have no instances (-EBUSY on create).
 *
 * Invariants: `fb.used`, `chids.used`, `vfs.used` and the step counters equal
 * the sum over live allocations; after the last release every one is zero.
 */
import { KernelError, type ErrnoName } from "@vgpu-iommu/core";
import { BitmapAllocator } from "./bitmap-allocator.js";
import { channelCountFor, fbSizeFor } from "./partition.js";
import type { NvidiaGpuProfile, NvidiaVgpuTypeSpec } from "./gpu-profile.js";

export type CreateStep = "register" | "channels" | "fb" | "mgmt-heap" | "gsp-client" | "bootload" | "rpc-channel";
export const CREATE_STEPS: readonly CreateStep[] = ["register", "channels", "fb", "mgmt-heap", "gsp-client", "bootload", "rpc-channel"];

/** Fails a creation step on purpose (tests, fault sweeps). */
export interface CreateFaults {
  shouldFail(step: CreateStep): boolean;
}

/** Observes each step done or undone, in order (tests check unwinding and the reverse-order free). */
export type ResourceTrace = (op: "alloc" | "free" | "scrub", step: CreateStep) => void;

/** The errno each step fails with when its resource is unavailable. */
const STEP_ERRNO: Readonly<Record<CreateStep, ErrnoName>> = {
  register: "ENOSPC",
  channels: "ENOSPC",
  fb: "ENOMEM",
  "mgmt-heap": "ENOMEM",
  "gsp-client": "EIO",
  bootload: "EIO",
  "rpc-channel": "EIO",
};

export interface VgpuAllocation {
  readonly type: NvidiaVgpuTypeSpec;
  /** VF index in VF mode, -1 for an mdev vGPU. */
  readonly vfId: number;
  /** GSP function ID: VF id + 1, or 0 for an mdev vGPU (the PF's). */
  readonly gfid: number;
  readonly chidStart: number;
  readonly chidCount: number;
  /** The channel reserved for the vGPU manager plugin. */
  readonly pluginChid: number;
  /** FB offset and size, in bytes; both multiples of the VMMU segment. */
  readonly fbOffset: number;
  readonly fbSize: number;
}

export interface GpuResourceCounters {
  readonly fbSegmentsUsed: number;
  readonly chidsUsed: number;
  readonly vfsUsed: number;
  readonly mgmtHeaps: number;
  readonly gspClients: number;
  readonly booted: number;
  readonly rpcChannels: number;
  readonly scrubbedBytes: number;
}

export class GpuResources {
  readonly fb: BitmapAllocator;
  readonly chids: BitmapAllocator;
  readonly vfs: BitmapAllocator;
  readonly #live = new Map<string, number>();
  #mgmtHeaps = 0;
  #gspClients = 0;
  #booted = 0;
  #rpcChannels = 0;
  #scrubbedBytes = 0;

  constructor(
    readonly profile: NvidiaGpuProfile,
    readonly vfMode: boolean,
    private readonly faults?: CreateFaults,
    private readonly trace?: ResourceTrace,
  ) {
    this.fb = new BitmapAllocator(Math.floor(profile.totalFb / profile.vmmuSegment));
    this.chids = new BitmapAllocator(profile.totalAvailChids);
    this.vfs = new BitmapAllocator(profile.totalVfs);
  }

  get counters(): GpuResourceCounters {
    return {
      fbSegmentsUsed: this.fb.used,
      chidsUsed: this.chids.used,
      vfsUsed: this.vfs.used,
      mgmtHeaps: this.#mgmtHeaps,
      gspClients: this.#gspClients,
      booted: this.#booted,
      rpcChannels: this.#rpcChannels,
      scrubbedBytes: this.#scrubbedBytes,
    };
  }

  /** Live instances of a type. */
  instances(type: string): number {
    return this.#live.get(type) ?? 0;
  }

  /** Instances of `type` creation could still make, from max_instance, FB segments, channels and VFs. */
  availableInstances(type: NvidiaVgpuTypeSpec): number {
    if (this.profile.eccEnabled && !type.eccSupported) return 0;
    if (this.#otherTypeLive(type.name)) return 0;
    let n = type.maxInstance - this.instances(type.name);
    if (n <= 0) return 0;
    n = this.chids.fits(channelCountFor(this.profile, type), n);
    let fbSize: number;
    try {
      fbSize = fbSizeFor(this.profile, type);
    } catch {
      return 0;
    }
    n = this.fb.fits(fbSize / this.profile.vmmuSegment, n);
    if (this.vfMode) n = this.vfs.fits(1, n);
    return n;
  }

  /** Runs the creation sequence; on failure, unwinds what it did and throws the step's KernelError. */
  allocate(type: NvidiaVgpuTypeSpec): VgpuAllocation {
    if (this.#otherTypeLive(type.name)) throw new KernelError("EBUSY", "vgpu-type-mix", { type: type.name });
    if (this.instances(type.name) >= type.maxInstance) throw new KernelError("ENOSPC", "max-instances", { type: type.name, maxInstance: type.maxInstance });
    const fbSize = fbSizeFor(this.profile, type);
    const chidCount = channelCountFor(this.profile, type);
    const undo: (() => void)[] = [];
    const unwind = (): void => {
      for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
    };
    /** Completes a step (recording how to undo it), or unwinds everything done and throws. */
    const step = (name: CreateStep, ok: boolean, undoStep: () => void, fields: Record<string, unknown> = {}): void => {
      if (ok && this.faults?.shouldFail(name) !== true) {
        this.trace?.("alloc", name);
        undo.push(() => {
          undoStep();
          this.trace?.("free", name);
        });
        return;
      }
      if (ok) undoStep();
      unwind();
      throw new KernelError(STEP_ERRNO[name], `${name}-failed`, { type: type.name, ...fields });
    };
    const vfId = this.vfMode ? this.vfs.alloc(1) : -1;
    step("register", !this.vfMode || vfId >= 0, () => {
      if (vfId >= 0) this.vfs.free(vfId, 1);
    }, { totalVfs: this.profile.totalVfs });
    const chid = this.chids.alloc(chidCount);
    step("channels", chid >= 0, () => this.chids.free(chid, chidCount), { chidCount, free: this.profile.totalAvailChids - this.chids.used });
    const segs = fbSize / this.profile.vmmuSegment;
    const seg = this.fb.alloc(segs);
    step("fb", seg >= 0, () => this.fb.free(seg, segs), { fbSize, freeSegments: this.fb.total - this.fb.used });
    this.#mgmtHeaps++;
    step("mgmt-heap", true, () => this.#mgmtHeaps--);
    this.#gspClients++;
    step("gsp-client", true, () => this.#gspClients--);
    this.#booted++;
    step("bootload", true, () => this.#booted--);
    this.#rpcChannels++;
    step("rpc-channel", true, () => this.#rpcChannels--);
    this.#live.set(type.name, this.instances(type.name) + 1);
    const chidStart = this.profile.chidBase + chid;
    return { type, vfId, gfid: vfId + 1, chidStart, chidCount, pluginChid: chidStart, fbOffset: seg * this.profile.vmmuSegment, fbSize };
  }

  /** Destroy: scrubs the guest FB, then frees in the reverse order of creation. Returns the bytes scrubbed. */
  release(a: VgpuAllocation): number {
    this.#scrubbedBytes += a.fbSize;
    this.trace?.("scrub", "fb");
    this.#rpcChannels--;
    this.trace?.("free", "rpc-channel");
    this.#booted--;
    this.trace?.("free", "bootload");
    this.#gspClients--;
    this.trace?.("free", "gsp-client");
    this.#mgmtHeaps--;
    this.trace?.("free", "mgmt-heap");
    this.fb.free(a.fbOffset / this.profile.vmmuSegment, a.fbSize / this.profile.vmmuSegment);
    this.trace?.("free", "fb");
    this.chids.free(a.chidStart - this.profile.chidBase, a.chidCount);
    this.trace?.("free", "channels");
    if (a.vfId >= 0) this.vfs.free(a.vfId, 1);
    this.trace?.("free", "register");
    const left = this.instances(a.type.name) - 1;
    if (left === 0) this.#live.delete(a.type.name);
    else this.#live.set(a.type.name, left);
    return a.fbSize;
  }

  #otherTypeLive(name: string): boolean {
    for (const t of this.#live.keys()) if (t !== name) return true;
    return false;
  }
}
