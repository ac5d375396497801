/**
 * vfio_iommu_type1_ioctl: the container ioctls that reach the type1 backend,
 * with the kernel's copy, size and flag checks in the kernel's order before the
 * backend runs. Returns >= 0 or a negative errno; never throws a KernelError.
 */
import { isKernelError } from "../../errors/kernel-error.js";
import { ERRNO } from "../../errors/errno.js";
import type { Process } from "../../host/process.js";
import {
  SIZEOF,
  VFIO_CHECK_EXTENSION,
  VFIO_IOMMU_DIRTY_PAGES,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_IOMMU_UNMAP_DMA,
  requireFields,
  u32,
  u64,
  userBytes,
  userStruct,
  type VfioInfoCap,
} from "../uapi.js";
import {
  DIRTY_BITMAP_SIZE_MAX,
  Type1Iommu,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_VADDR,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  VFIO_DMA_UNMAP_FLAG_VADDR,
  dirtyBitmapBytes,
  type UserBitmap,
} from "./type1-iommu.js";

const errno = (e: unknown): number => {
  if (isKernelError(e)) return -e.errno;
  throw e;
};

export async function type1Ioctl(iommu: Type1Iommu, request: number, arg: unknown, current: Process): Promise<number> {
  try {
    switch (request) {
      case VFIO_CHECK_EXTENSION:
        return typeof arg === "number" ? iommu.checkExtension(arg) : 0;
      case VFIO_IOMMU_GET_INFO:
        return getInfo(iommu, arg);
      case VFIO_IOMMU_MAP_DMA:
        return mapDma(iommu, arg, current);
      case VFIO_IOMMU_UNMAP_DMA:
        return await unmapDma(iommu, arg);
      case VFIO_IOMMU_DIRTY_PAGES:
        return dirtyPages(iommu, arg);
      default:
        return -ERRNO.ENOTTY;
    }
  } catch (e) {
    return errno(e);
  }
}

function mapDma(iommu: Type1Iommu, arg: unknown, current: Process): number {
  const s = userStruct(arg);
  requireFields(s, ["argsz", "flags", "vaddr", "iova", "size"]);
  const argsz = u32(s, "argsz");
  const flags = u32(s, "flags");
  if (argsz < SIZEOF.dmaMap || (flags & ~(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE | VFIO_DMA_MAP_FLAG_VADDR)) !== 0) return -ERRNO.EINVAL;
  iommu.mapDma({ flags, vaddr: u64(s, "vaddr"), iova: u64(s, "iova"), size: u64(s, "size") }, current);
  return 0;
}

/** The bitmap header and buffer: access_ok cannot fail here; a missing buffer faults at copy time. */
function readBitmap(v: unknown): { pgsize: bigint; size: bigint; raw: unknown } {
  const b = userStruct(v);
  requireFields(b, ["pgsize", "size"]);
  return { pgsize: u64(b, "pgsize"), size: u64(b, "size"), raw: b["data"] };
}

/** bitmap.data as the copy sees it: a buffer the model cannot write through has no bytes, so copy_to_user fails (-EFAULT) only when reached. */
const bitmapBuffer = (raw: unknown): Uint8Array => (ArrayBuffer.isView(raw) ? userBytes(raw) : new Uint8Array(0));

/** verify_bitmap_size. */
const bitmapSizeOk = (npages: bigint, size: bigint): boolean => npages !== 0n && size !== 0n && size <= DIRTY_BITMAP_SIZE_MAX && size >= dirtyBitmapBytes(npages);

const ffs = (v: bigint): bigint => {
  if (v === 0n) return 0n;
  let n = 0n;
  while (((v >> n) & 1n) === 0n) n++;
  return n;
};

