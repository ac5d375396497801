/**
 * The hypervisor port: what the core asks of a hypervisor adapter, and what an
 * adapter tells the core. The core never asks which adapter it has; every
 * difference between KVM and Xen is a declared capability or happens behind
 * these calls.
 *
 * The vendor names the device to map for (its own parent device handle); the
 * adapter validates that handle and does the mechanism: the host DMA API on
 * KVM, a PV-IOMMU map, an identity MFN or a bounce on Xen. Guest frames are
 * pinned through the adapter's GuestPinPort for the vGPU, which on KVM is the
 * VFIO type1 vendor API, so pinning and charging happen once, in type1.
 */
import type { Disposable } from "../events/emitter.js";
import { createToken } from "../di/token.js";
import type { GuestPinPort } from "./guest-pin-port.js";

export type AddressModel = "host-dma-api" | "identity-mfn" | "pviommu-bfn" | "grant-dma";
export type FlushModel = "per-op" | "end-of-batch" | "per-call" | "explicit";

export interface HypervisorCapabilities {
  /** How a device address relates to the host frame. */
  readonly addressModel: AddressModel;
  /** Whether the core picks the device address (a BFN) rather than the host's allocator. */
  readonly coreChoosesIova: boolean;
  /** Whether a scatter-gather map may return fewer segments than entries. */
  readonly mergesSegments: boolean;
  readonly maxSegmentSize: number;
  readonly segmentBoundaryMask: bigint;
  readonly dmaMaskBits: number;
  /** Guest frames one pin call may take (512 for VFIO). */
  readonly maxPinPerCall: number;
  /** Mapping operations one hypercall or call may carry. */
  readonly maxOpsPerBatch: number;
  readonly flushModel: FlushModel;
  /** Whether the IOMMU isolates one vGPU from another on the same parent (false under a single RID). */
  readonly isolationPerVgpu: boolean;
  readonly supportsWriteTrack: boolean;
}

/** An opaque handle to a physical device that an adapter registered; the vendor passes its own. */
export interface DeviceHandle {
  readonly name: string;
}

/**
 * What the device can reach after a map: `count` segments of `segLength[i]`
 * bytes at `segAddr[i]`, in the order of the frames given, plus what the
 * adapter needs to unmap exactly (the original entry count).
 */
export interface DeviceMapping {
  readonly device: DeviceHandle;
  readonly nents: number;
  readonly count: number;
  readonly segAddr: BigUint64Array;
  readonly segLength: Float64Array;
}

/** A range of guest frames whose backing went away (balloon, hot-unplug, memslot removal, P2M change). */
export interface GuestInvalidation {
  readonly vm: string;
  readonly firstGfn: number;
  readonly npages: number;
  readonly reason: string;
}

export interface HypervisorAdapter {
  capabilities(): HypervisorCapabilities;
  /** The pin port through which the core pins guest frames for this vGPU. */
  guestPins(vdev: unknown): GuestPinPort;
  /**
   * Maps `n` host frames for `device`; throws a KernelError (`reason` says
   * `dma-mapping-error` where the real API has no errno) and maps nothing on failure.
   */
  mapForDevice(device: DeviceHandle, frames: Uint32Array, n: number, write: boolean): DeviceMapping;
  /** Unmaps exactly what mapForDevice returned; never fails (a mismatch is the adapter's WARN). */
  unmapForDevice(mapping: DeviceMapping): void;
  /** The adapter's invalidation callbacks into the core. */
  onInvalidate(listener: (inv: GuestInvalidation) => void): Disposable;
}

export const IHypervisorAdapter = createToken<HypervisorAdapter>("IHypervisorAdapter");
