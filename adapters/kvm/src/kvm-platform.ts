/**
 * The KVM platform: VMs as QEMU builds them, with vGPUs as mediated devices.
 *
 * A VM is a VMM process with guest RAM, a KVM VM with memslots for it, and a
 * VFIO type1 container that the QEMU-like listener fills with MAP_DMA of every
 * RAM section (iova = GPA). Adding a vGPU registers an mdev whose device ops
 * are the vendor's vGPU, puts its group in the container (setting TYPE1v2 on
 * the first one, which replays nothing: the container has no IOMMU-backed
 * group), maps guest RAM, and opens the device fd, which opens the vGPU after
 * the kvmgt attach rules (-ESRCH, -EEXIST). The vGPU's services pin through
 * VFIO, track writes through KVM page-track, and map for its parent device
 * through the translate API over this adapter. The VM's dirty log is type1's
 * bitmap on its container, read by the VMM's listener.
 *
 * Teardown order is the VMM's: device fds first (the vendor releases its pins
 * in close), then groups, then the container.
 */
import { container as rootContainer, type DependencyContainer } from "tsyringe";
import {
  DeviceAddressSpaces,
  ERRNO,
  errnoName,
  type ErrnoName,
  IHypervisorAdapter,
  KernelError,
  TranslateApi,
  VfioError,
  VfioGuestPins,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_PIN_PAGES_MAX_ENTRIES,
  VFIO_SET_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  iova,
  vfioDmaRw,
  vfioPinPages,
  vfioUnpinPages,
  type Host,
  type DeviceDirtyLog,
  type PlatformVm,
  type Process,
  type VfioDevice,
  type Vgpu,
  type VgpuPlatform,
  type VgpuServices,
  type VgpuVendor,
  type VmSpec,
} from "@vgpu-iommu/core";
import { KvmVm } from "./kvm-vm.js";
import { QemuVmm } from "./memory-listener.js";
import { VgpuAttachments } from "./vgpu-attachment.js";
import type { KvmAdapter } from "./kvm-adapter.js";

const BALLOON_SECTION = "virtio-mem0";

export class KvmPlatform implements VgpuPlatform {
  readonly #attachments = new VgpuAttachments();
  /** The scope every VM's child container descends from: it holds what the VMs share. */
  readonly #scope: DependencyContainer;

  constructor(
    readonly host: Host,
    readonly adapter: KvmAdapter,
    parent: DependencyContainer = rootContainer,
  ) {
    this.#scope = parent.createChildContainer();
    // One parent GPU serves vGPUs of several VMs: the isolation checker must see all their addresses.
    this.#scope.register(DeviceAddressSpaces, { useValue: new DeviceAddressSpaces() });
    this.#scope.register(IHypervisorAdapter, { useValue: adapter });
  }

  async createVm(spec: VmSpec): Promise<PlatformVm> {
    const vmm = this.host.spawn({ comm: `qemu-${spec.name}`, ...(spec.memlockBytes === undefined ? {} : { memlockBytes: spec.memlockBytes }), capabilities: spec.capIpcLock === true ? ["CAP_IPC_LOCK"] : [] });
    const vm = new KvmVm(this.host, vmm, { name: spec.name, generation: this.adapter.options.generation ?? "current" });
    const qemu = new QemuVmm(this.host, vmm, vm, undefined);
    let r = await qemu.boot({ ramBytes: spec.ramBytes, ...(spec.backing === undefined ? {} : { backing: spec.backing }) });
    let balloonBase: bigint | undefined;
    if (r === 0 && spec.balloon !== undefined) {
      r = await qemu.addVirtioMem(BALLOON_SECTION, spec.balloon.bytes, spec.balloon.blockBytes, spec.backing ?? "scattered-4k");
      balloonBase = qemu.section(BALLOON_SECTION).gpa;
    }
    if (r !== 0) {
      vmm.exit();
      throw new VfioError("ENOMEM", "vm-boot-failed", { errno: r });
    }
    vm.on("memslotChanged", (e) => {
      if (e.change === "delete" || e.change === "move") this.adapter.invalidate({ vm: spec.name, firstGfn: e.baseGfn, npages: e.npages, reason: `memslot-${e.change}` });
    });
    // One child container per VM: its translate API and anything a plugin registers for it.
    const translate = this.#scope.createChildContainer().resolve(TranslateApi);
    return new KvmPlatformVm(this.host, vmm, vm, qemu, translate, this.#attachments, this.adapter, balloonBase);
  }
}

class KvmPlatformVm implements PlatformVm {
  readonly name: string;
  readonly dirtyLog: DeviceDirtyLog;
  #containerFd: number | undefined;
  readonly #vgpus = new Map<Vgpu, { vdev: VfioDevice; groupFd: number; deviceFd: number; vendor: VgpuVendor }>();

  constructor(
    private readonly host: Host,
    readonly vmm: Process,
    readonly vm: KvmVm,
    readonly qemu: QemuVmm,
    readonly translate: TranslateApi,
    private readonly attachments: VgpuAttachments,
    private readonly adapter: KvmAdapter,
    readonly balloonBase: bigint | undefined,
  ) {
    this.name = vm.name;
    this.dirtyLog = { start: () => qemu.setDirtyLogging(true), stop: () => qemu.setDirtyLogging(false), read: () => qemu.syncDirtyLog() };
  }

