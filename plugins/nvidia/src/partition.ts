/**
 * The partition arithmetic of the upstream RFC's vGPU creation (vendors.md
 * 2.3), as pure functions of the GPU profile and the vGPU type:
 *
 * - channels: `prev_pow2(total_avail_chids / max_instance)` per vGPU;
 * - framebuffer: the type's `fb_length` aligned up to the VMMU segment; with
 *   ECC on, `ALIGN(total_fb, seg) / max_instance - fb_reservation -
 *   gsp_heap_size`, capped at `fb_length` and aligned down to `seg`; a type
 *   without ECC support cannot be created while ECC is on (-ENODEV).
 *
 * Integer division is C's (truncating); every size is in bytes and a whole
 * number of segments.
 */
import { KernelError } from "@vgpu-iommu/core";
import type { NvidiaGpuProfile, NvidiaVgpuTypeSpec } from "./gpu-profile.js";

/** Largest power of two <= n (0 for n < 1). */
export function prevPow2(n: number): number {
  if (!(n >= 1)) return 0;
  let p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

export const alignUp = (x: number, a: number): number => Math.ceil(x / a) * a;
export const alignDown = (x: number, a: number): number => Math.floor(x / a) * a;

/** Channels one instance of `type` takes, the plugin channel included. */
export function channelCountFor(profile: NvidiaGpuProfile, type: NvidiaVgpuTypeSpec): number {
  return prevPow2(Math.floor(profile.totalAvailChids / type.maxInstance));
}

/** Framebuffer bytes one instance of `type` takes; -ENODEV for a type without ECC support while ECC is on. */
export function fbSizeFor(profile: NvidiaGpuProfile, type: NvidiaVgpuTypeSpec): number {
  const seg = profile.vmmuSegment;
  if (!profile.eccEnabled) return alignUp(type.fbLength, seg);
  if (!type.eccSupported) throw new KernelError("ENODEV", "type-without-ecc-support", { type: type.name });
  const share = Math.floor(alignUp(profile.totalFb, seg) / type.maxInstance) - type.fbReservation - type.gspHeapSize;
  const size = alignDown(Math.min(share, type.fbLength), seg);
  if (size <= 0) throw new KernelError("ENOSPC", "fb-share-too-small", { type: type.name, share });
  return size;
}
