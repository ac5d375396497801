/**
 * Where the mock GPU's "GTT" lives in BAR0, and which accesses to it the
 * device accepts.
 *
 * Model: BAR0 holds three read-only identification registers at offset 0
 * (magic "MOCK", the number of table entries, the table offset; present only
 * when the table starts at 12 or later) and the table: `tableEntries` entries
 * of 8 bytes (bit 0 present, bits 12..51 the guest frame number) from
 * `tableOffset`. The table offset need only be 4-byte aligned, so with
 * `awkward` geometry (offset 0x1ffc) an entry straddles a 4 KiB boundary of the
 * BAR. As GVT's GGTT handler does, the table takes 4- or 8-byte accesses
 * only, aligned to the entry (8 bytes) or to a half of it (4 bytes); with
 * `fourByteOnly` a guest must write each entry as two halves. Everything else
 * is -EINVAL. Register space takes naturally aligned 1/2/4/8-byte accesses and
 * ignores writes.
 *
 * Invariants: BAR0 is a power of two at least 4 KiB and covers the table;
 * a classified table access names one entry and one half (or both).
 */
import { KernelError, VFIO_PCI_BAR0_REGION_INDEX } from "@vgpu-iommu/core";

export const GTT_ENTRY_BYTES = 8;
export const GTT_PRESENT = 1n;
/** Bits 12..51 of an entry: the guest frame number. */
export const GTT_GFN_MASK = (1n << 40n) - 1n;
export const MOCK_MAGIC = 0x4b434f4d; // "MOCK", little-endian
export const REGISTER_BYTES = 12;
/** The table offset of awkward geometry: entry 0 spans 0x1ffc..0x2003. */
export const AWKWARD_TABLE_OFFSET = 0x1ffc;
export const DEFAULT_TABLE_OFFSET = 0x1000;

export interface GttGeometry {
  readonly tableOffset: number;
  readonly tableEntries: number;
  readonly barBytes: number;
  /** 8-byte writes to the table are refused: entries are written as two halves. */
  readonly fourByteOnly: boolean;
}

/** An accepted access: register space, or one table entry and which half (0 low, 1 high, 2 both). */
export const REGISTER_ACCESS = -1;
export const HALF_LOW = 0;
export const HALF_HIGH = 1;
export const HALF_BOTH = 2;
export const accessIndex = (access: number): number => access >> 2;
export const accessHalf = (access: number): number => access & 3;

export function makeGeometry(tableOffset: number, tableEntries: number, fourByteOnly: boolean): GttGeometry {
  if (!Number.isSafeInteger(tableOffset) || tableOffset < 0 || tableOffset % 4 !== 0) throw new RangeError(`table offset must be a non-negative multiple of 4, got ${tableOffset}`);
  if (!Number.isSafeInteger(tableEntries) || tableEntries < 1 || tableEntries > 1 << 24) throw new RangeError(`table entries must be in 1..2^24, got ${tableEntries}`);
  const end = tableOffset + tableEntries * GTT_ENTRY_BYTES;
  let barBytes = 4096;
  while (barBytes < end) barBytes *= 2;
  return Object.freeze({ tableOffset, tableEntries, barBytes, fourByteOnly });
}

/** Validates an access; returns REGISTER_ACCESS or `index << 2 | half`. Throws KernelError EINVAL. */
export function classifyAccess(g: GttGeometry, region: number, offset: bigint, length: number, write: boolean): number {
  const fields = { region, offset, length };
  if (region !== VFIO_PCI_BAR0_REGION_INDEX) throw new KernelError("EINVAL", "mock-bad-region", fields);
  if (length !== 1 && length !== 2 && length !== 4 && length !== 8) throw new KernelError("EINVAL", "mock-bad-access-size", fields);
  if (offset < 0n || offset + BigInt(length) > BigInt(g.barBytes)) throw new KernelError("EINVAL", "mock-outside-bar", fields);
  const off = Number(offset);
  const tableEnd = g.tableOffset + g.tableEntries * GTT_ENTRY_BYTES;
  if (off + length <= g.tableOffset || off >= tableEnd) {
    if (off % length !== 0) throw new KernelError("EINVAL", "mock-misaligned", fields);
    return REGISTER_ACCESS;
  }
  if (off < g.tableOffset || off + length > tableEnd) throw new KernelError("EINVAL", "mock-straddles-table", fields);
  if (length !== 4 && length !== 8) throw new KernelError("EINVAL", "mock-bad-access-size", fields);
  const rel = off - g.tableOffset;
  if (rel % length !== 0) throw new KernelError("EINVAL", "mock-misaligned", fields);
  if (length === 8 && write && g.fourByteOnly) throw new KernelError("EINVAL", "mock-eight-byte-write", fields);
  const index = Math.floor(rel / GTT_ENTRY_BYTES);
  const half = length === 8 ? HALF_BOTH : (rel % GTT_ENTRY_BYTES) / 4;
  return (index << 2) | half;
}

/** The value of a register-space read: the identification registers, zero elsewhere. */
export function readRegisters(g: GttGeometry, offset: number, out: Uint8Array): void {
  if (g.tableOffset < REGISTER_BYTES) return;
  const regs = new Uint8Array(REGISTER_BYTES);
  const view = new DataView(regs.buffer);
  view.setUint32(0, MOCK_MAGIC, true);
  view.setUint32(4, g.tableEntries, true);
  view.setUint32(8, g.tableOffset, true);
  for (let i = 0; i < out.length; i++) out[i] = offset + i < REGISTER_BYTES ? regs[offset + i]! : 0;
}

/** A table entry as a guest writes it. */
export const gttEntry = (gfn: number, present = true): bigint => (BigInt(gfn) << 12n) | (present ? GTT_PRESENT : 0n);
/** BAR0 offset of entry `index`. */
export const entryOffset = (g: GttGeometry, index: number): bigint => BigInt(g.tableOffset + index * GTT_ENTRY_BYTES);
