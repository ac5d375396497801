/**
 * A vGPU's attachment to a KVM VM, as kvmgt's open_device makes it: the VM must
 * exist and belong to the opening process's mm (-ESRCH otherwise), a vendor
 * that allows one vGPU per VM refuses a second (-EEXIST), and the attachment
 * registers the page-track notifier through which guest writes to protected
 * frames reach the vendor.
 *
 * Write protection is per vGPU and idempotent (a GFN protected twice is one
 * KVM track count), as kvmgt's `ptable` hash makes it: -ESRCH when the vGPU is
 * not attached, -EINVAL for a frame in no memslot.
 */
import { ERRNO, type Process } from "@vgpu-iommu/core";
import type { KvmVm, TrackNotifier } from "./kvm-vm.js";

export interface VgpuWriteListener {
  /** A guest write to a protected frame, after KVM emulated it. */
  onGuestWrite(gpa: bigint, data: Uint8Array): void;
  /** Protection of these frames ended because their memslot went away. */
  onMemslotRemoved(firstGfn: number, npages: number): void;
}

export class VgpuAttachment implements TrackNotifier {
  readonly #protected = new Set<number>();

  constructor(
    readonly vm: KvmVm,
    readonly vgpu: string,
    private readonly listener: VgpuWriteListener,
  ) {}

  trackWrite(gpa: bigint, data: Uint8Array): void {
    if (this.#protected.has(Number(gpa >> 12n))) this.listener.onGuestWrite(gpa, data);
  }

  trackRemoveRegion(firstGfn: number, npages: number): void {
    for (const gfn of [...this.#protected]) if (gfn >= firstGfn && gfn < firstGfn + npages) this.#protected.delete(gfn);
    this.listener.onMemslotRemoved(firstGfn, npages);
  }

  /** kvmgt_page_track_add. */
  protect(gfn: number): number {
    if (this.#protected.has(gfn)) return 0;
    const r = this.vm.writeTrackAdd(gfn);
    if (r === 0) this.#protected.add(gfn);
    return r;
  }

  /** kvmgt_page_track_remove. */
  unprotect(gfn: number): number {
    if (!this.#protected.has(gfn)) return 0;
    const r = this.vm.writeTrackRemove(gfn);
    this.#protected.delete(gfn);
    return r;
  }

  get protectedCount(): number {
    return this.#protected.size;
  }

  /** Drops every protection; used on detach. */
  releaseAll(): void {
    for (const gfn of [...this.#protected]) this.unprotect(gfn);
  }
}

export class VgpuAttachments {
  readonly #byVgpu = new Map<string, VgpuAttachment>();

  /**
   * kvmgt open_device: -ESRCH without a VM or from another mm; -EEXIST when
   * this vGPU is attached already, or when `exclusive` and the VM has one.
   */
  attach(vm: KvmVm | undefined, vgpu: string, current: Process, exclusive: boolean, listener: VgpuWriteListener): VgpuAttachment | number {
    if (vm === undefined || vm.vmm.mm !== current.mm) return -ERRNO.ESRCH;
    if (this.#byVgpu.has(vgpu)) return -ERRNO.EEXIST;
    if (exclusive && [...this.#byVgpu.values()].some((a) => a.vm === vm)) return -ERRNO.EEXIST;
    const attachment = new VgpuAttachment(vm, vgpu, listener);
    const r = vm.registerTrackNotifier(attachment, current);
    if (r !== 0) return r;
    this.#byVgpu.set(vgpu, attachment);
    return attachment;
  }

  get(vgpu: string): VgpuAttachment | undefined {
    return this.#byVgpu.get(vgpu);
  }

  /** close_device: tracking ends, the notifier goes. */
  detach(vgpu: string): void {
    const a = this.#byVgpu.get(vgpu);
    if (a === undefined) return;
    a.releaseAll();
    a.vm.unregisterTrackNotifier(a);
    this.#byVgpu.delete(vgpu);
  }

  /** Write protection on behalf of a vGPU: -ESRCH unless it is attached. */
  protect(vgpu: string, gfn: number): number {
    return this.#byVgpu.get(vgpu)?.protect(gfn) ?? -ERRNO.ESRCH;
  }

  unprotect(vgpu: string, gfn: number): number {
    return this.#byVgpu.get(vgpu)?.unprotect(gfn) ?? -ERRNO.ESRCH;
  }
}
