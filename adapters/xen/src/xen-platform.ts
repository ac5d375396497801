/**
 * The Xen platform: VMs as a Dom0 toolstack builds HVM guests, with vGPUs
 * served by a device model in Dom0 (XenGT's shape), so vendor plugins written
 * against VgpuServices run unchanged on Xen.
 *
 * A VM is an HVM domain whose RAM is laid out as QEMU lays it out on KVM (low
 * RAM from GFN 0 up to 3 GiB, the rest from 4 GiB, a balloon region on the
 * next GiB boundary, in blocks), plus a device-model process in Dom0 and an
 * ioreq server for write tracking. Adding a vGPU attaches it to the domain in
 * the adapter (its pin port is the guest's privcmd pin table), creates it with
 * services built on Xen mechanisms, and opens it:
 * - pinPages / pinPagesArray: privcmd foreign mappings through the adapter's
 *   GuestPinPort, with the observable rules of the KVM platform: at most 512
 *   frames a call (-E2BIG), all or nothing, refcounted per frame (one Xen page
 *   reference per frame however often it is pinned), -EINVAL before open;
 * - dmaRw: a referenced P2M lookup of each frame, a copy through host
 *   physical memory, the reference dropped: no pin is left behind;
 * - translate / release / checkIsolation: the VM's core TranslateApi, from a
 *   child container whose parent holds the platform's DeviceAddressSpaces and
 *   the adapter, as on KVM;
 * - protect / unprotect: the VM's ioreq server (writes only), see
 *   write-tracker.ts; a failed emulation crashes the guest;
 * - injectIrq: true while the device model runs and the guest is running.
 * A vendor with `onePerVm` gets -EEXIST for a second vGPU in a VM, as
 * kvmgt's attach gives it.
 *
 * Balloon, and the platform's equivalent of VFIO's dma_unmap contract: a
 * balloon-out takes each block from the guest the way QEMU's RamDiscardListener
 * does on KVM, device model first. The platform calls each open vGPU's
 * `dmaUnmap(gpa, length)` for the block, once, while the vGPU's translations
 * of the block are still valid, so vendors drop their caches, release their
 * translations and unpin what they pinned directly, exactly as type1's
 * invalidation makes them do on KVM. Then XENMEM_decrease_reservation changes
 * the P2M; the adapter forwards the change to the core synchronously, and the
 * core revokes every translation still listing a frame of the block (the
 * vendor sees those handles revoked; counted in `stats.revokedByP2mChange`).
 * Unlike type1 there is no retry and no BUG_ON: a page Dom0 still references
 * after the P2M change stays allocated (orphaned) until its last reference
 * goes, so a pin kept past dmaUnmap is held memory, not a use-after-free; the
 * platform counts those pins (`stats.pinsLeftAfterDmaUnmap`). The same P2M
 * change ends the write protection of the block's frames: the ioreq server's
 * tracker tells the vGPUs that protected them (write-tracker.ts). A
 * balloon-in is XENMEM_populate_physmap of each block (fresh frames).
 *
 * Teardown: removeVgpu closes the vGPU (the vendor releases its pins and
 * mappings), ends its write tracking, detaches it and destroys it. Shutdown
 * removes every vGPU, drops whatever pins remain (the device model's exit
 * unmaps its privcmd mappings; counted in `stats.pinsSweptAtShutdown`),
 * destroys the domain and ends the device model.
 */
import { container as rootContainer, type DependencyContainer } from "tsyringe";
import {
  DeviceAddressSpaces,
  ERRNO,
  IHypervisorAdapter,
  IOMMU_WRITE,
  KernelError,
  PAGE_SIZE,
  TranslateApi,
  VFIO_PIN_PAGES_MAX_ENTRIES,
  type DeviceHandle,
  type Host,
  type PlatformVm,
  type Process,
  type Vgpu,
  type VgpuPlatform,
  type VgpuServices,
  type VgpuVendor,
  type VmSpec,
} from "@vgpu-iommu/core";
import type { Xen } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { LOOKUP_PAGED } from "./xen-domain.js";
import type { XenAdapter } from "./xen-adapter.js";
import { XenGuestPins } from "./guest-pins.js";
import { XenWriteTracker } from "./write-tracker.js";
import { xenError } from "./xen-error.js";

