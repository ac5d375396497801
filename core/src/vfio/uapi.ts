/**
 * The VFIO uapi: request numbers, flags and structure sizes of
 * include/uapi/linux/vfio.h, and the "copy_from_user" of this model.
 *
 * An argument is a plain object whose fields carry the C struct's names. A
 * field the kernel would read but that is absent is unreadable user memory
 * (-EFAULT). A value that no C field of that width could hold (negative, not
 * an integer, beyond 2^32 or 2^64) is -EINVAL, at the step where the kernel
 * rejects values that do not fit. u64 fields are bigint; a safe-integer number
 * is accepted too. Out-fields are written back into the same object.
 */
import { ERRNO } from "../errors/errno.js";
import { U64_MAX } from "../address/address.js";
import { VfioError } from "../errors/kernel-error.js";

const VFIO_TYPE = 0x3b;
const VFIO_BASE = 100;
const io = (nr: number): number => (VFIO_TYPE << 8) | (VFIO_BASE + nr);

export const VFIO_API_VERSION = 0;
export const VFIO_GET_API_VERSION = io(0);
export const VFIO_CHECK_EXTENSION = io(1);
export const VFIO_SET_IOMMU = io(2);
export const VFIO_GROUP_GET_STATUS = io(3);
export const VFIO_GROUP_SET_CONTAINER = io(4);
export const VFIO_GROUP_UNSET_CONTAINER = io(5);
export const VFIO_GROUP_GET_DEVICE_FD = io(6);
export const VFIO_DEVICE_RESET = io(11);
export const VFIO_IOMMU_GET_INFO = io(12);
export const VFIO_IOMMU_MAP_DMA = io(13);
export const VFIO_IOMMU_UNMAP_DMA = io(14);
export const VFIO_IOMMU_DIRTY_PAGES = io(17);

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;

export const VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2;

/** sizeof / offsetofend of the structures, in bytes. */
export const SIZEOF = {
  groupStatusMinsz: 8,
  infoMinsz: 16,
  info: 24,
  dmaMap: 32,
  dmaUnmap: 24,
  bitmap: 24,
  dirtyBitmapMinsz: 8,
  dirtyBitmapGet: 40,
  capMigration: 32,
  capDmaAvail: 16,
  capIovaRangeHeader: 16,
  iovaRange: 16,
} as const;

export interface VfioIommuType1Info {
  argsz: number;
  flags: number;
  iova_pgsizes: bigint;
  cap_offset: number;
  /** The capability chain the kernel writes after the struct, decoded in chain order. */
  caps?: VfioInfoCap[];
}

export type VfioInfoCap =
  | { id: 1; version: 1; next: number; offset: number; nr_iovas: number; iova_ranges: { start: bigint; end: bigint }[] }
  | { id: 2; version: 1; next: number; offset: number; flags: number; pgsize_bitmap: bigint; max_dirty_bitmap_size: bigint }
  | { id: 3; version: 1; next: number; offset: number; avail: number };

export interface VfioIommuType1DmaMap {
  argsz: number;
  flags: number;
  vaddr: bigint;
  iova: bigint;
  size: bigint;
}

export interface VfioBitmap {
  pgsize: bigint;
  size: bigint;
  /** The user buffer the kernel copies u64 words into (little-endian bit order). */
  data: Uint8Array | BigUint64Array;
}

export interface VfioIommuType1DmaUnmap {
  argsz: number;
  flags: number;
  iova: bigint;
  size: bigint;
  /** With GET_DIRTY_BITMAP: the `struct vfio_bitmap` that follows. */
  bitmap?: VfioBitmap;
}

export interface VfioIommuType1DirtyBitmap {
  argsz: number;
  flags: number;
  /** With GET_BITMAP: the `struct vfio_iommu_type1_dirty_bitmap_get` that follows. */
  data?: { iova: bigint; size: bigint; bitmap: VfioBitmap };
}

export interface VfioGroupStatus {
  argsz: number;
  flags: number;
}

/** A failed copy or conversion, carried as the errno the ioctl returns. */
export class UapiFault extends VfioError {}

type Fields = Record<string, unknown>;

/**
 * The argument as user memory: -EFAULT unless it is an object, and every read
 * or write through the returned view that throws (a getter or setter, a
 * revoked proxy) is a fault of the copy (-EFAULT), never an exception.
 */
export function userStruct(arg: unknown): Fields {
  if (typeof arg !== "object" || arg === null) throw new UapiFault("EFAULT", "arg-not-readable");
  const fault = (field: string | symbol): never => {
    throw new UapiFault("EFAULT", "user-memory-fault", { field: String(field) });
  };
  return new Proxy(arg as Fields, {
    get: (target, key) => {
      try {
        return Reflect.get(target, key) as unknown;
      } catch {
        return fault(key);
      }
    },
    has: (target, key) => {
      try {
        return Reflect.has(target, key);
      } catch {
        return fault(key);
      }
    },
    set: (target, key, value) => {
      try {
        return Reflect.set(target, key, value);
      } catch {
        return fault(key);
      }
    },
  });
}

/** The fields the kernel reads must be present: -EFAULT otherwise. */
export function requireFields(s: Fields, names: readonly string[]): void {
  for (const n of names) if (!(n in s) || s[n] === undefined) throw new UapiFault("EFAULT", "field-not-readable", { field: n });
}

const isU64 = (v: unknown): boolean =>
  typeof v === "bigint" ? v >= 0n && v <= U64_MAX : typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

export function u32(s: Fields, name: string): number {
  const v = s[name];
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new UapiFault("EINVAL", "field-not-u32", { field: name });
  return v;
}

export function u64(s: Fields, name: string): bigint {
  const v = s[name];
  if (!isU64(v)) throw new UapiFault("EINVAL", "field-not-u64", { field: name });
  return BigInt(v as bigint | number);
}

/** A user buffer pointer: -EFAULT unless it is a typed array the kernel can write through. */
export function userBytes(v: unknown): Uint8Array {
  if (v instanceof Uint8Array) return v;
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  throw new UapiFault("EFAULT", "buffer-not-writable");
}

export const NEG = (code: keyof typeof ERRNO): number => -ERRNO[code];
