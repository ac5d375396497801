/**
 * The VFIO subsystem of one host: the device nodes /dev/vfio/vfio (a new
 * container per open) and /dev/vfio/N (one group each), device registration
 * for vendor drivers, and the group and device file operations of
 * drivers/vfio/group.c.
 *
 * Lock order, for readers of the kernel: group_lock -> container group_lock ->
 * iommu->lock. In the model every step is synchronous except the vendor's
 * open/close callbacks and type1's invalidation callbacks.
 */
import type { OpenFile, Process } from "../host/process.js";
import type { KernelLog } from "../host/kernel-log.js";
import { IommuGroup } from "../iommu/iommu-group.js";
import type { IommuHardware, ReservedRegion } from "../iommu/iommu-domain.js";
import { VfioContainer, ContainerFile } from "./vfio-container.js";
import { VfioDevice, VfioGroupNode, type VfioDeviceOps } from "./vfio-device.js";
import type { Type1Deps, Type1Iommu } from "./type1/type1-iommu.js";
import { ERRNO } from "../errors/errno.js";
import { VfioError, isKernelError } from "../errors/kernel-error.js";
import {
  SIZEOF,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_GROUP_UNSET_CONTAINER,
  requireFields,
  u32,
  userStruct,
} from "./uapi.js";

export class VfioSubsystem {
  readonly groups = new Map<number, VfioGroupNode>();
  readonly containers = new Set<VfioContainer>();
  #nextGroup = 0;
  readonly #backendListeners: ((iommu: Type1Iommu) => void)[] = [];

  constructor(
    private readonly deps: Type1Deps,
    private readonly log: KernelLog,
  ) {}

  /** Called with every type1 backend a container creates. */
  onBackendCreated(fn: (iommu: Type1Iommu) => void): void {
    this.#backendListeners.push(fn);
  }

  /** A PCI function bound to vfio-pci: an IOMMU-backed group. Returns its /dev/vfio/N. */
  addIommuGroup(hw: IommuHardware, reservedRegions: readonly ReservedRegion[] = []): VfioGroupNode {
    return this.#addGroup(IommuGroup.backedBy(hw, reservedRegions));
  }

  /** vfio_register_emulated_iommu_dev: a mediated device in its own emulated group. */
  registerEmulatedDevice(name: string, ops: VfioDeviceOps): VfioDevice {
    const node = this.#addGroup(IommuGroup.emulated());
    const device = new VfioDevice(name, node, ops, this.log);
    node.devices.push(device);
    return device;
  }

  /** Adds a device to an IOMMU-backed group (e.g. a passthrough function or an SR-IOV VF). */
  addDevice(node: VfioGroupNode, name: string, ops: VfioDeviceOps = {}): VfioDevice {
    const device = new VfioDevice(name, node, ops, this.log);
    node.devices.push(device);
    return device;
  }

  #addGroup(group: IommuGroup): VfioGroupNode {
    const node = new VfioGroupNode(this.#nextGroup++, group);
    this.groups.set(node.number, node);
    return node;
  }

  /** open() of a /dev/vfio path; returns the file or a negative errno. */
  open(path: string): OpenFile | number {
    if (path === "/dev/vfio/vfio") {
      const container = new VfioContainer(this.deps, this.log);
      container.onBackendCreated((iommu) => this.#backendListeners.forEach((fn) => fn(iommu)));
      this.containers.add(container);
      return new ContainerFile(container, () => this.forgetContainer(container));
    }
    const m = /^\/dev\/vfio\/(\d+)$/.exec(path);
    const node = m === null ? undefined : this.groups.get(Number(m[1]));
    if (node === undefined) return -ERRNO.ENOENT;
    if (node.opened) return -ERRNO.EBUSY;
    node.opened = true;
    return new GroupFile(this, node);
  }

  /** Looks up the container behind an fd of `current`, for VFIO_GROUP_SET_CONTAINER. */
  containerOfFd(current: Process, fd: number): VfioContainer | number {
    const file = current.files.get(fd);
    if (file === undefined) return -ERRNO.EBADF;
    return file instanceof ContainerFile ? file.container : -ERRNO.EBADFD;
  }

  /** A container lives while its file is open or a group holds it (vfio_container_put). */
  forgetContainer(container: VfioContainer): void {
    if (container.groups.length === 0 && !container.fileOpen) this.containers.delete(container);
  }
}

class GroupFile implements OpenFile {
  constructor(
    private readonly vfio: VfioSubsystem,
    readonly node: VfioGroupNode,
  ) {}

