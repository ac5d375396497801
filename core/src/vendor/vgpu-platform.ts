/**
 * The platform port: how a stack's hypervisor adapter builds VMs and puts vGPUs
 * in them. Scenarios and the vendor conformance kit drive vGPUs through this
 * alone, so the same workload runs on KVM and on Xen.
 *
 * A platform VM owns its VMM process and guest RAM; `addVgpu` creates a vGPU of
 * a vendor's type, gives it its services and opens it as the VMM would (on KVM:
 * an mdev in the VM's VFIO container, opened through the device fd); removing
 * it closes and destroys it. Balloon operations change the guest's memory the
 * way the hypervisor does, including the invalidations they cause. Where the
 * platform logs the guest frames devices dirty (KVM: type1's dirty bitmap on
 * the VM's container), `dirtyLog` gives it as a migration loop reads it.
 */
import { createToken } from "../di/token.js";
import type { Host } from "../host/host.js";
import type { Process } from "../host/process.js";
import type { BackingKind } from "../host/memory-object.js";
import type { HypervisorAdapter } from "../hypervisor/hypervisor-adapter.js";
import type { TranslateApi } from "../translate/translate-api.js";
import type { DirtyReport, Vgpu, VgpuVendor } from "./vgpu-vendor.js";

export interface VmSpec {
  readonly name: string;
  readonly ramBytes: bigint;
  readonly backing?: BackingKind;
  /** RLIMIT_MEMLOCK of the VMM process, in bytes; unlimited when omitted. */
  readonly memlockBytes?: bigint;
  readonly capIpcLock?: boolean;
  /** Balloonable memory, in blocks that come and go whole. */
  readonly balloon?: { readonly bytes: bigint; readonly blockBytes: bigint };
}

/**
 * The VMM's log of guest frames dirtied by device DMA, for live migration. Each
 * read is one pass of the migration loop: it clears what it returns, and the
 * backend sets again what stays dirty (on KVM, every frame still pinned).
 */
export interface DeviceDirtyLog {
  /** Starts logging; frames already pinned are dirty from the start. 0 or a negative errno. */
  start(): Promise<number>;
  stop(): Promise<number>;
  /** One report per mapped run of guest RAM, or a negative errno. */
  read(): Promise<readonly DirtyReport[] | number>;
}

export interface PlatformVm {
  readonly name: string;
  readonly vmm: Process;
  readonly translate: TranslateApi;
  /** First guest-physical address of the balloonable memory, when there is some. */
  readonly balloonBase: bigint | undefined;
  addVgpu(vendor: VgpuVendor, type: string, name: string): Promise<Vgpu>;
  removeVgpu(vgpu: Vgpu): Promise<void>;
  /** A guest CPU write (traps to the vGPU when the frame is protected); 0 or a negative errno. */
  guestWrite(gpa: bigint, data: Uint8Array): number;
  guestRead(gpa: bigint, out: Uint8Array): number;
  /** Takes balloon blocks away from the guest; returns bytes removed or a negative errno. */
  balloonOut(firstBlock: number, count: number): Promise<bigint | number>;
  balloonIn(firstBlock: number, count: number): Promise<number>;
  /** Undefined where the platform has no log of device-dirtied frames in the model. */
  readonly dirtyLog?: DeviceDirtyLog;
  /** Closes every vGPU and ends the VMM. */
  shutdown(): Promise<void>;
}

export interface VgpuPlatform {
  readonly host: Host;
  readonly adapter: HypervisorAdapter;
  createVm(spec: VmSpec): Promise<PlatformVm>;
}

export const IVgpuPlatform = createToken<VgpuPlatform>("IVgpuPlatform");
