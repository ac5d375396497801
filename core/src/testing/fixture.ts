/**
 * Test fixtures: a QEMU-like process with guest RAM and a type1 container in
 * one of the variants every core suite runs over (iommufd selftest style):
 * - `mdev-only`: one emulated device, nothing pinned at MAP_DMA;
 * - `iommu-backed`: one vfio-pci group, everything pinned at MAP_DMA;
 * - `mixed`: both, external pins ride on MAP_DMA's charge;
 * - `memlock-limited`: mdev-only with RLIMIT_MEMLOCK of 64 pages.
 *
 * and the steps the suites repeat: pin and unpin through the emulated device
 * (recorded where the default dmaUnmap finds them), UNMAP_DMA, and the leak
 * check at the end. Helpers assert by throwing, so the module needs no test
 * framework.
 */
import { createHost, type Host, type HostOptions } from "../host/host.js";
import type { Process } from "../host/process.js";
import type { BackingKind } from "../host/memory-object.js";
import type { IommuHardware, ReservedRegion } from "../iommu/iommu-domain.js";
import type { VfioDevice, VfioDeviceOps } from "../vfio/vfio-device.js";
import { VFIO_GROUP_GET_DEVICE_FD, VFIO_GROUP_SET_CONTAINER, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, VFIO_SET_IOMMU } from "../vfio/uapi.js";
import { VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL, VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU, type Type1Iommu } from "../vfio/type1/type1-iommu.js";
import type { VfioDma } from "../vfio/type1/vfio-dma.js";
import { addrOfPage, type Hva, type Iova } from "../address/address.js";
import { IOMMU_READ, IOMMU_WRITE, vfioPinPages, vfioUnpinPages } from "../vfio/vendor-api.js";

export const invariantsEnabled = process.env["VGPU_IOMMU_DEBUG"] !== "0";

export interface Leaks {
  readonly pinnedFrames: number;
  readonly lockedVm: number;
  readonly mappings: number;
  readonly externalPins: number;
  readonly warnings: number;
  readonly listeners: number;
  readonly crashed: number;
}

export const NO_LEAKS: Leaks = { pinnedFrames: 0, lockedVm: 0, mappings: 0, externalPins: 0, warnings: 0, listeners: 0, crashed: 0 };

/** What is still held on `host`: every field is 0 when nothing leaked. */
export function hostLeaks(host: Host): Leaks {
  const s = host.stats();
  let listeners = host.kernel.listenerCount();
  for (const b of host.backends) listeners += b.listenerCount();
  return { pinnedFrames: s.pinnedFrames, lockedVm: host.processes.reduce((n, p) => n + p.mm.lockedVm, 0), mappings: s.mappings, externalPins: s.externalPins, warnings: s.warnings, listeners, crashed: s.crashed ? 1 : 0 };
}

/** The IOVA of page `page`. */
export const iovaOf = (page: number): Iova => addrOfPage(page) as Iova;

export type Variant = "mdev-only" | "iommu-backed" | "mixed" | "memlock-limited";
export const VARIANTS: readonly Variant[] = ["mdev-only", "iommu-backed", "mixed", "memlock-limited"];

/** A VT-d-like IOMMU: 48-bit aperture, 4K/2M/1G pages, interrupt remapping. */
export const VTD: IommuHardware = {
  driver: "intel-iommu",
  aperture: { start: 0n, last: (1n << 48n) - 1n },
  pgsizeBitmap: 0x1000n | 0x200000n | 0x40000000n,
  msiIsolation: true,
  enforceCacheCoherency: true,
};

/** The x86 MSI window every VT-d group reports as reserved. */
export const X86_MSI: ReservedRegion = { start: 0xfee00000n, length: 0x100000n, type: "msi" };

export interface FixtureOptions {
  readonly variant: Variant;
  readonly ramBytes?: bigint;
  readonly guestBytes?: bigint;
  readonly backing?: BackingKind;
  readonly v1?: boolean;
  readonly host?: HostOptions;
  /** Ops of the emulated device; a dmaUnmap that unpins what the fixture tracks is supplied by default. */
  readonly deviceOps?: VfioDeviceOps;
}

