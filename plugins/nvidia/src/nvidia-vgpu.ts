/**
 * An NVIDIA-like vGPU (vendors.md 2.2, 2.3): the shim's device ops over the
 * core's VgpuServices.
 *
 * - mdev mode (the vGPU shares the parent's requester ID): RM's pin requests
 *   `translateGfns` / `unpinGfns` go to MdevPinning; `dmaUnmap` is the
 *   DMA_UNMAP notifier; reset and close sweep every pin and mapping.
 * - VF mode (own requester ID): VFIO maps all guest RAM into the VF's IOMMU
 *   domain at IOVA = GPA, so the vGPU never pins: a GET_IOVA request answers
 *   the guest frame itself, GET_HOST_PFN is not available (-EOPNOTSUPP), and
 *   the notifier has nothing to drop.
 *
 * Lifecycle: open posts VM_START (timeout -ETIMEDOUT, error -EIO) and counts
 * opens (usage_count); the last close posts VM_SHUTDOWN (the plugin is killed
 * if it did not answer OK), sweeps and does a VF FLR; VFIO_DEVICE_RESET posts
 * VM_REBOOT and, whatever the answer, sweeps and does a VF FLR. A guest engine
 * reset is RM's business and touches no pin. Config space is emulated; BAR0
 * accesses are forwarded to the plugin (4-byte aligned only; timeout
 * -ETIMEDOUT, error -EIO). The console is a region-type plane, so no dma-buf.
 *
 * Invariant: when closed, the vGPU holds no pin and no translation.
 */
import { KernelError, Observable, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, type DirtyReport, type PlaneInfo, type ResetKind, type Vgpu, type VgpuServices } from "@vgpu-iommu/core";
import { MdevPinning, type MdevPinningOptions, type PinCounters } from "./mdev-pinning.js";
import type { AddrType, ManagerEvent, NvidiaVgpuEvents } from "./events.js";
import type { VgpuManager } from "./manager.js";
import type { VgpuAllocation } from "./gpu-resources.js";

const CONFIG_SIZE = 256;
const NVIDIA_VENDOR_ID = 0x10de;

export interface NvidiaVgpuInit {
  readonly name: string;
  readonly allocation: VgpuAllocation;
  readonly services: VgpuServices;
  readonly manager: VgpuManager;
  /** A VF with its own requester ID: no vendor pins. */
  readonly vfMode: boolean;
  readonly pinning?: MdevPinningOptions;
}

export class NvidiaVgpu extends Observable<NvidiaVgpuEvents> implements Vgpu {
  readonly name: string;
  readonly type: string;
  readonly allocation: VgpuAllocation;
  readonly vfMode: boolean;
  readonly #services: VgpuServices;
  readonly #manager: VgpuManager;
  readonly #pinning: MdevPinning | undefined;
  readonly #config = new Uint8Array(CONFIG_SIZE);
  readonly #bar0 = new Map<number, number>();
  #usage = 0;
  /** VF FLRs done by close and reset. */
  vfFlrs = 0;
  /** GET_IOVA requests a VF answered with the guest frame (no pin). */
  identityTranslations = 0;