async function unmapDma(iommu: Type1Iommu, arg: unknown): Promise<number> {
  const s = userStruct(arg);
  requireFields(s, ["argsz", "flags", "iova", "size"]);
  const argsz = u32(s, "argsz");
  const flags = u32(s, "flags");
  const mask = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL;
  if (argsz < SIZEOF.dmaUnmap || (flags & ~mask) !== 0) return -ERRNO.EINVAL;
  if ((flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) !== 0 && (flags & (VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_VADDR)) !== 0) return -ERRNO.EINVAL;
  const iova = u64(s, "iova");
  const size = u64(s, "size");
  let bitmap: UserBitmap | undefined;
  if ((flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) !== 0) {
    if (argsz < SIZEOF.dmaUnmap + SIZEOF.bitmap) return -ERRNO.EINVAL;
    const b = readBitmap(s["bitmap"]);
    if (!bitmapSizeOk(size >> ffs(b.pgsize), b.size)) return -ERRNO.EINVAL;
    bitmap = { pgsize: b.pgsize, size: b.size, data: bitmapBuffer(b.raw) };
  }
  const unmapped = await iommu.unmapDma({ flags, iova, size, ...(bitmap === undefined ? {} : { bitmap }) });
  s["size"] = unmapped;
  return 0;
}

function getInfo(iommu: Type1Iommu, arg: unknown): number {
  const s = userStruct(arg);
  requireFields(s, ["argsz", "flags", "iova_pgsizes"]);
  const argsz = u32(s, "argsz");
  if (argsz < SIZEOF.infoMinsz) return -ERRNO.EINVAL;
  const pgsize = iommu.pgsize;
  const caps: VfioInfoCap[] = [];
  let offset = SIZEOF.info;
  const push = (cap: VfioInfoCap, size: number): void => {
    caps.push(cap);
    offset += size;
  };
  push({ id: VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, version: 1, next: 0, offset, flags: 0, pgsize_bitmap: pgsize, max_dirty_bitmap_size: DIRTY_BITMAP_SIZE_MAX }, SIZEOF.capMigration);
  push({ id: VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, version: 1, next: 0, offset, avail: iommu.dmaAvail }, SIZEOF.capDmaAvail);
  if (iommu.iovaList.length > 0) {
    const ranges = iommu.iovaList.map((r) => ({ start: r.start, end: r.last }));
    push({ id: VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, version: 1, next: 0, offset, nr_iovas: ranges.length, iova_ranges: ranges }, SIZEOF.capIovaRangeHeader + SIZEOF.iovaRange * ranges.length);
  }
  for (let i = 0; i + 1 < caps.length; i++) caps[i]!.next = caps[i + 1]!.offset;
  const needed = offset;
  // copy_to_user of min(argsz, sizeof(info)) bytes: cap_offset is written only when it fits.
  s["flags"] = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS;
  s["iova_pgsizes"] = iommu.pgsizeBitmap;
  if (argsz < needed) {
    s["argsz"] = needed;
    if (argsz >= 20) s["cap_offset"] = 0;
  } else {
    s["cap_offset"] = SIZEOF.info;
    s["caps"] = caps;
  }
  return 0;
}

function dirtyPages(iommu: Type1Iommu, arg: unknown): number {
  if (!iommu.v2) return -ERRNO.EACCES;
  const s = userStruct(arg);
  requireFields(s, ["argsz", "flags"]);
  const argsz = u32(s, "argsz");
  const flags = u32(s, "flags");
  const mask = VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP | VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
  if (argsz < SIZEOF.dirtyBitmapMinsz || (flags & ~mask) !== 0) return -ERRNO.EINVAL;
  if (flags === 0 || (flags & (flags - 1)) !== 0) return -ERRNO.EINVAL;
  if (flags & VFIO_IOMMU_DIRTY_PAGES_FLAG_START) {
    iommu.startDirtyTracking();
    return 0;
  }
  if (flags & VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP) {
    iommu.stopDirtyTracking();
    return 0;
  }
  const dataSize = argsz - SIZEOF.dirtyBitmapMinsz;
  if (dataSize === 0 || dataSize < SIZEOF.dirtyBitmapGet) return -ERRNO.EINVAL;
  const range = userStruct(s["data"]);
  requireFields(range, ["iova", "size", "bitmap"]);
  const iova = u64(range, "iova");
  const size = u64(range, "size");
  const b = readBitmap(range["bitmap"]);
  if (iova + size > (1n << 64n) - 1n) return -ERRNO.EINVAL;
  if (!bitmapSizeOk(size >> ffs(b.pgsize), b.size)) return -ERRNO.EINVAL;
  iommu.getDirtyBitmap(iova, size, { pgsize: b.pgsize, size: b.size, data: bitmapBuffer(b.raw) });
  return 0;
}