const GiB = 1n << 30n;
const LOWMEM_LIMIT = 3n * GiB;
const FOUR_GIB = 4n * GiB;

/** What the platform counted, for the tests and the report. */
export interface XenPlatformStats {
  /** dmaUnmap calls made to vGPUs after a balloon-out. */
  dmaUnmapCalls: number;
  /** Pins a vGPU still held in a ballooned range when its dmaUnmap returned (no retry; see the model). */
  pinsLeftAfterDmaUnmap: number;
  /** Translations the core revoked at a balloon-out's P2M change because their vGPU kept them past dmaUnmap. */
  revokedByP2mChange: number;
  /** Pins dropped when a device model exited with them still held. */
  pinsSweptAtShutdown: number;
}

export class XenPlatform implements VgpuPlatform {
  readonly stats: XenPlatformStats = { dmaUnmapCalls: 0, pinsLeftAfterDmaUnmap: 0, revokedByP2mChange: 0, pinsSweptAtShutdown: 0 };
  /** The scope every VM's child container descends from: it holds what the VMs share. */
  readonly #scope: DependencyContainer;
  readonly #vms = new Set<XenPlatformVm>();

  constructor(
    readonly host: Host,
    readonly xen: Xen,
    readonly adapter: XenAdapter,
    /** The parent GPU every vGPU maps for (registered with the adapter). */
    readonly parentDevice: DeviceHandle,
    parent: DependencyContainer = rootContainer,
  ) {
    this.#scope = parent.createChildContainer();
    // One parent GPU serves vGPUs of several VMs: the isolation checker must see all their addresses.
    this.#scope.register(DeviceAddressSpaces, { useValue: new DeviceAddressSpaces({ faults: host.faults }) });
    this.#scope.register(IHypervisorAdapter, { useValue: adapter });
  }

