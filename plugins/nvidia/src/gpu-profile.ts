/**
 * The physical GPU an NVIDIA-like vendor partitions, and its vGPU types
 * (vendors.md 2.1 and 2.3). A vGPU type fixes a framebuffer length, a maximum
 * instance count per GPU, and whether it may run with ECC on; the GPU fixes
 * its total framebuffer, its VMMU segment (the FB granule, 32..512 MiB), the
 * channel-ID pool handed to vGPUs and the number of SR-IOV VFs.
 *
 * The default GPU is a 48 GiB board with 64 MiB VMMU segments (768 segments),
 * a 2,040-channel pool (2,048 channels, the first 8 kept by the host) and 32
 * VFs; its types are the time-sliced "Q" profiles of such a board.
 */
import { KernelError } from "@vgpu-iommu/core";

const MiB = 1 << 20;
const GiB = 1024 * MiB;

/** The VMMU segment sizes the RFC names (vendors.md 2.1). */
export const VMMU_SEGMENT_SIZES: readonly number[] = [32 * MiB, 64 * MiB, 128 * MiB, 256 * MiB, 512 * MiB];

export interface NvidiaVgpuTypeSpec {
  readonly name: string;
  /** Framebuffer of one instance, in bytes, before segment alignment. */
  readonly fbLength: number;
  readonly maxInstance: number;
  /** Whether the type may be created while ECC is on; false gives -ENODEV then. */
  readonly eccSupported: boolean;
  /** With ECC on: FB the GPU keeps out of each instance's share, in bytes. */
  readonly fbReservation: number;
  /** With ECC on: the instance's GSP heap, taken out of its share, in bytes. */
  readonly gspHeapSize: number;
  readonly heads: number;
  readonly maxResolution: string;
  /** PCI device ID the VF's emulated config space shows. */
  readonly deviceId: number;
}

export interface NvidiaGpuProfile {
  readonly name: string;
  /** Total framebuffer, in bytes; vGPUs are carved from all of it. */
  readonly totalFb: number;
  /** One of VMMU_SEGMENT_SIZES. */
  readonly vmmuSegment: number;
  readonly eccEnabled: boolean;
  /** First channel ID of the pool reserved for vGPUs. */
  readonly chidBase: number;
  /** Channels in the pool (`total_avail_chids`). */
  readonly totalAvailChids: number;
  /** SR-IOV VFs; a VF vGPU takes one (gfid = VF id + 1). */
  readonly totalVfs: number;
  /** Management heap per vGPU (host<->GSP buffers), mapped into BAR1. */
  readonly mgmtHeapSize: number;
  readonly types: readonly NvidiaVgpuTypeSpec[];
}

const qType = (gib: number, maxInstance: number, eccSupported = true): NvidiaVgpuTypeSpec => ({
  name: `NV-${gib}Q`,
  fbLength: gib * GiB - 40 * MiB,
  maxInstance,
  eccSupported,
  fbReservation: 200 * MiB,
  gspHeapSize: 48 * MiB,
  heads: 4,
  maxResolution: gib >= 2 ? "7680x4320" : "5120x2880",
  deviceId: 0x2230 + gib,
});

/** The default GPU: 48 GiB, 64 MiB segments, ECC off. */
export const NV_ADA_48G: NvidiaGpuProfile = Object.freeze({
  name: "nv-ada-48g",
  totalFb: 48 * GiB,
  vmmuSegment: 64 * MiB,
  eccEnabled: false,
  chidBase: 8,
  totalAvailChids: 2040,
  totalVfs: 32,
  mgmtHeapSize: 4 * MiB,
  types: Object.freeze([qType(1, 32, false), qType(2, 24), qType(4, 12), qType(8, 6), qType(12, 4), qType(24, 2), qType(48, 1)]),
});

/** Checks a profile once, at vendor construction: -EINVAL with the offending field. */
export function validateProfile(p: NvidiaGpuProfile): void {
  const bad = (field: string, value: unknown): never => {
    throw new KernelError("EINVAL", "bad-gpu-profile", { field, value });
  };
  if (!VMMU_SEGMENT_SIZES.includes(p.vmmuSegment)) bad("vmmuSegment", p.vmmuSegment);
  if (!Number.isSafeInteger(p.totalFb) || p.totalFb < p.vmmuSegment) bad("totalFb", p.totalFb);
  if (!Number.isSafeInteger(p.totalAvailChids) || p.totalAvailChids < 2) bad("totalAvailChids", p.totalAvailChids);
  if (!Number.isSafeInteger(p.chidBase) || p.chidBase < 0) bad("chidBase", p.chidBase);
  if (!Number.isSafeInteger(p.totalVfs) || p.totalVfs < 1) bad("totalVfs", p.totalVfs);
  const names = new Set<string>();
  for (const t of p.types) {
    if (names.has(t.name)) bad("types.name", t.name);
    names.add(t.name);
    if (!Number.isSafeInteger(t.maxInstance) || t.maxInstance < 1) bad(`${t.name}.maxInstance`, t.maxInstance);
    if (!Number.isSafeInteger(t.fbLength) || t.fbLength <= 0) bad(`${t.name}.fbLength`, t.fbLength);
  }
}
