/**
 * Pass-through wrappers of the vendor ports, for whoever watches a vendor
 * without changing it (the CLI's instrumentation, the conformance kit): every
 * call reaches the wrapped object with its arguments and result unchanged; a
 * subclass or an override replaces only what it observes.
 *
 * Invariant: the inner vendor only ever sees its own vGPUs (destroy unwraps).
 */
import type { DirtyReport, PlaneInfo, ResetKind, VendorCapabilities, Vgpu, VgpuType, VgpuVendor } from "./vgpu-vendor.js";
import type { VgpuServices } from "./vgpu-services.js";

export class ForwardingVgpu implements Vgpu {
  /** Present exactly when the inner vGPU migrates. */
  readonly dirtyPages?: (firstGfn: number, npages: number) => DirtyReport;

  constructor(readonly inner: Vgpu) {
    if (inner.dirtyPages !== undefined) this.dirtyPages = (firstGfn, npages) => inner.dirtyPages!(firstGfn, npages);
  }

  get name(): string {
    return this.inner.name;
  }

  get type(): string {
    return this.inner.type;
  }

  open(): Promise<void> {
    return this.inner.open();
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  read(region: number, offset: bigint, length: number): Uint8Array {
    return this.inner.read(region, offset, length);
  }

  write(region: number, offset: bigint, data: Uint8Array): void {
    this.inner.write(region, offset, data);
  }

  reset(kind: ResetKind): Promise<void> {
    return this.inner.reset(kind);
  }

  dmaUnmap(iova: bigint, length: bigint): void | Promise<void> {
    return this.inner.dmaUnmap(iova, length);
  }

  onGuestWrite(gpa: bigint, data: Uint8Array): void {
    this.inner.onGuestWrite(gpa, data);
  }

  onMemslotRemoved(firstGfn: number, npages: number): void {
    this.inner.onMemslotRemoved(firstGfn, npages);
  }

  queryPlane(plane: "primary" | "cursor"): PlaneInfo | undefined {
    return this.inner.queryPlane(plane);
  }

  getDmabuf(dmabufId: number): void {
    this.inner.getDmabuf(dmabufId);
  }

  releaseDmabuf(dmabufId: number): void {
    this.inner.releaseDmabuf(dmabufId);
  }
}

/** A vendor whose vGPUs a subclass wraps in `create`. */
export abstract class ForwardingVendor implements VgpuVendor {
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

  abstract create(type: string, name: string, services: VgpuServices): Vgpu;

  destroy(vgpu: Vgpu): void {
    this.inner.destroy(vgpu instanceof ForwardingVgpu ? vgpu.inner : vgpu);
  }
}

/** Services that forward every call to `inner`, except those `overrides` replaces. */
export function forwardServices(inner: VgpuServices, overrides: Partial<Omit<VgpuServices, "vm" | "parentDevice">>): VgpuServices {
  return {
    vm: inner.vm,
    parentDevice: inner.parentDevice,
    pinPages: (gfn, npage, prot, out) => inner.pinPages(gfn, npage, prot, out),
    unpinPages: (gfn, npage) => inner.unpinPages(gfn, npage),
    pinPagesArray: (gfns, npage, prot, out) => inner.pinPagesArray(gfns, npage, prot, out),
    unpinPagesArray: (gfns, npage) => inner.unpinPagesArray(gfns, npage),
    dmaRw: (gpa, data, write) => inner.dmaRw(gpa, data, write),
    translate: (frames, options) => inner.translate(frames, options),
    release: (handle) => inner.release(handle),
    checkIsolation: (visible) => inner.checkIsolation(visible),
    protect: (gfn) => inner.protect(gfn),
    unprotect: (gfn) => inner.unprotect(gfn),
    injectIrq: (vector) => inner.injectIrq(vector),
    ...overrides,
  };
}