  /** The VMs created and not shut down. */
  get vms(): readonly PlatformVm[] {
    return [...this.#vms];
  }

  async createVm(spec: VmSpec): Promise<PlatformVm> {
    const dm = this.host.spawn({ comm: `qemu-dm-${spec.name}`, ...(spec.memlockBytes === undefined ? {} : { memlockBytes: spec.memlockBytes }), capabilities: spec.capIpcLock === true ? ["CAP_IPC_LOCK"] : [] });
    const layout = guestLayout(spec);
    let guest: XenDomain;
    try {
      guest = this.xen.createGuest({ name: spec.name, memoryBytes: spec.ramBytes, regions: layout.regions, superpages: layout.superpages });
    } catch (e) {
      dm.exit();
      throw new KernelError("ENOMEM", "vm-boot-failed", { vm: spec.name, error: e instanceof Error ? e.message : String(e) });
    }
    let tracker: XenWriteTracker;
    try {
      tracker = new XenWriteTracker(this.xen, guest);
    } catch (e) {
      this.xen.destroyDomain(guest.domid);
      dm.exit();
      throw e;
    }
    // One child container per VM: its translate API and anything a plugin registers for it.
    const translate = this.#scope.createChildContainer().resolve(TranslateApi);
    const vm = new XenPlatformVm(this, guest, dm, translate, tracker, layout, () => this.#vms.delete(vm));
    this.#vms.add(vm);
    return vm;
  }
}

interface GuestLayout {
  readonly regions: { firstGfn: number; npages: number }[];
  readonly superpages: boolean;
  readonly balloonBase: bigint | undefined;
  readonly blockPages: number;
  readonly blocks: number;
}

/** QEMU's layout on KVM, made of Xen populate runs: low RAM, RAM above 4 GiB, the balloon on the next GiB. */
function guestLayout(spec: VmSpec): GuestLayout {
  const low = spec.ramBytes < LOWMEM_LIMIT ? spec.ramBytes : LOWMEM_LIMIT;
  const high = spec.ramBytes - low;
  const regions = [{ firstGfn: 0, npages: Number(low >> 12n) }];
  if (high > 0n) regions.push({ firstGfn: Number(FOUR_GIB >> 12n), npages: Number(high >> 12n) });
  let balloonBase: bigint | undefined;
  let blockPages = 0;
  let blocks = 0;
  if (spec.balloon !== undefined) {
    const { bytes, blockBytes } = spec.balloon;
    if (blockBytes <= 0n || blockBytes % BigInt(PAGE_SIZE) !== 0n || bytes % blockBytes !== 0n) throw new KernelError("EINVAL", "bad-balloon-geometry", { bytes, blockBytes });
    balloonBase = FOUR_GIB + (high > 0n ? ((high + GiB - 1n) / GiB) * GiB : 0n);
    blockPages = Number(blockBytes >> 12n);
    blocks = Number(bytes / blockBytes);
    regions.push({ firstGfn: Number(balloonBase >> 12n), npages: blockPages * blocks });
  }
  const superpages = spec.backing === "thp" || spec.backing === "hugetlbfs";
  return { regions, superpages, balloonBase, blockPages, blocks };
}

interface VgpuEntry {
  readonly vgpu: Vgpu;
  readonly vdev: { readonly name: string };
  readonly vendor: VgpuVendor;
  readonly pins: XenGuestPins;
  open: boolean;
}

/** A VM of the Xen platform: the HVM domain, its device model and ioreq server, its translate API. */
export class XenPlatformVm implements PlatformVm {
  readonly name: string;
  readonly balloonBase: bigint | undefined;
  readonly #entries = new Map<Vgpu, VgpuEntry>();
  readonly #plugged: boolean[];
  #down = false;

  constructor(
    private readonly platform: XenPlatform,
    readonly guest: XenDomain,
    readonly vmm: Process,
    readonly translate: TranslateApi,
    readonly tracker: XenWriteTracker,
    private readonly layout: GuestLayout,
    private readonly onShutdown: () => void,
  ) {
    this.name = guest.name;
    this.balloonBase = layout.balloonBase;
    this.#plugged = new Array<boolean>(layout.blocks).fill(true);
  }

  async addVgpu(vendor: VgpuVendor, type: string, name: string): Promise<Vgpu> {
    if (this.#down) throw new KernelError("ESRCH", "vm-shut-down", { vm: this.name });
    const existing = [...this.#entries.values()];
    if (existing.some((e) => e.vdev.name === name) || (vendor.capabilities.onePerVm && existing.length > 0)) throw new KernelError("EEXIST", "vgpu-attach-refused", { vgpu: name, vm: this.name });
    const adapter = this.platform.adapter;
    const vdev = Object.freeze({ name });
    const vmName = adapter.attachVgpu(vdev, this.guest.domid);
    this.translate.attach(vmName, vdev);
    const pins = adapter.guestPins(vdev) as XenGuestPins;
    // The services and the vGPU refer to each other: the services reach the entry through this cell.
    const cell: { entry?: VgpuEntry } = {};
    let vgpu: Vgpu;
    try {
      vgpu = vendor.create(type, name, this.#services(vdev, pins, cell));
    } catch (e) {
      this.translate.detach(vmName, vdev);
      adapter.detachVgpu(vdev);
      throw e;
    }
    const entry: VgpuEntry = { vgpu, vdev, vendor, pins, open: true };
    cell.entry = entry;
    this.tracker.attach(name, vgpu);
    try {
      await vgpu.open();
    } catch (e) {
      this.#detach(entry);
      vendor.destroy(vgpu);
      throw e;
    }
    this.#entries.set(vgpu, entry);
    return vgpu;
  }

  async removeVgpu(vgpu: Vgpu): Promise<void> {
    const entry = this.#entries.get(vgpu);
    if (entry === undefined) return;
    this.#entries.delete(vgpu);
    // The device model lets go of the vGPU whatever close said; a vGPU that failed to close is not destroyed.
    try {
      await vgpu.close();
    } catch (e) {
      this.#detach(entry);
      throw e;
    }
    this.#detach(entry);
    entry.vendor.destroy(vgpu);
  }

  #detach(entry: VgpuEntry): void {
    entry.open = false;
    this.tracker.detach(entry.vdev.name);
    this.translate.detach(this.name, entry.vdev);
    this.platform.adapter.detachVgpu(entry.vdev);
  }

  guestWrite(gpa: bigint, data: Uint8Array): number {
    return this.guest.vcpuWrite(gpa, data);
  }

  guestRead(gpa: bigint, out: Uint8Array): number {
    return this.guest.vcpuRead(gpa, out);
  }

  async balloonOut(firstBlock: number, count: number): Promise<bigint | number> {
    if (!this.#blocksAre(firstBlock, count, true)) return -ERRNO.EINVAL;
    const { blockPages } = this.layout;
    let total = 0n;
    for (let b = firstBlock; b < firstBlock + count; b++) {
      const first = this.#blockGfn(b);
      // The device model tells each vGPU first, while its translations of the block are still valid ...
      for (const entry of [...this.#entries.values()]) {
        if (!entry.open) continue;
        this.platform.stats.dmaUnmapCalls++;
        try {
          await entry.vgpu.dmaUnmap(BigInt(first) << 12n, BigInt(blockPages) << 12n);
        } catch {
          return -ERRNO.EIO;
        }
        this.platform.stats.pinsLeftAfterDmaUnmap += pinnedIn(entry.pins, first, blockPages);
      }
      // ... then Xen changes the P2M; the adapter's invalidation reaches the core before this returns,
      // and the core revokes whatever translation of the block a vGPU kept.
      const live = this.translate.liveCount();
      const removed = this.guest.decreaseReservation(first, blockPages);
      this.platform.stats.revokedByP2mChange += live - this.translate.liveCount();
      this.#plugged[b] = false;
      total += BigInt(removed) << 12n;
    }
    return total;
  }

  async balloonIn(firstBlock: number, count: number): Promise<number> {
    if (!this.#blocksAre(firstBlock, count, false)) return -ERRNO.EINVAL;
    const { blockPages, superpages } = this.layout;
    for (let b = firstBlock; b < firstBlock + count; b++) {
      const first = this.#blockGfn(b);
      const done = this.guest.populatePhysmap(first, blockPages, superpages);
      if (done !== blockPages) {
        this.guest.decreaseReservation(first, done);
        return -ERRNO.ENOMEM;
      }
      this.#plugged[b] = true;
    }
    return 0;
  }

  async shutdown(): Promise<void> {
    if (this.#down) return;
    for (const vgpu of [...this.#entries.keys()]) await this.removeVgpu(vgpu);
    this.#down = true;
    this.translate.dispose();
    this.tracker.dispose();
    const table = this.platform.adapter.pinTable(this.guest.domid);
    if (table !== undefined && table.pins > 0) this.platform.stats.pinsSweptAtShutdown += new XenGuestPins(this.platform.adapter.privcmd, table).releaseAll();
    this.platform.xen.destroyDomain(this.guest.domid);
    this.vmm.exit();
    this.onShutdown();
  }

  #blockGfn(block: number): number {
    return Number(this.balloonBase! >> 12n) + block * this.layout.blockPages;
  }

  #blocksAre(first: number, count: number, plugged: boolean): boolean {
    if (this.balloonBase === undefined || this.#down) return false;
    if (!(Number.isInteger(first) && Number.isInteger(count) && first >= 0 && count >= 1 && first + count <= this.#plugged.length)) return false;
    for (let b = first; b < first + count; b++) if (this.#plugged[b] !== plugged) return false;
    return true;
  }

  #services(vdev: { readonly name: string }, pins: XenGuestPins, cell: { entry?: VgpuEntry }): VgpuServices {
    const platform = this.platform;
    const kernel = platform.host.kernel;
    const translate = this.translate;
    const tracker = this.tracker;
    const guest = this.guest;
    const vmm = this.vmm;
    const name = vdev.name;
    const range = new Float64Array(VFIO_PIN_PAGES_MAX_ENTRIES);
    const isOpen = (what: string): boolean => !kernel.warnOn(cell.entry?.open !== true, what, "device not open", { device: name });
    const checkPin = (npage: number, out: Uint32Array): void => {
      if (!(out instanceof Uint32Array) || !Number.isInteger(npage) || npage <= 0) throw new KernelError("EINVAL", "pin-bad-arguments", { npage });
      if (!isOpen("xen_pin_pages")) throw new KernelError("EINVAL", "pin-device-not-open");
      if (npage > VFIO_PIN_PAGES_MAX_ENTRIES) throw new KernelError("E2BIG", "pin-too-many-pages", { npage });
      if (out.length < npage) throw new KernelError("EFAULT", "pin-output-too-short", { npage, length: out.length });
    };
    const fillRange = (gfn: number, npage: number): Float64Array => {
      for (let i = 0; i < npage; i++) range[i] = gfn + i;
      return range;
    };
    const unpinOk = (npage: number): boolean =>
      isOpen("xen_unpin_pages") && !kernel.warnOn(!Number.isInteger(npage) || npage <= 0 || npage > VFIO_PIN_PAGES_MAX_ENTRIES, "xen_unpin_pages", "bad npage", { npage });
    return {
      vm: this.name,
      parentDevice: platform.parentDevice,
      pinPages: (gfn, npage, prot, out) => {
        checkPin(npage, out);
        pins.pin(fillRange(gfn, npage), npage, (prot & IOMMU_WRITE) !== 0, out);
        return npage;
      },
      unpinPages: (gfn, npage) => {
        if (unpinOk(npage)) pins.unpin(fillRange(gfn, npage), npage);
      },
      pinPagesArray: (gfns, npage, prot, out) => {
        checkPin(npage, out);
        if (gfns.length < npage) throw new KernelError("EFAULT", "pin-array-too-short", { npage });
        pins.pin(gfns, npage, (prot & IOMMU_WRITE) !== 0, out);
        return npage;
      },
      unpinPagesArray: (gfns, npage) => {
        if (!Number.isInteger(npage) || npage <= 0) throw new KernelError("EINVAL", "unpin-bad-arguments", { npage });
        if (npage > VFIO_PIN_PAGES_MAX_ENTRIES) throw new KernelError("E2BIG", "unpin-too-many-pages", { npage });
        const n = Math.min(npage, gfns.length);
        pins.unpin(gfns, n);
        return n;
      },
      dmaRw: (gpa, data, write) => dmaRw(platform.host, guest, gpa, data, write),
      translate: (frames, options) => translate.translate(vdev, frames, options),
      release: (handle) => translate.release(handle),
      checkIsolation: (visible) => translate.checkIsolation(vdev, platform.parentDevice, visible),
      protect: (gfn) => (cell.entry?.open === true ? tracker.protect(name, gfn) : -ERRNO.ESRCH),
      unprotect: (gfn) => (cell.entry?.open === true ? tracker.unprotect(name, gfn) : -ERRNO.ESRCH),
      injectIrq: () => vmm.alive && guest.state === "running",
    };
  }
}

/** Pins a vGPU's pin port holds in [first, first + n) of its guest's table. */
function pinnedIn(pins: XenGuestPins, first: number, n: number): number {
  const count = pins.table.count;
  let left = 0;
  for (let g = first; g < first + n && g < count.length; g++) left += count[g]!;
  return left;
}

/**
 * Copies to or from guest memory through the P2M: each frame by a referenced
 * lookup, the bytes through host physical memory, the reference dropped.
 * -EINVAL outside guest RAM (as vfio_dma_rw outside every mapping), -EAGAIN
 * for a paged-out frame (its populate is started), -ESRCH once the guest is
 * not running; the bytes before the failing frame were copied.
 */
function dmaRw(host: Host, guest: XenDomain, gpa: bigint, data: Uint8Array, write: boolean): void {
  if (!(data instanceof Uint8Array) || data.length <= 0) throw new KernelError("EINVAL", "rw-bad-arguments");
  if (guest.state !== "running") throw xenError("ESRCH", "guest-not-running", { api: "domain", status: -ERRNO.ESRCH, name: "-ESRCH" }, { domid: guest.domid });
  for (let done = 0; done < data.length; ) {
    const at = gpa + BigInt(done);
    const gfn = Number(at >> 12n);
    const offset = Number(at & 0xfffn);
    const n = Math.min(data.length - done, PAGE_SIZE - offset);
    const mfn = guest.getPageFromGfn(gfn, write);
    if (mfn < 0) {
      if (mfn === LOOKUP_PAGED) throw xenError("EAGAIN", "rw-frame-paged-out", { api: "p2m", status: -ERRNO.ENOENT, name: "-ENOENT" }, { gpa: at, done });
      throw xenError("EINVAL", "rw-outside-guest-ram", { api: "p2m", status: -ERRNO.EINVAL, name: "-EINVAL" }, { gpa: at, done });
    }
    const part = data.subarray(done, done + n);
    if (write) host.phys.write(mfn, offset, part);
    else host.phys.read(mfn, offset, part);
    guest.putPage(mfn);
    done += n;
  }
}
