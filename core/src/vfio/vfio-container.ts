/**
 * A VFIO container: the file behind an open /dev/vfio/vfio, holding groups and,
 * once VFIO_SET_IOMMU succeeds, a type1 backend (drivers/vfio/container.c).
 *
 * Invariants: the backend exists only while at least one group is attached;
 * every group in `groups` is attached to the backend when there is one.
 */
import type { Process, OpenFile } from "../host/process.js";
import type { KernelLog } from "../host/kernel-log.js";
import { Type1Iommu, checkExtension, VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, type Type1Deps } from "./type1/type1-iommu.js";
import type { VfioGroupNode } from "./vfio-device.js";
import { VfioError, isKernelError } from "../errors/kernel-error.js";
import { ERRNO } from "../errors/errno.js";
import { VFIO_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_GET_API_VERSION, VFIO_SET_IOMMU } from "./uapi.js";
import { type1Ioctl } from "./type1/type1-ioctl.js";

export class VfioContainer {
  readonly groups: VfioGroupNode[] = [];
  iommu: Type1Iommu | undefined;
  /** The /dev/vfio/vfio file is still open; with the groups, it keeps the container alive. */
  fileOpen = true;
  #onBackend: ((iommu: Type1Iommu) => void)[] = [];

  constructor(
    private readonly deps: Type1Deps,
    private readonly log: KernelLog,
  ) {}

  /** Subscribe to backends as they are created (the host's statistics and traces use it). */
  onBackendCreated(fn: (iommu: Type1Iommu) => void): void {
    this.#onBackend.push(fn);
  }

  /** vfio_ioctl_set_iommu. */
  setIommu(arg: number, current: Process): void {
    if (this.groups.length === 0 || this.iommu !== undefined) throw new VfioError("EINVAL", "set-iommu-no-group-or-already-set");
    if (checkExtension(undefined, arg) <= 0) throw new VfioError("ENODEV", "set-iommu-unsupported-type", { type: arg });
    if (arg !== VFIO_TYPE1_IOMMU && arg !== VFIO_TYPE1v2_IOMMU) throw new VfioError("EINVAL", "set-iommu-not-a-type1-type", { type: arg });
    const iommu = new Type1Iommu(arg === VFIO_TYPE1v2_IOMMU ? "TYPE1v2" : "TYPE1", this.deps);
    const attached: VfioGroupNode[] = [];
    try {
      for (const node of this.groups) {
        iommu.attachGroup(node.iommuGroup, current);
        attached.push(node);
      }
    } catch (e) {
      for (const node of attached.reverse()) iommu.detachGroup(node.iommuGroup);
      iommu.release();
      throw e;
    }
    this.iommu = iommu;
    for (const fn of this.#onBackend) fn(iommu);
  }

  /** vfio_container_attach_group. */
  attachGroup(node: VfioGroupNode, current: Process): void {
    if (this.iommu !== undefined) this.iommu.attachGroup(node.iommuGroup, current);
    node.container = this;
    node.containerUsers = 1;
    this.groups.push(node);
  }

  /** vfio_group_detach_container: never fails; the last group takes the backend with it. */
  detachGroup(node: VfioGroupNode): void {
    this.iommu?.detachGroup(node.iommuGroup);
    node.container = undefined;
    node.containerUsers = 0;
    this.groups.splice(this.groups.indexOf(node), 1);
    if (this.iommu !== undefined && this.groups.length === 0) {
      this.iommu.release();
      this.iommu = undefined;
    }
  }

  async ioctl(request: number, arg: unknown, current: Process): Promise<number> {
    switch (request) {
      case VFIO_GET_API_VERSION:
        return VFIO_API_VERSION;
      case VFIO_CHECK_EXTENSION:
        return typeof arg === "number" ? checkExtension(this.iommu, arg) : 0;
      case VFIO_SET_IOMMU:
        try {
          // arg is an unsigned long: a value that names no type matches no driver (-ENODEV), after the group checks.
          this.setIommu(typeof arg === "number" ? arg : -1, current);
          return 0;
        } catch (e) {
          if (isKernelError(e)) return -e.errno;
          throw e;
        }
      default:
        if (this.iommu === undefined) return -ERRNO.EINVAL;
        return type1Ioctl(this.iommu, request, arg, current);
    }
  }
}

/** The open file of /dev/vfio/vfio. Closing it leaves the container to its groups. */
export class ContainerFile implements OpenFile {
  constructor(
    readonly container: VfioContainer,
    private readonly onRelease: () => void = () => {},
  ) {}

  ioctl(request: number, arg: unknown, current: Process): Promise<number> {
    return this.container.ioctl(request, arg, current);
  }

  release(): void {
    this.container.fileOpen = false;
    this.onRelease();
  }
}
