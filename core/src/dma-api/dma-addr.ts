/**
 * The vocabulary of the DMA API: directions, the error address, and how a
 * 64-bit `dma_addr_t` is carried without a BigInt per page.
 *
 * Model: a device address is a bigint only at the single-mapping API
 * (`dma_map_page` returns one `dma_addr_t`). Inside the model and in
 * scatterlists it is split into two u32 halves (`hi`, `lo`), written from plain
 * numbers: an IOMMU address is an IOVA granule number (< 2^52) and an offset in
 * the granule, a direct-mode address is a host physical address (< 2^53).
 * `DMA_MAPPING_ERROR` is all ones, as in include/linux/dma-mapping.h.
 *
 * Invariants: `hi * 2^32 + lo` is the address; the error value is
 * `hi = lo = 0xffffffff` and is never a valid mapping.
 */
import { ERRNO } from "../errors/errno.js";

/** `(dma_addr_t)~0`, what a failed `dma_map_page` returns. */
export const DMA_MAPPING_ERROR: bigint = (1n << 64n) - 1n;

/** enum dma_data_direction, with the kernel's values. */
export const DmaDirection = {
  BIDIRECTIONAL: 0,
  TO_DEVICE: 1,
  FROM_DEVICE: 2,
  NONE: 3,
} as const;
export type DmaDirection = (typeof DmaDirection)[keyof typeof DmaDirection];

export const DMA_DIRECTION_NAMES = ["DMA_BIDIRECTIONAL", "DMA_TO_DEVICE", "DMA_FROM_DEVICE", "DMA_NONE"] as const;

/** valid_dma_direction(): NONE is not a direction a mapping may have. */
export const validDmaDirection = (dir: number): dir is DmaDirection =>
  dir === DmaDirection.BIDIRECTIONAL || dir === DmaDirection.TO_DEVICE || dir === DmaDirection.FROM_DEVICE;

/** The errnos `dma_map_sgtable` may return (hypervisors.md §0.2). */
export const SGTABLE_ERRNOS: readonly number[] = [-ERRNO.EINVAL, -ERRNO.ENOMEM, -ERRNO.EIO, -ERRNO.EREMOTEIO];

export const TWO_32 = 0x1_0000_0000;
const TWO_20 = 0x10_0000;
export const DMA_ERROR_HALF = 0xffff_ffff;

/** High u32 of `page * 4096 + offset`, for a page number below 2^52 and an offset below 4096. */
export const dmaHiOf = (page: number): number => Math.floor(page / TWO_20);
/** Low u32 of `page * 4096 + offset` (never carries: (2^20 - 1) * 4096 + 4095 < 2^32). */
export const dmaLoOf = (page: number, offset: number): number => (page % TWO_20) * 4096 + offset;

/** A 64-bit address from its halves. */
export const dmaAddrFromHalves = (hi: number, lo: number): bigint => (BigInt(hi) << 32n) | BigInt(lo);

/** `page * 4096 + offset` as a bigint. */
export const dmaAddrOf = (page: number, offset: number): bigint => (BigInt(page) << 12n) | BigInt(offset);

/** A physical or IOVA byte address below 2^53 as a bigint. */
export const dmaAddrOfNumber = (addr: number): bigint => BigInt(addr);

/** Page number (addr >> 12) of a 64-bit address. */
export const dmaPageOf = (addr: bigint): number => Number(addr >> 12n);
/** Offset in its 4 KiB page of a 64-bit address. */
export const dmaOffsetOf = (addr: bigint): number => Number(addr & 0xfffn);

/** Page number of the address whose halves are given. */
export const dmaPageOfHalves = (hi: number, lo: number): number => hi * TWO_20 + Math.floor(lo / 4096);

/** `min_not_zero(a, b)` of two u64 values. */
export const minNotZero = (a: bigint, b: bigint): bigint => (a === 0n ? b : b === 0n ? a : a < b ? a : b);

/** `DMA_BIT_MASK(n)`. */
export const dmaBitMask = (bits: number): bigint => (bits >= 64 ? (1n << 64n) - 1n : (1n << BigInt(bits)) - 1n);

export const hex = (v: bigint | number): string => `0x${v.toString(16)}`;
