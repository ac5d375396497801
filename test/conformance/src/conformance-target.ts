/**
 * What a vendor hands the conformance kit: a platform to build VMs on, the
 * vendor and one of its types, and a way to make a vGPU pin and map guest
 * frames the way its guest driver would. The kit wraps the vendor (see
 * recording-vendor.ts) so it sees every pin, translation and release a vGPU
 * makes through the services the platform gave it, and reads the platform's
 * host for the counters that must come back to where they were.
 *
 * `setup` is called once per check and must return a fresh platform (a new
 * host): a check that catches a leak, or a vendor that makes type1 hit its
 * BUG_ON, must not poison the next one.
 */
import type { PlatformVm, Vgpu, VgpuPlatform, VgpuVendor, VmSpec } from "@vgpu-iommu/core";

export interface ConformanceTarget {
  readonly platform: VgpuPlatform;
  readonly vendor: VgpuVendor;
  readonly type: string;
  /** Overrides of the VMs the kit creates; they must keep a balloon of at least 2 blocks. */
  readonly vmSpec?: Partial<Omit<VmSpec, "name">>;
  /**
   * Makes `vgpu` (the vendor's own object, not the kit's wrapper) pin and map
   * every frame of `gfns` for its parent device, as its guest driver would
   * (a frame may appear twice: the vendor decides whether to share it).
   */
  exercise(vgpu: Vgpu, vm: PlatformVm, gfns: readonly number[]): void | Promise<void>;
  /** The device addresses the vGPU's shadow or GPU tables expose; defaults to the vGPU's ConformanceIntrospection. */
  deviceVisibleAddresses?(vgpu: Vgpu): ArrayLike<bigint>;
  /** Addresses the vendor owns (scratch, shadow pages): allowed in its tables (4.3 item 5b). */
  vendorOwnedAddresses?(vgpu: Vgpu): ArrayLike<bigint>;
  /** Extra counters that must be back to their value once the vGPU is closed. */
  counters?(): Readonly<Record<string, number>>;
  dispose?(): void | Promise<void>;
}

/** An optional extension of a vGPU, read when the target gives no address hooks. */
export interface ConformanceIntrospection {
  deviceVisibleAddresses(): ArrayLike<bigint>;
  vendorOwnedAddresses?(): ArrayLike<bigint>;
}

export const hasIntrospection = (v: unknown): v is ConformanceIntrospection =>
  typeof v === "object" && v !== null && typeof (v as ConformanceIntrospection).deviceVisibleAddresses === "function";

export type CheckId = "pins-balanced" | "dma-unmap-drops-range" | "unmapped-exactly-once" | "no-stale-address" | "close-leaves-nothing" | "reset-leaves-nothing" | "isolation" | "dirty-covers-pins";

export interface Verdict {
  readonly check: CheckId;
  readonly ok: boolean;
  /** Set when the check could not be made (e.g. the vendor exposes no device address); ok is then true. */
  readonly skipped?: string;
  readonly violations: readonly string[];
  /** What the check measured, for the report. */
  readonly figures: Readonly<Record<string, number>>;
}
