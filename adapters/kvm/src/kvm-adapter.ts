/**
 * The KVM hypervisor adapter, in the `pci_map_sg` style of the 2016 thread.
 *
 * Guest frames are pinned through VFIO type1 on the vGPU's mediated device
 * (iova = GPA in a QEMU container), so pinning and charging happen once, in
 * type1. Mapping for a device goes through the host DMA API on the parent GPU
 * the vendor names: every vGPU of that GPU shares the parent's single IOVA
 * space and requester ID, so the IOMMU cannot isolate one vGPU from another
 * (`isolationPerVgpu: false`). The capabilities are those of the parent's DMA
 * mode: dma-iommu merges segments, the 2016 intel-iommu and direct mode do not.
 *
 * The adapter keeps the parents it was given; a handle it does not know is
 * -ENODEV. It owns no other state: translations live in the core.
 */
import { KernelError, VfioGuestPins, apertureOfMask, type DeviceHandle, type DeviceMapping, type Disposable, type GuestInvalidation, type GuestPinPort, type HypervisorAdapter, type HypervisorCapabilities, type VfioDevice } from "@vgpu-iommu/core";
import type { KvmGeneration } from "./kvm-vm.js";

/** What the adapter needs of the host DMA API on one parent device. */
export interface ParentDeviceMapper {
  readonly handle: DeviceHandle;
  readonly mergesSegments: boolean;
  readonly maxSegmentSize: number;
  readonly segmentBoundaryMask: bigint;
  readonly dmaMaskBits: number;
  readonly lazyFlush: boolean;
  /** dma_map_sg of page-sized frames; throws KernelError (reason dma-mapping-error) when it returns 0. */
  mapFrames(frames: Uint32Array, n: number, write: boolean): DeviceMapping;
  /** dma_unmap_sg with the original entry count. */
  unmap(mapping: DeviceMapping): void;
}

export interface KvmAdapterOptions {
  readonly generation?: KvmGeneration;
  /** The physical GPUs vendors may name; the first is the default parent of new vGPUs. */
  readonly parents: readonly ParentDeviceMapper[];
}

export class KvmAdapter implements HypervisorAdapter {
  readonly #parents = new Map<DeviceHandle, ParentDeviceMapper>();
  readonly #listeners = new Set<(inv: GuestInvalidation) => void>();
  /** One pin port per vGPU device, made on its first translation. */
  readonly #pins = new WeakMap<VfioDevice, VfioGuestPins>();

  constructor(readonly options: KvmAdapterOptions) {
    if (options.parents.length === 0) throw new RangeError("a KVM adapter needs at least one parent device");
    for (const p of options.parents) this.#parents.set(p.handle, p);
  }

  /** The default parent device of new vGPUs. */
  get parentDevice(): DeviceHandle {
    return this.options.parents[0]!.handle;
  }

  /** The default parent's DMA mode, or that of the parent named. */
  capabilities(device?: DeviceHandle): HypervisorCapabilities {
    const p = device === undefined ? this.options.parents[0]! : this.#parents.get(device);
    if (p === undefined) throw new KernelError("ENODEV", "device-not-registered", { device: device?.name });
    const bits = p.dmaMaskBits;
    return {
      addressModel: "host-dma-api",
      coreChoosesIova: false,
      mergesSegments: p.mergesSegments,
      maxSegmentSize: p.maxSegmentSize,
      segmentBoundaryMask: p.segmentBoundaryMask,
      dmaMaskBits: bits,
      iovaAperture: apertureOfMask(bits),
      maxPinPerCall: 512,
      maxOpsPerBatch: 512,
      flushModel: p.lazyFlush ? "explicit" : "per-call",
      isolationPerVgpu: false,
      supportsWriteTrack: true,
    };
  }

  guestPins(vdev: unknown): GuestPinPort {
    let pins = this.#pins.get(vdev as VfioDevice);
    if (pins === undefined) this.#pins.set(vdev as VfioDevice, (pins = new VfioGuestPins(vdev as VfioDevice)));
    return pins;
  }

  mapForDevice(device: DeviceHandle, frames: Uint32Array, n: number, write: boolean): DeviceMapping {
    const parent = this.#parents.get(device);
    if (parent === undefined) throw new KernelError("ENODEV", "device-not-registered", { device: device?.name });
    return parent.mapFrames(frames, n, write);
  }

  unmapForDevice(mapping: DeviceMapping): void {
    this.#parents.get(mapping.device)?.unmap(mapping);
  }

  onInvalidate(listener: (inv: GuestInvalidation) => void): Disposable {
    this.#listeners.add(listener);
    return { dispose: () => this.#listeners.delete(listener) };
  }

  /** Memslot removal and other KVM-side changes of guest memory reach the core here. */
  invalidate(inv: GuestInvalidation): void {
    for (const l of [...this.#listeners]) l(inv);
  }
}
