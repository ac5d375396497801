/**
 * Stacks for the bench, built directly (the test Fixture is sized for small
 * guests): a host, a QEMU-like process with guest RAM already faulted in, and a
 * type1v2 container holding either one IOMMU-backed group (a VT-d function) or
 * one mdev whose dmaUnmap unpins nothing (the bench unpins explicitly).
 */
import {
  createHost,
  vfioUnpinPages,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_SET_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  type BackingKind,
  type Host,
  type Hva,
  type Iova,
  type Process,
  type Type1Iommu,
  type VfioDevice,
} from "@vgpu-iommu/core";
import { VTD, X86_MSI } from "@vgpu-iommu/core/testing";

export type ContainerKind = "iommu-backed" | "mdev-only";

export interface BenchStackOptions {
  readonly kind: ContainerKind;
  readonly ramBytes: bigint;
  readonly guestBytes: bigint;
  readonly backing: BackingKind;
  /** Touch every guest page before returning, so no timed step faults a page in. */
  readonly prefault: boolean;
  /** IOVA of the mapping: above the x86 MSI window, inside a 48-bit aperture. */
  readonly iova?: bigint;
}

export class BenchStack {
  readonly npages: number;

  private constructor(
    readonly host: Host,
    readonly qemu: Process,
    readonly guestRam: Hva,
    readonly guestBytes: bigint,
    readonly containerFd: number,
    readonly iova: bigint,
    readonly device: VfioDevice | undefined,
  ) {
    this.npages = Number(guestBytes >> 12n);
  }

  static async create(o: BenchStackOptions): Promise<BenchStack> {
    const host = createHost({ ramBytes: o.ramBytes, seed: 11 });
    const qemu = host.spawn({ comm: "qemu" });
    const guestRam = qemu.mmap({ length: o.guestBytes, backing: o.backing });
    if (o.prefault) {
      const first = Number(guestRam >> 12n);
      const end = first + Number(o.guestBytes >> 12n);
      for (let page = first; page < end; page++) if (qemu.mm.translate(page) === 0) throw new Error("bench: host RAM too small to fault in the guest");
    }
    const containerFd = host.open(qemu, "/dev/vfio/vfio");
    let device: VfioDevice | undefined;
    let groupFd: number;
    if (o.kind === "mdev-only") {
      device = host.vfio.registerEmulatedDevice("mdev0", { dmaUnmap() {} });
      groupFd = host.open(qemu, `/dev/vfio/${device.node.number}`);
    } else {
      const node = host.vfio.addIommuGroup(VTD, [X86_MSI]);
      host.vfio.addDevice(node, "0000:01:00.0");
      groupFd = host.open(qemu, `/dev/vfio/${node.number}`);
    }
    await ok(host.ioctl(qemu, groupFd, VFIO_GROUP_SET_CONTAINER, containerFd), "VFIO_GROUP_SET_CONTAINER");
    await ok(host.ioctl(qemu, containerFd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), "VFIO_SET_IOMMU");
    if (device !== undefined) {
      const fd = await host.ioctl(qemu, groupFd, VFIO_GROUP_GET_DEVICE_FD, "mdev0");
      if (fd < 0) throw new Error(`bench: VFIO_GROUP_GET_DEVICE_FD failed: ${fd}`);
    }
    return new BenchStack(host, qemu, guestRam, o.guestBytes, containerFd, o.iova ?? 1n << 36n, device);
  }

  get iommu(): Type1Iommu {
    const c = [...this.host.vfio.containers][0]!;
    return c.iommu!;
  }

  /** VFIO_IOMMU_MAP_DMA of the whole guest at `iova`. */
  async map(): Promise<void> {
    const arg = { argsz: 32, flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE, vaddr: this.guestRam, iova: this.iova, size: this.guestBytes };
    await ok(this.host.ioctl(this.qemu, this.containerFd, VFIO_IOMMU_MAP_DMA, arg), "VFIO_IOMMU_MAP_DMA");
  }

  /** VFIO_IOMMU_UNMAP_DMA of the whole guest. */
  async unmap(): Promise<void> {
    const arg = { argsz: 24, flags: 0, iova: this.iova, size: this.guestBytes };
    await ok(this.host.ioctl(this.qemu, this.containerFd, VFIO_IOMMU_UNMAP_DMA, arg), "VFIO_IOMMU_UNMAP_DMA");
    if (arg.size !== this.guestBytes) throw new Error(`bench: UNMAP_DMA unmapped ${arg.size} bytes`);
  }

  /** Unpins what a vendor pinned at [iova, iova + npages): used to clean up after a failed run. */
  unpinAll(npages: number): void {
    for (let i = 0; i < npages; i += 512) vfioUnpinPages(this.device!, (this.iova + (BigInt(i) << 12n)) as Iova, Math.min(512, npages - i));
  }

  /** Checks that a step left exactly the expected pins and charges. */
  expectState(what: string, totalPins: number, lockedVm: number): void {
    const pins = this.host.phys.totalPins;
    const locked = this.qemu.mm.lockedVm;
    if (pins !== totalPins || locked !== lockedVm) throw new Error(`bench: after ${what}: totalPins ${pins} (want ${totalPins}), lockedVm ${locked} (want ${lockedVm})`);
    if (this.host.kernel.warnings.length !== 0) throw new Error(`bench: after ${what}: kernel WARN ${JSON.stringify(this.host.kernel.warnings[0])}`);
  }
}

async function ok(p: Promise<number>, what: string): Promise<void> {
  const r = await p;
  if (r !== 0) throw new Error(`bench: ${what} failed: ${r}`);
}