/** A process with guest RAM and an open, IOMMU-set container, ready for MAP_DMA. */
export class Fixture {
  readonly host: Host;
  readonly qemu: Process;
  readonly guestRam: Hva;
  readonly guestBytes: bigint;
  readonly containerFd: number;
  readonly device: VfioDevice | undefined;
  readonly deviceFd: number | undefined;
  /** Pins the default dmaUnmap knows about, keyed by IOVA page, with their reference counts. */
  readonly pinned: Map<number, number>;
  readonly groupFds: readonly number[];

  private constructor(
    host: Host,
    qemu: Process,
    guestRam: Hva,
    guestBytes: bigint,
    containerFd: number,
    groupFds: readonly number[],
    device: VfioDevice | undefined,
    deviceFd: number | undefined,
    pinned: Map<number, number>,
  ) {
    this.host = host;
    this.qemu = qemu;
    this.guestRam = guestRam;
    this.guestBytes = guestBytes;
    this.containerFd = containerFd;
    this.groupFds = groupFds;
    this.device = device;
    this.deviceFd = deviceFd;
    this.pinned = pinned;
  }

  static async create(options: FixtureOptions): Promise<Fixture> {
    const host = createHost({ ramBytes: options.ramBytes ?? 1n << 30n, seed: 7, ...options.host });
    const limited = options.variant === "memlock-limited";
    const qemu = host.spawn({ comm: "qemu", ...(limited ? { memlockBytes: 64n * 4096n } : {}) });
    const guestBytes = options.guestBytes ?? 4n << 20n;
    const guestRam = qemu.mmap({ length: guestBytes, backing: options.backing ?? "scattered-4k" });
    const containerFd = host.open(qemu, "/dev/vfio/vfio");
    const pinned = new Map<number, number>();
    let device: VfioDevice | undefined;
    let deviceFd: number | undefined;
    const groupFds: number[] = [];
    if (options.variant !== "iommu-backed") {
      const ops: VfioDeviceOps = options.deviceOps ?? {
        dmaUnmap(vdev, iova, length) {
          const first = Number(iova >> 12n);
          const last = first + Number(length >> 12n);
          for (const [page, refs] of [...pinned]) {
            if (page < first || page >= last) continue;
            for (let r = 0; r < refs; r++) vfioUnpinPages(vdev, (BigInt(page) << 12n) as Iova, 1);
            pinned.delete(page);
          }
        },
      };
      device = host.vfio.registerEmulatedDevice("mdev0", ops);
      groupFds.push(host.open(qemu, `/dev/vfio/${device.node.number}`));
    }
    if (options.variant === "iommu-backed" || options.variant === "mixed") {
      const node = host.vfio.addIommuGroup(VTD, [X86_MSI]);
      host.vfio.addDevice(node, "0000:01:00.0");
      groupFds.push(host.open(qemu, `/dev/vfio/${node.number}`));
    }
    for (const fd of groupFds) await expectOk(host.ioctl(qemu, fd, VFIO_GROUP_SET_CONTAINER, containerFd), "SET_CONTAINER");
    await expectOk(host.ioctl(qemu, containerFd, VFIO_SET_IOMMU, options.v1 ? VFIO_TYPE1_IOMMU : VFIO_TYPE1v2_IOMMU), "SET_IOMMU");
    if (device !== undefined) {
      deviceFd = await host.ioctl(qemu, groupFds[0]!, VFIO_GROUP_GET_DEVICE_FD, "mdev0");
      if (deviceFd < 0) throw new Error(`GET_DEVICE_FD failed: ${deviceFd}`);
    }
    return new Fixture(host, qemu, guestRam, guestBytes, containerFd, groupFds, device, deviceFd, pinned);
  }

  /** Invariants 1-16 after a step, when the debug flag is on (VGPU_IOMMU_DEBUG, on unless "0"). */
  check(): void {
    if (invariantsEnabled) this.host.assertInvariants();
  }

  /**
   * Closes every fd as QEMU's exit would (device first, so the vendor's close
   * runs while the container still exists) and ends the process.
   */
  async teardown(): Promise<void> {
    if (this.deviceFd !== undefined && this.qemu.files.has(this.deviceFd)) await this.host.close(this.qemu, this.deviceFd);
    for (const fd of this.groupFds) if (this.qemu.files.has(fd)) await this.host.close(this.qemu, fd);
    if (this.qemu.files.has(this.containerFd)) await this.host.close(this.qemu, this.containerFd);
    this.qemu.exit();
  }