  async addVgpu(vendor: VgpuVendor, type: string, name: string): Promise<Vgpu> {
    // The device ops and the vGPU refer to each other: the ops are built first and reach the vGPU through this cell.
    const cell: { vgpu?: Vgpu } = {};
    const vdev = this.host.vfio.registerEmulatedDevice(name, {
      openDevice: async () => {
        const a = this.attachments.attach(this.vm, name, this.vmm, vendor.capabilities.onePerVm, {
          onGuestWrite: (gpa, data) => cell.vgpu!.onGuestWrite(gpa, data),
          onMemslotRemoved: (first, n) => cell.vgpu!.onMemslotRemoved(first, n),
        });
        if (typeof a === "number") throw new KernelError(a === -ERRNO.EEXIST ? "EEXIST" : "ESRCH", "vgpu-attach-refused", { vgpu: name });
        try {
          await cell.vgpu!.open();
        } catch (e) {
          this.attachments.detach(name);
          throw e;
        }
      },
      closeDevice: async () => {
        await cell.vgpu!.close();
        this.attachments.detach(name);
      },
      dmaUnmap: (_vdev, start, length) => cell.vgpu!.dmaUnmap(start, length),
    });
    this.translate.attach(this.name, vdev);
    const vgpu = vendor.create(type, name, this.#services(vdev, name));
    cell.vgpu = vgpu;
    const groupFd = this.host.open(this.vmm, `/dev/vfio/${vdev.node.number}`);
    const fresh = this.#containerFd === undefined;
    if (fresh) this.#containerFd = this.host.open(this.vmm, "/dev/vfio/vfio");
    await this.#check(this.host.ioctl(this.vmm, groupFd, VFIO_GROUP_SET_CONTAINER, this.#containerFd), "VFIO_GROUP_SET_CONTAINER");
    if (fresh) {
      await this.#check(this.host.ioctl(this.vmm, this.#containerFd!, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), "VFIO_SET_IOMMU");
      await this.#check(this.qemu.attachContainer(this.#containerFd!), "MAP_DMA of guest RAM");
    }
    const deviceFd = await this.host.ioctl(this.vmm, groupFd, VFIO_GROUP_GET_DEVICE_FD, name);
    if (deviceFd < 0) {
      await this.host.close(this.vmm, groupFd);
      vendor.destroy(vgpu);
      this.translate.detach(this.name, vdev);
      throw new KernelError(errnoCode(deviceFd), "vgpu-open-failed", { vgpu: name });
    }
    this.#vgpus.set(vgpu, { vdev, groupFd, deviceFd, vendor });
    return vgpu;
  }

  async removeVgpu(vgpu: Vgpu): Promise<void> {
    const entry = this.#vgpus.get(vgpu);
    if (entry === undefined) return;
    this.#vgpus.delete(vgpu);
    await this.host.close(this.vmm, entry.deviceFd);
    await this.host.close(this.vmm, entry.groupFd);
    this.translate.detach(this.name, entry.vdev);
    entry.vendor.destroy(vgpu);
    if (this.#vgpus.size === 0 && this.#containerFd !== undefined) {
      await this.host.close(this.vmm, this.#containerFd);
      this.#containerFd = undefined;
      this.qemu.containerFd = undefined;
    }
  }

  guestWrite(gpa: bigint, data: Uint8Array): number {
    return this.vm.guestWrite(gpa, data);
  }

  guestRead(gpa: bigint, out: Uint8Array): number {
    return this.vm.readGuest(gpa, out);
  }

  balloonOut(firstBlock: number, count: number): Promise<bigint | number> {
    return this.qemu.unplugBlocks(BALLOON_SECTION, firstBlock, count);
  }

  balloonIn(firstBlock: number, count: number): Promise<number> {
    return this.qemu.plugBlocks(BALLOON_SECTION, firstBlock, count);
  }

  async shutdown(): Promise<void> {
    for (const vgpu of [...this.#vgpus.keys()]) await this.removeVgpu(vgpu);
    this.translate.dispose();
    this.vmm.exit();
  }

  #services(vdev: VfioDevice, name: string): VgpuServices {
    const pins = new VfioGuestPins(vdev);
    const translate = this.translate;
    const attachments = this.attachments;
    const vmm = this.vmm;
    return {
      vm: this.name,
      parentDevice: this.adapter.parentDevice,
      pinPages: (gfn, npage, prot, out) => vfioPinPages(vdev, iova(BigInt(gfn) << 12n), npage, prot, out),
      unpinPages: (gfn, npage) => vfioUnpinPages(vdev, iova(BigInt(gfn) << 12n), npage),
      pinPagesArray: (gfns, npage, prot, out) => {
        if (npage > VFIO_PIN_PAGES_MAX_ENTRIES) throw new VfioError("E2BIG", "pin-too-many-pages", { npage });
        pins.pin(gfns, npage, (prot & 2) !== 0, out);
        return npage;
      },
      unpinPagesArray: (gfns, npage) => {
        pins.unpin(gfns, npage);
        return npage;
      },
      dmaRw: (gpa, data, write) => vfioDmaRw(vdev, iova(gpa), data, write),
      translate: (frames, options) => translate.translate(vdev, frames, options),
      release: (handle) => translate.release(handle),
      checkIsolation: (visible) => translate.checkIsolation(vdev, this.adapter.parentDevice, visible),
      protect: (gfn) => attachments.protect(name, gfn),
      unprotect: (gfn) => attachments.unprotect(name, gfn),
      injectIrq: () => vmm.alive,
    };
  }

  async #check(p: Promise<number>, what: string): Promise<void> {
    const r = await p;
    if (r < 0) throw new KernelError(errnoCode(r), "vm-setup-failed", { step: what });
  }
}

const errnoCode = (r: number): ErrnoName => errnoName(r) ?? "EIO";
