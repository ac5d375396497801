/**
 * The main job's embedded default (first cut): a host, a QEMU-like process
 * with guest RAM, an mdev-only type1 container and a mock mediated device that
 * pins through the vendor API and answers invalidations. Each step records what
 * was pinned and charged, so the output reads as the life of a vGPU's pins.
 */
import { createHost } from "../host/host.js";
import type { Host } from "../host/host.js";
import type { Process } from "../host/process.js";
import { VFIO_GROUP_GET_DEVICE_FD, VFIO_GROUP_SET_CONTAINER, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, VFIO_SET_IOMMU } from "../vfio/uapi.js";
import { IOMMU_READ, IOMMU_WRITE, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_TYPE1v2_IOMMU, type Type1Iommu } from "../vfio/type1/type1-iommu.js";
import { vfioPinPages, vfioUnpinPages } from "../vfio/vendor-api.js";
import type { VfioDevice } from "../vfio/vfio-device.js";
import { iova, type Iova } from "../address/address.js";

export interface FirstJobOptions {
  readonly guestMiB: number;
  readonly memlockMiB: number;
  readonly framebufferPages: number;
  readonly seed: number;
}

export const FIRST_JOB_DEFAULTS: FirstJobOptions = { guestMiB: 1024, memlockMiB: 64, framebufferPages: 2025, seed: 1 };

export interface StepRecord {
  readonly step: string;
  readonly result: string;
  /** IOVAs with a vfio_pfn (pages pinned through the vendor API). */
  readonly pinnedIovas: number;
  /** FOLL_PIN references held on host frames. */
  readonly hostPins: number;
  readonly lockedVmPages: number;
  readonly memlockLimitPages: number;
  readonly mappings: number;
  readonly invalidations: number;
  readonly warnings: number;
  readonly bugs: number;
}

export interface JobResult {
  readonly steps: StepRecord[];
  readonly crashed: boolean;
  readonly invariantViolation: string | undefined;
}

/** A mock mediated device: a refcounted cache of pinned IOVA pages, dropped whole on dmaUnmap. */
class MockDevice {
  readonly cache = new Map<number, number>();
  device!: VfioDevice;

  pin(first: number, npage: number): void {
    const pages = new Uint32Array(npage);
    vfioPinPages(this.device, iova(BigInt(first) << 12n), npage, IOMMU_READ | IOMMU_WRITE, pages);
    for (let i = 0; i < npage; i++) this.cache.set(first + i, (this.cache.get(first + i) ?? 0) + 1);
  }

  unpin(first: number, npage: number): void {
    for (let i = 0; i < npage; i++) {
      vfioUnpinPages(this.device, iova(BigInt(first + i) << 12n), 1);
      const refs = this.cache.get(first + i)! - 1;
      if (refs === 0) this.cache.delete(first + i);
      else this.cache.set(first + i, refs);
    }
  }

  /** dma_unmap: every cached page of the range is unpinned, whatever its refcount. */
  dmaUnmap(start: Iova, length: bigint): void {
    const first = Number(start >> 12n);
    const end = first + Number(length >> 12n);
    for (const [page, refs] of [...this.cache]) {
      if (page < first || page >= end) continue;
      for (let r = 0; r < refs; r++) vfioUnpinPages(this.device, iova(BigInt(page) << 12n), 1);
      this.cache.delete(page);
    }
  }
}

export async function runFirstJob(options: FirstJobOptions = FIRST_JOB_DEFAULTS): Promise<JobResult> {
  const host = createHost({ ramBytes: BigInt(Math.max(4096, options.guestMiB * 2)) << 20n, seed: options.seed });
  const qemu = host.spawn({ comm: "qemu", memlockBytes: BigInt(options.memlockMiB) << 20n });
  const guestBytes = BigInt(options.guestMiB) << 20n;
  const ram = qemu.mmap({ length: guestBytes, backing: "scattered-4k" });
  const mock = new MockDevice();
  mock.device = host.vfio.registerEmulatedDevice("mdev-mock0", { dmaUnmap: (_vdev, start, length) => mock.dmaUnmap(start, length) });
  let invalidations = 0;
  const steps: StepRecord[] = [];
  let iommu: Type1Iommu | undefined;
  const record = (step: string, result: string): void => {
    const s = host.stats();
    steps.push({
      step,
      result,
      pinnedIovas: s.externalPins,
      hostPins: s.pinnedFrames,
      lockedVmPages: qemu.mm.lockedVm,
      memlockLimitPages: qemu.memlockLimitPages,
      mappings: s.mappings,
      invalidations,
      warnings: s.warnings,
      bugs: host.kernel.crashed ? 1 : 0,
    });
    host.assertInvariants();
  };
  const rc = (r: number): string => (r >= 0 ? `ok (${r})` : `errno ${r}`);
  try {
    const containerFd = host.open(qemu, "/dev/vfio/vfio");
    const groupFd = host.open(qemu, `/dev/vfio/${mock.device.node.number}`);
    await host.ioctl(qemu, groupFd, VFIO_GROUP_SET_CONTAINER, containerFd);
    record("open container, add the mdev group", rc(await host.ioctl(qemu, containerFd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)));
    iommu = host.backends[0]!;
    const sub = iommu.on("invalidationSent", () => invalidations++);
    const deviceFd = await host.ioctl(qemu, groupFd, VFIO_GROUP_GET_DEVICE_FD, "mdev-mock0");
    record("open the mdev device", deviceFd >= 0 ? "ok" : rc(deviceFd));
    const map = { argsz: 32, flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE, vaddr: ram, iova: 0n, size: guestBytes };
    record(`MAP_DMA ${options.guestMiB} MiB of guest RAM at IOVA 0 (lazy: nothing pinned)`, rc(await host.ioctl(qemu, containerFd, VFIO_IOMMU_MAP_DMA, map)));
    let pinned = 0;
    let pinError = "";
    for (let first = 0x100; pinned < options.framebufferPages; ) {
      const n = Math.min(512, options.framebufferPages - pinned);
      try {
        mock.pin(first + pinned, n);
        pinned += n;
      } catch (e) {
        pinError = ` then ${(e as { code?: string }).code ?? String(e)}`;
        break;
      }
    }
    record(`vendor pins ${options.framebufferPages} framebuffer pages, 512 a call`, `${pinned} pinned${pinError}`);
    mock.pin(0x100, 16);
    record("vendor pins the first 16 again (refcount, no new charge)", "ok");
    mock.unpin(0x100, 16);
    record("vendor unpins them once (refs drop, no uncharge)", "ok");
    const unmap = { argsz: 24, flags: 0, iova: 0n, size: guestBytes };
    const r = await host.ioctl(qemu, containerFd, VFIO_IOMMU_UNMAP_DMA, unmap);
    record("UNMAP_DMA of guest RAM: invalidation, the device unpins", r === 0 ? `ok, ${unmap.size} bytes` : rc(r));
    sub.dispose();
    await host.close(qemu, deviceFd);
    await host.close(qemu, groupFd);
    await host.close(qemu, containerFd);
    qemu.exit();
    record("close everything", "ok");
    return { steps, crashed: host.kernel.crashed, invariantViolation: undefined };
  } catch (e) {
    return { steps, crashed: host.kernel.crashed, invariantViolation: e instanceof Error ? e.message : String(e) };
  }
}

export type { Host, Process };