  constructor(init: NvidiaVgpuInit) {
    super();
    this.name = init.name;
    this.type = init.allocation.type.name;
    this.allocation = init.allocation;
    this.vfMode = init.vfMode;
    this.#services = init.services;
    this.#manager = init.manager;
    this.#pinning = init.vfMode ? undefined : new MdevPinning(init.name, init.services, (event, ...args) => this.emit(event, ...args), init.pinning);
    const view = new DataView(this.#config.buffer);
    view.setUint16(0, NVIDIA_VENDOR_ID, true);
    view.setUint16(2, init.allocation.type.deviceId, true);
    view.setUint8(11, 0x03); // class: display controller
  }

  get isOpen(): boolean {
    return this.#usage > 0;
  }

  /** Pins this vGPU holds (host-PFN references plus IOVA-mode frames); always 0 for a VF. */
  get pins(): number {
    return this.#pinning?.pins ?? 0;
  }

  /** Batch nodes RM holds: scatter-gather mappings in the shim's view. */
  get liveNodes(): number {
    return this.#pinning?.cache.liveNodes ?? 0;
  }

  /** Batches whose core translation (and device mapping) is still live. */
  get liveTranslations(): number {
    return this.#pinning?.cache.liveTranslations ?? 0;
  }

  /**
   * The device addresses RM holds (ConformanceIntrospection): every page of
   * every live batch node. After a notifier revoked a batch's mapping these are
   * stale, and the parent's isolation check reports them unmapped.
   */
  deviceVisibleAddresses(): readonly bigint[] {
    return this.#pinning?.cache.deviceAddresses() ?? [];
  }

  /** Host-PFN mode reference count of a frame. */
  hostPfnRefcount(gpfn: number): number {
    return this.#pinning?.gpfnList.refcount(gpfn) ?? 0;
  }

  /** The mapping-cache slot of a frame: 0, -batch (pinned member) or +batch (base). */
  cacheSlot(gpfn: number): number {
    return this.#pinning?.cache.slot(gpfn) ?? 0;
  }

  get pinCounters(): Readonly<PinCounters> | undefined {
    return this.#pinning?.counters;
  }

  async open(): Promise<void> {
    if (this.#usage === 0) {
      const r = this.#post("VM_START");
      if (r === "timeout") throw new KernelError("ETIMEDOUT", "vgpu-start-timeout", { vgpu: this.name });
      if (r === "error") throw new KernelError("EIO", "vgpu-start-failed", { vgpu: this.name });
    }
    this.#usage++;
    this.emit("opened", { vgpu: this.name, usage: this.#usage });
  }

  async close(): Promise<void> {
    if (this.#usage === 0) return;
    if (this.#usage > 1) {
      this.#usage--;
      return;
    }
    const r = this.#post("VM_SHUTDOWN");
    const kill = r !== "ok";
    if (kill) this.#manager.kill(this.name);
    this.#pinning?.sweep("close");
    this.#bar0.clear();
    this.#usage = 0;
    this.vfFlrs++;
    this.emit("closed", { vgpu: this.name, pluginKilled: kill });
  }

  async reset(kind: ResetKind): Promise<void> {
    if (kind === "engine") return;
    const r = this.#post("VM_REBOOT");
    this.#pinning?.sweep("reset");
    this.#bar0.clear();
    this.vfFlrs++;
    this.emit("wasReset", { vgpu: this.name, kind, managerResult: r });
  }

  /** The DMA_UNMAP notifier: on return no IOVA-mode pin of the range is left, and one host-PFN reference less per frame. */
  dmaUnmap(iova: bigint, length: bigint): void {
    if (this.#pinning === undefined || length <= 0n) return;
    const first = Number(iova >> 12n);
    const end = Number((iova + length + 4095n) >> 12n);
    this.#pinning.dmaUnmap(first, end);
  }

  /**
   * RM's nv_vgpu_translate_gfn_to_pfn: pins `gpfns` (any order, up to 512 per
   * VFIO call) and returns host PFNs (GET_HOST_PFN) or IOVA page numbers on
   * the parent device (GET_IOVA). All or nothing.
   */
  translateGfns(gpfns: ArrayLike<number>, mode: AddrType, out: Float64Array = new Float64Array(gpfns.length)): Float64Array {
    if (this.#usage === 0) throw new KernelError("EINVAL", "vgpu-not-open", { vgpu: this.name });
    if (this.#pinning === undefined) {
      if (mode === "GET_HOST_PFN") throw new KernelError("EOPNOTSUPP", "vf-has-no-host-pfn-mode", { vgpu: this.name });
      for (let i = 0; i < gpfns.length; i++) out[i] = gpfns[i]!;
      this.identityTranslations++;
      return out;
    }
    this.#pinning.translate(gpfns, mode, out);
    return out;
  }

  /** RM's nv_vgpu_unpin_pages; returns the frames unpinned. */
  unpinGfns(gpfns: ArrayLike<number>, mode: AddrType): number {
    return this.#pinning?.unpin(gpfns, mode) ?? 0;
  }

  read(region: number, offset: bigint, length: number): Uint8Array {
    if (region === VFIO_PCI_CONFIG_REGION_INDEX) {
      const at = Number(offset);
      if (at < 0 || at + length > CONFIG_SIZE) throw new KernelError("EINVAL", "config-out-of-range", { offset: at, length });
      return this.#config.slice(at, at + length);
    }
    const reg = this.#bar0Access(region, offset, length);
    const out = new Uint8Array(4);
    new DataView(out.buffer).setUint32(0, this.#bar0.get(reg) ?? 0, true);
    return out;
  }

  write(region: number, offset: bigint, data: Uint8Array): void {
    if (region === VFIO_PCI_CONFIG_REGION_INDEX) {
      const at = Number(offset);
      if (at < 0 || at + data.length > CONFIG_SIZE) throw new KernelError("EINVAL", "config-out-of-range", { offset: at, length: data.length });
      if (at >= 4) this.#config.set(data, at); // vendor and device IDs are read-only
      return;
    }
    const reg = this.#bar0Access(region, offset, data.length);
    this.#bar0.set(reg, new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true));
  }

  /** The shim never write-protects guest frames: a tracked write is a framework error. */
  onGuestWrite(gpa: bigint, _data: Uint8Array): void {
    this.emit("warned", { vgpu: this.name, site: "onGuestWrite", details: { gpa } });
  }

  onMemslotRemoved(_firstGfn: number, _npages: number): void {}

  /** The console is exported as a region-type plane: no dma-buf plane. */
  queryPlane(_plane: "primary" | "cursor"): PlaneInfo | undefined {
    return undefined;
  }

  getDmabuf(dmabufId: number): void {
    throw new KernelError("EINVAL", "dmabuf-plane-unsupported", { dmabufId });
  }

  releaseDmabuf(dmabufId: number): void {
    throw new KernelError("EINVAL", "dmabuf-plane-unsupported", { dmabufId });
  }

  /** Migration: every frame currently pinned, in either mode, is dirty. */
  dirtyPages(firstGfn: number, npages: number): DirtyReport {
    const bitmap = new Uint8Array(Math.ceil(npages / 8));
    this.#pinning?.dirty(firstGfn, npages, bitmap);
    return { bitmap, firstGfn, npages };
  }

  /** The services this vGPU was created with (for its vendor and tests). */
  get services(): VgpuServices {
    return this.#services;
  }

  #bar0Access(region: number, offset: bigint, length: number): number {
    if (region !== VFIO_PCI_BAR0_REGION_INDEX) throw new KernelError("EINVAL", "region-not-emulated", { region });
    if (length !== 4 || (offset & 3n) !== 0n) throw new KernelError("EINVAL", "bar0-access-size", { offset, length });
    const r = this.#post("REGISTER_ACCESS");
    if (r === "timeout") throw new KernelError("ETIMEDOUT", "register-access-timeout", { offset });
    if (r === "error") throw new KernelError("EIO", "register-access-failed", { offset });
    return Number(offset);
  }

  #post(event: ManagerEvent): ReturnType<VgpuManager["post"]> {
    const result = this.#manager.post(this.name, event);
    this.emit("managerEventPosted", { vgpu: this.name, event, result });
    return result;
  }
}
