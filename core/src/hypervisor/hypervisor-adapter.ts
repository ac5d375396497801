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
 *
 * Who chooses the device address is a capability too (`coreChoosesIova`): on
 * KVM the host DMA API allocates it; with the Xen PV-IOMMU the caller supplies
 * the DFN, so the core places each translation inside the aperture the adapter
 * declares for the device and hands the first page to `mapForDevice`.
 */
import type { Disposable } from "../events/emitter.js";
import { createToken } from "../di/token.js";
import type { Range } from "../address/range.js";
import { dmaBitMask } from "../dma-api/dma-addr.js";
import type { GuestPinPort } from "./guest-pin-port.js";

export type AddressModel = "host-dma-api" | "identity-mfn" | "pviommu-bfn" | "grant-dma";
export type FlushModel = "per-op" | "end-of-batch" | "per-call" | "explicit";

export interface HypervisorCapabilities {
  /** How a device address relates to the host frame. */
  readonly addressModel: AddressModel;
  /** Whether the core picks the device address (a BFN/DFN the caller supplies) rather than the host's allocator or a fixed layout. */
  readonly coreChoosesIova: boolean;
  /** Whether a scatter-gather map may return fewer segments than entries. */
  readonly mergesSegments: boolean;
  readonly maxSegmentSize: number;
  readonly segmentBoundaryMask: bigint;
  /** The DMA mask width; for a device, its own mask clipped to what the mechanism can address. */
  readonly dmaMaskBits: number;
  /**
   * The device addresses the mechanism gives or accepts, in bytes: the IOMMU
   * aperture or address layout, independent of any device's mask (KVM: the
   * host mask; the 2024 PV-IOMMU: 39 bits; XenServer: Dom0's BFN layout up to
   * the end of the foreign offset region).
   */
  readonly iovaAperture: Range;
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

/** [0, DMA_BIT_MASK(bits)] for bits 0..64, built once: capabilities() runs on every translation. */
const MASK_APERTURES: readonly Range[] = Array.from({ length: 65 }, (_, bits) => Object.freeze({ start: 0n, last: dmaBitMask(bits) }));

/** The aperture a `bits`-wide address space spans, from 0. */
export function apertureOfMask(bits: number): Range {
  const r = MASK_APERTURES[bits];
  if (r === undefined) throw new RangeError(`address width ${bits} must be an integer in [0, 64]`);
  return r;
}

export interface HypervisorAdapter {
  /** The mechanism's capabilities; for a `device`, as they apply to it (ENODEV for a device the adapter does not know). */
  capabilities(device?: DeviceHandle): HypervisorCapabilities;
  /** The pin port through which the core pins guest frames for this vGPU. */
  guestPins(vdev: unknown): GuestPinPort;
  /**
   * Maps `n` host frames for `device`; throws a KernelError (`reason` says
   * `dma-mapping-error` where the real API has no errno) and maps nothing on failure.
   * With `coreChoosesIova`, `dfn` is the first device page of the range the
   * core placed the translation at: the frames go to [dfn, dfn + n), and the
   * adapter refuses a range outside its aperture or already in use. Otherwise
   * `dfn` is absent.
   */
  mapForDevice(device: DeviceHandle, frames: Uint32Array, n: number, write: boolean, dfn?: number): DeviceMapping;
  /** Unmaps exactly what mapForDevice returned; never fails (a mismatch is the adapter's WARN). */
  unmapForDevice(mapping: DeviceMapping): void;
  /** The adapter's invalidation callbacks into the core. */
  onInvalidate(listener: (inv: GuestInvalidation) => void): Disposable;
}

export const IHypervisorAdapter = createToken<HypervisorAdapter>("IHypervisorAdapter");
