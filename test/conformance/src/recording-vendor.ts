/**
 * The kit's view of a vendor: a VgpuVendor that forwards to the real one but
 * gives each vGPU a recording proxy of its services (services-ledger.ts) and
 * hands the platform a thin wrapper of the vGPU, so the kit also sees each
 * dmaUnmap and checks its postcondition the moment it returns (vendors.md
 * 4.1: "on return, no page in [iova, iova + length) may remain pinned").
 *
 * The platform only ever holds wrappers; `exercise` and the address hooks get
 * the vendor's own vGPU object.
 */
import type { DirtyReport, PlaneInfo, ResetKind, VendorCapabilities, Vgpu, VgpuServices, VgpuType, VgpuVendor } from "@vgpu-iommu/core";
import { ServicesLedger } from "./services-ledger.js";

export interface Subject {
  readonly name: string;
  /** What the platform holds. */
  readonly wrapper: RecordedVgpu;
  /** The vendor's own vGPU. */
  readonly real: Vgpu;
  readonly ledger: ServicesLedger;
}

export class RecordedVgpu implements Vgpu {
  readonly name: string;
  readonly type: string;
  /** dmaUnmap calls, as [first gfn, npages]. */
  readonly dmaUnmaps: [number, number][] = [];
  readonly dirtyPages?: (firstGfn: number, npages: number) => DirtyReport;

  constructor(
    readonly real: Vgpu,
    readonly ledger: ServicesLedger,
  ) {
    this.name = real.name;
    this.type = real.type;
    if (real.dirtyPages !== undefined) this.dirtyPages = (first, n) => real.dirtyPages!(first, n);
  }

  open(): Promise<void> {
    return this.real.open();
  }
  close(): Promise<void> {
    return this.real.close();
  }
  read(region: number, offset: bigint, length: number): Uint8Array {
    return this.real.read(region, offset, length);
  }
  write(region: number, offset: bigint, data: Uint8Array): void {
    this.real.write(region, offset, data);
  }
  reset(kind: ResetKind): Promise<void> {
    return this.real.reset(kind);
  }
  async dmaUnmap(iova: bigint, length: bigint): Promise<void> {
    const first = Number(iova >> 12n);
    const npages = Number((length + 0xfffn) >> 12n);
    this.dmaUnmaps.push([first, npages]);
    await this.real.dmaUnmap(iova, length);
    const left = this.ledger.pinsIn(first, first + npages);
    if (left > 0) this.ledger.violations.push(`dmaUnmap(0x${iova.toString(16)}, 0x${length.toString(16)}) returned with ${left} frame(s) of the range still pinned`);
  }
  onGuestWrite(gpa: bigint, data: Uint8Array): void {
    this.real.onGuestWrite(gpa, data);
  }
  onMemslotRemoved(firstGfn: number, npages: number): void {
    this.real.onMemslotRemoved(firstGfn, npages);
  }
  queryPlane(plane: "primary" | "cursor"): PlaneInfo | undefined {
    return this.real.queryPlane(plane);
  }
  getDmabuf(dmabufId: number): void {
    this.real.getDmabuf(dmabufId);
  }
  releaseDmabuf(dmabufId: number): void {
    this.real.releaseDmabuf(dmabufId);
  }
}

export class RecordingVendor implements VgpuVendor {
  readonly subjects = new Map<string, Subject>();

  constructor(readonly inner: VgpuVendor) {}

  get capabilities(): VendorCapabilities {
    return this.inner.capabilities;
  }

  listTypes(): readonly VgpuType[] {
    return this.inner.listTypes();
  }

  availableInstances(type: string): number {
    return this.inner.availableInstances(type);
  }

  create(type: string, name: string, services: VgpuServices): Vgpu {
    const ledger = new ServicesLedger(name, services);
    const real = this.inner.create(type, name, ledger.services);
    const wrapper = new RecordedVgpu(real, ledger);
    this.subjects.set(name, { name, wrapper, real, ledger });
    return wrapper;
  }

  destroy(vgpu: Vgpu): void {
    this.inner.destroy(vgpu instanceof RecordedVgpu ? vgpu.real : vgpu);
  }

  subject(vgpu: Vgpu): Subject {
    const s = this.subjects.get(vgpu.name);
    if (s === undefined) throw new Error(`conformance: ${vgpu.name} was not created through the kit`);
    return s;
  }
}
