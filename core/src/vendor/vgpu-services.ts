/**
 * What a vendor plugin may call, for one vGPU: the hypervisor-agnostic face of
 * pinning, guest memory access, device mapping, write tracking and interrupts
 * (vendors.md section 4.2). A platform (a hypervisor adapter) builds it: on KVM
 * the pins are VFIO's vfio_pin_pages on the vGPU's mediated device (iova = GPA)
 * and tracking is KVM page-track; on Xen they are referenced P2M lookups and an
 * ioreq server. A plugin that uses only these runs unchanged on both.
 *
 * Guest frames here are GFNs; on KVM they are also the VFIO IOVA pages.
 * Failures throw KernelError with the errno the real stack gives.
 */
import type { DeviceHandle } from "../hypervisor/hypervisor-adapter.js";
import type { FrameSpec, IsolationFinding, Translation, TranslateOptions, TranslationHandle } from "../translate/translate-api.js";

export interface VgpuServices {
  /** The VM this vGPU is attached to. */
  readonly vm: string;
  /** The vendor's own physical GPU, the device every DMA mapping of this vGPU is made for. */
  readonly parentDevice: DeviceHandle;
  /** Contiguous form: pins `npage` frames from `gfn`, host frames into `out`; returns npage. At most 512. */
  pinPages(gfn: number, npage: number, prot: number, out: Uint32Array): number;
  unpinPages(gfn: number, npage: number): void;
  /** Array form (4.10-5.19): arbitrary frames, duplicates take a reference each; returns npage. */
  pinPagesArray(gfns: ArrayLike<number>, npage: number, prot: number, out: Uint32Array): number;
  unpinPagesArray(gfns: ArrayLike<number>, npage: number): number;
  /** Copies to or from guest memory with no pin left behind. */
  dmaRw(gpa: bigint, data: Uint8Array, write: boolean): void;
  /** The core's translate API, bound to this vGPU. */
  translate(frames: FrameSpec, options: TranslateOptions): Translation;
  release(handle: TranslationHandle): void;
  checkIsolation(visible: ArrayLike<bigint>): IsolationFinding[];
  /** Write-protects a guest frame: 0, -EINVAL outside guest memory, -ESRCH when not attached. */
  protect(gfn: number): number;
  unprotect(gfn: number): number;
  /** Signals the guest; false when nobody listens any more (the VMM has gone). */
  injectIrq(vector: number): boolean;
}

/** The frames of a translate request, in order (a range expanded), for whoever records them. */
export function frameList(frames: FrameSpec): Float64Array {
  if ("start" in frames && "npages" in frames && !("length" in frames)) {
    const out = new Float64Array(frames.npages);
    for (let i = 0; i < frames.npages; i++) out[i] = frames.start + i;
    return out;
  }
  const list = frames as ArrayLike<number>;
  const out = new Float64Array(list.length);
  for (let i = 0; i < list.length; i++) out[i] = list[i]!;
  return out;
}
