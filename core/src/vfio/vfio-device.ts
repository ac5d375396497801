/**
 * A VFIO device as the vendor driver registers it, and its group node.
 *
 * An emulated (mdev) device is registered with `registerEmulatedDevice` and
 * gets a singleton emulated group; only a device whose ops include `dmaUnmap`
 * (Gen C) or whose driver registered a notifier (Gen A/B) may pin.
 */
import type { Iova } from "../address/address.js";
import type { IommuGroup } from "../iommu/iommu-group.js";
import type { Type1Device } from "./type1/type1-iommu.js";
import type { VfioContainer } from "./vfio-container.js";
import type { KernelLog } from "../host/kernel-log.js";

export interface VfioDeviceOps {
  /** open_device: the first open of the device fd. A throw fails the open. */
  openDevice?(vdev: VfioDevice): void | Promise<void>;
  /** close_device: the last close. Must release every pin and DMA mapping. */
  closeDevice?(vdev: VfioDevice): void | Promise<void>;
  /** dma_unmap: on return, no page of [iova, iova + length) may remain pinned by this device. */
  dmaUnmap?(vdev: VfioDevice, iova: Iova, length: bigint): void | Promise<void>;
  /** Device-fd ioctls (regions, reset, display, migration); -ENOTTY when absent. */
  ioctl?(vdev: VfioDevice, request: number, arg: unknown): number | Promise<number>;
}

export class VfioGroupNode {
  container: VfioContainer | undefined;
  /** container_users: 1 for the group, plus one per open device. */
  containerUsers = 0;
  opened = false;
  readonly devices: VfioDevice[] = [];

  constructor(
    /** The N of /dev/vfio/N. */
    readonly number: number,
    readonly iommuGroup: IommuGroup,
  ) {}
}

export class VfioDevice implements Type1Device {
  openCount = 0;
  readonly dmaUnmap?: (iova: Iova, length: bigint) => void | Promise<void>;

  constructor(
    readonly name: string,
    readonly node: VfioGroupNode,
    readonly ops: VfioDeviceOps,
    /** The host's kernel log: WARNs of the vendor API land there, and a crashed host refuses calls. */
    readonly kernel: KernelLog,
  ) {
    // eslint-disable-next-line @typescript-eslint/unbound-method -- invoked below with .call(ops, ...)
    const dmaUnmap = ops.dmaUnmap;
    if (dmaUnmap !== undefined) this.dmaUnmap = (iova, length) => dmaUnmap.call(ops, this, iova, length);
  }

  get group(): IommuGroup {
    return this.node.iommuGroup;
  }

  get isOpen(): boolean {
    return this.openCount > 0;
  }

  get container(): VfioContainer | undefined {
    return this.node.container;
  }
}