  /** What a test must have released; every field is 0 when nothing leaked. */
  leaks(): Leaks {
    return hostLeaks(this.host);
  }

  /** Tears down, ends `others`, and throws unless every leak is 0 but those `expected` names. */
  async finish(expected: Partial<Leaks> = {}, others: readonly Process[] = []): Promise<void> {
    await this.teardown();
    for (const p of others) p.exit();
    const want: Leaks = { ...NO_LEAKS, ...expected };
    const got = this.leaks();
    const wrong = (Object.keys(want) as (keyof Leaks)[]).filter((k) => got[k] !== want[k]);
    if (wrong.length > 0) throw new Error(`leaks: ${wrong.map((k) => `${k} is ${got[k]}, expected ${want[k]}`).join("; ")}`);
  }

  get iommu(): Type1Iommu {
    const c = [...this.host.vfio.containers][0];
    return c!.iommu!;
  }

  /** The mapping that starts at IOVA page `page`; throws when there is none. */
  dmaAt(page: number): VfioDma {
    const dma = this.iommu.dmas.get(page);
    if (dma === undefined) throw new Error(`no mapping at IOVA page ${page}`);
    return dma;
  }

  /**
   * vfioPinPages of [page, page + npage) through `vdev` (the fixture's device),
   * which must pin them all; records the pins where the default dmaUnmap finds
   * them and checks the invariants. Returns the host frames.
   */
  pin(page: number, npage = 1, prot = IOMMU_READ | IOMMU_WRITE, vdev: VfioDevice = this.device!): Uint32Array {
    const pages = new Uint32Array(npage);
    const r = vfioPinPages(vdev, iovaOf(page), npage, prot, pages);
    if (r !== npage) throw new Error(`vfioPinPages(page ${page}, ${npage}) returned ${r}`);
    for (let i = 0; i < npage; i++) this.pinned.set(page + i, (this.pinned.get(page + i) ?? 0) + 1);
    this.check();
    return pages;
  }

  /** vfioUnpinPages of [page, page + npage) through the fixture's device, forgetting the recorded pins. */
  unpin(page: number, npage = 1): void {
    vfioUnpinPages(this.device!, iovaOf(page), npage);
    for (let i = 0; i < npage; i++) {
      const refs = (this.pinned.get(page + i) ?? 0) - 1;
      if (refs > 0) this.pinned.set(page + i, refs);
      else this.pinned.delete(page + i);
    }
    this.check();
  }

  /** VFIO_IOMMU_UNMAP_DMA: the result and the size the kernel wrote back. */
  async unmap(iova: bigint, size: bigint, flags = 0): Promise<{ ret: number; size: bigint }> {
    const arg = { argsz: 24, flags, iova, size };
    const ret = await this.host.ioctl(this.qemu, this.containerFd, VFIO_IOMMU_UNMAP_DMA, arg);
    return { ret, size: arg.size };
  }

  /** VFIO_DMA_UNMAP_FLAG_ALL, which must succeed and leave no pin and no mapping. */
  async unmapAll(): Promise<void> {
    const { ret } = await this.unmap(0n, 0n, VFIO_DMA_UNMAP_FLAG_ALL);
    if (ret !== 0 || this.pinned.size !== 0 || this.host.stats().mappings !== 0) throw new Error(`UNMAP_DMA(ALL): ${ret}, ${this.pinned.size} pinned pages left, ${this.host.stats().mappings} mappings left`);
    this.check();
  }

  /** VFIO_IOMMU_MAP_DMA of guest RAM at `iova` (default: all of it at IOVA 0). */
  map(iova = 0n, size = this.guestBytes, offset = 0n, flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE): Promise<number> {
    return this.mapFrom(this.qemu, this.containerFd, this.guestRam + offset, iova, size, flags);
  }

  /** VFIO_IOMMU_MAP_DMA as `current` through its container fd `fd` (another process may hold the container). */
  mapFrom(current: Process, fd: number, vaddr: bigint, iova: bigint, size: bigint, flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE): Promise<number> {
    return this.host.ioctl(current, fd, VFIO_IOMMU_MAP_DMA, { argsz: 32, flags, vaddr, iova, size });
  }
}

async function expectOk(p: Promise<number>, what: string): Promise<void> {
  const r = await p;
  if (r !== 0) throw new Error(`${what} failed: ${r}`);
}