  async ioctl(request: number, arg: unknown, current: Process): Promise<number> {
    try {
      switch (request) {
        case VFIO_GROUP_GET_STATUS:
          return this.#getStatus(arg);
        case VFIO_GROUP_SET_CONTAINER:
          return this.#setContainer(arg, current);
        case VFIO_GROUP_UNSET_CONTAINER:
          return this.#unsetContainer();
        case VFIO_GROUP_GET_DEVICE_FD:
          return await this.#getDeviceFd(arg, current);
        default:
          return -ERRNO.ENOTTY;
      }
    } catch (e) {
      if (isKernelError(e)) return -e.errno;
      throw e;
    }
  }

  #getStatus(arg: unknown): number {
    const s = userStruct(arg);
    requireFields(s, ["argsz", "flags"]);
    if (u32(s, "argsz") < SIZEOF.groupStatusMinsz) return -ERRNO.EINVAL;
    s["flags"] = this.node.container !== undefined ? VFIO_GROUP_FLAGS_CONTAINER_SET | VFIO_GROUP_FLAGS_VIABLE : VFIO_GROUP_FLAGS_VIABLE;
    return 0;
  }

  /** vfio_group_ioctl_set_container: get_user, fdget (a negative fd is -EBADF too), already set, then the file's type. */
  #setContainer(arg: unknown, current: Process): number {
    if (typeof arg !== "number" || !Number.isInteger(arg)) return -ERRNO.EFAULT;
    const container = this.vfio.containerOfFd(current, arg);
    if (container === -ERRNO.EBADF) return container;
    if (this.node.container !== undefined) return -ERRNO.EINVAL;
    if (typeof container === "number") return container;
    container.attachGroup(this.node, current);
    return 0;
  }

  #unsetContainer(): number {
    const container = this.node.container;
    if (container === undefined) return -ERRNO.EINVAL;
    if (this.node.containerUsers !== 1) return -ERRNO.EBUSY;
    container.detachGroup(this.node);
    this.vfio.forgetContainer(container);
    return 0;
  }

  async #getDeviceFd(arg: unknown, current: Process): Promise<number> {
    if (typeof arg !== "string") return -ERRNO.EFAULT;
    const device = this.node.devices.find((d) => d.name === arg);
    if (device === undefined) return -ERRNO.ENODEV;
    const container = this.node.container;
    if (container?.iommu === undefined) return -ERRNO.EINVAL;
    if (device.openCount === 0) {
      this.node.containerUsers++;
      try {
        await device.ops.openDevice?.(device);
      } catch (e) {
        this.node.containerUsers--;
        if (isKernelError(e)) return -e.errno;
        throw e;
      }
      container.iommu.registerDevice(device);
    }
    device.openCount++;
    return current.installFile(new DeviceFile(device, this.vfio));
  }

  /** Device fds hold the group open, so the container is left when the last of them is gone. */
  release(): void {
    this.node.opened = false;
    releaseGroupIfIdle(this.vfio, this.node);
  }
}

/** vfio_group_fops_release: a closed group with no open device leaves its container. */
function releaseGroupIfIdle(vfio: VfioSubsystem, node: VfioGroupNode): void {
  const container = node.container;
  if (node.opened || container === undefined || node.containerUsers !== 1) return;
  container.detachGroup(node);
  vfio.forgetContainer(container);
}

/** An open device fd. The last close calls close_device, then leaves the container's device list. */
export class DeviceFile implements OpenFile {
  #closed = false;

  constructor(
    readonly device: VfioDevice,
    private readonly vfio: VfioSubsystem,
  ) {}

  async ioctl(request: number, arg: unknown): Promise<number> {
    // eslint-disable-next-line @typescript-eslint/unbound-method -- invoked below with .call(this.device.ops, ...)
    const handler = this.device.ops.ioctl;
    if (handler === undefined) return -ERRNO.ENOTTY;
    try {
      return await handler.call(this.device.ops, this.device, request, arg);
    } catch (e) {
      if (isKernelError(e)) return -e.errno;
      throw e;
    }
  }

  /** close(): resolves once the vendor's close_device has run. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const device = this.device;
    // As vfio_df_close: the last close runs close_device while open_count is still 1, so it may unpin.
    if (device.openCount > 1) {
      device.openCount--;
      return;
    }
    try {
      await device.ops.closeDevice?.(device);
    } finally {
      device.openCount--;
      device.container?.iommu?.unregisterDevice(device);
      device.node.containerUsers--;
      releaseGroupIfIdle(this.vfio, device.node);
    }
  }

  release(): void {
    void this.close();
  }
}

export { VfioError };
