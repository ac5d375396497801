/**
 * The guest side of the mock GPU: how a guest driver programs the table
 * through BAR0 writes, as QEMU would forward them. It reads the geometry from
 * the identification registers when the table leaves room for them, writes an
 * entry as one 8-byte access, or as two 4-byte halves (low first) when the
 * device takes only those.
 */
import { VFIO_PCI_BAR0_REGION_INDEX, type Vgpu } from "@vgpu-iommu/core";
import { GTT_ENTRY_BYTES, gttEntry, MOCK_MAGIC, type GttGeometry } from "./gtt-geometry.js";

export class MockGuestDriver {
  constructor(
    readonly vgpu: Vgpu,
    readonly geometry: Pick<GttGeometry, "tableOffset" | "tableEntries" | "fourByteOnly">,
  ) {}

  /** Probes BAR0's identification registers; undefined when the table leaves no room for them. */
  static probe(vgpu: Vgpu): { tableEntries: number; tableOffset: number } | undefined {
    const regs = vgpu.read(VFIO_PCI_BAR0_REGION_INDEX, 0n, 8);
    const view = new DataView(regs.buffer);
    if (view.getUint32(0, true) !== MOCK_MAGIC) return undefined;
    const offset = new DataView(vgpu.read(VFIO_PCI_BAR0_REGION_INDEX, 8n, 4).buffer).getUint32(0, true);
    return { tableEntries: view.getUint32(4, true), tableOffset: offset };
  }

  /** Writes entry `index` = `value` (an 8-byte write, or two 4-byte halves). */
  writeRaw(index: number, value: bigint, halves = this.geometry.fourByteOnly): void {
    const offset = BigInt(this.geometry.tableOffset + index * GTT_ENTRY_BYTES);
    if (!halves) {
      const data = new Uint8Array(8);
      new DataView(data.buffer).setBigUint64(0, value, true);
      this.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, offset, data);
      return;
    }
    const lo = new Uint8Array(4);
    new DataView(lo.buffer).setUint32(0, Number(value & 0xffff_ffffn), true);
    const hi = new Uint8Array(4);
    new DataView(hi.buffer).setUint32(0, Number(value >> 32n), true);
    this.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, offset, lo);
    this.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, offset + 4n, hi);
  }

  /** Points entry `index` at guest frame `gfn`. */
  map(index: number, gfn: number): void {
    this.writeRaw(index, gttEntry(gfn));
  }

  /** Clears entry `index`'s present bit. */
  clear(index: number): void {
    this.writeRaw(index, 0n);
  }

  /** Points entries first, first + 1, ... at `gfns` in order. */
  mapAll(gfns: ArrayLike<number>, first = 0): void {
    for (let i = 0; i < gfns.length; i++) this.map(first + i, gfns[i]!);
  }

  readEntry(index: number): bigint {
    const data = this.vgpu.read(VFIO_PCI_BAR0_REGION_INDEX, BigInt(this.geometry.tableOffset + index * GTT_ENTRY_BYTES), 8);
    return new DataView(data.buffer).getBigUint64(0, true);
  }
}

