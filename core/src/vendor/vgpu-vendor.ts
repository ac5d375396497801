/**
 * The vendor port (vendors.md section 4.1): what the framework calls on a vendor
 * plugin. A vendor creates vGPUs from types whose instances it counts from its
 * partitionable resources; each vGPU is opened, accessed, reset, told of
 * invalidations and guest writes, and closed, after which it holds nothing.
 *
 * Contract checked by the conformance kit (section 4.3): every pin is balanced
 * by an unpin or a sweep; after dmaUnmap(range) the vGPU holds no pin in the
 * range; every DMA mapping is unmapped exactly once with its size; close and
 * reset leave nothing behind; no device-visible address outside what the vGPU
 * owns; while dirty logging is on, every frame it holds pinned is reported
 * dirty, in its own migration report too when it declares migration.
 */
import { createToken } from "../di/token.js";
import type { VgpuServices } from "./vgpu-services.js";

/** VFIO PCI region indexes. */
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_BAR1_REGION_INDEX = 1;
export const VFIO_PCI_BAR2_REGION_INDEX = 2;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;

/** flr: VFIO_DEVICE_RESET (device-model-level); engine: a guest reset of all engines; d3-resume: reset right after D3hot. */
export type ResetKind = "flr" | "engine" | "d3-resume";

export interface VgpuType {
  readonly name: string;
  readonly description: string;
  /** What one instance takes of each partitionable resource. */
  readonly resources: Readonly<Record<string, number>>;
}

export interface PlaneInfo {
  readonly dmabufId: number;
  readonly width: number;
  readonly height: number;
  readonly stride: number;
  readonly size: number;
  /** Guest graphics address of the surface. */
  readonly gmaddr: bigint;
}

export interface DirtyReport {
  /** One bit per page from `firstGfn`. */
  readonly bitmap: Uint8Array;
  readonly firstGfn: number;
  readonly npages: number;
}

export interface Vgpu {
  readonly name: string;
  readonly type: string;
  /** open_device; throws KernelError (e.g. -ESRCH, -EEXIST). */
  open(): Promise<void>;
  /** close_device: must release every pin and DMA mapping. */
  close(): Promise<void>;
  read(region: number, offset: bigint, length: number): Uint8Array;
  /** Region write; throws -EINVAL for an access the device does not accept. */
  write(region: number, offset: bigint, data: Uint8Array): void;
  reset(kind: ResetKind): Promise<void>;
  /** Synchronous in effect: on return no page of [iova, iova + length) may stay pinned by this vGPU. */
  dmaUnmap(iova: bigint, length: bigint): void | Promise<void>;
  /** A guest write to a frame this vGPU protected, after it was emulated. */
  onGuestWrite(gpa: bigint, data: Uint8Array): void;
  /**
   * Write protection of frames in [firstGfn, firstGfn + npages) ended because
   * the memory went away: a KVM memslot removed, or on Xen the frames' P2M
   * entries (and with them the ioreq server's type) removed.
   */
  onMemslotRemoved(firstGfn: number, npages: number): void;
  /** The display plane, or undefined when no plane is ready. */
  queryPlane(plane: "primary" | "cursor"): PlaneInfo | undefined;
  /** Exports the plane's buffer: takes an extra reference on each of its pages. */
  getDmabuf(dmabufId: number): void;
  releaseDmabuf(dmabufId: number): void;
  /** Migration: the pages this vGPU dirtied, or undefined for a vendor without migration. */
  dirtyPages?(firstGfn: number, npages: number): DirtyReport;
}

export interface VendorCapabilities {
  /** At most one of this vendor's vGPUs per VM (GVT); false lets a VM take several (NVIDIA). */
  readonly onePerVm: boolean;
  readonly migration: boolean;
  /** The vGPU is a VF with its own requester ID and needs no vendor pins. */
  readonly ownRequesterId: boolean;
}

export interface VgpuVendor {
  readonly capabilities: VendorCapabilities;
  listTypes(): readonly VgpuType[];
  availableInstances(type: string): number;
  /** Reserves the type's resources (-ENOSPC when exhausted). */
  create(type: string, name: string, services: VgpuServices): Vgpu;
  /** Frees the resources; refused while the vGPU is open. */
  destroy(vgpu: Vgpu): void;
}

export const IVgpuVendor = createToken<VgpuVendor>("IVgpuVendor");
