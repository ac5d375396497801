/**
 * A guest i915-like driver for tests: it programs a GVT vGPU the way a guest
 * does, through BAR0 writes (GGTT entries, plane registers, ELSP) and through
 * its own RAM (page tables, context images, rings), so the same scenario runs
 * on the fake services and on a real platform VM (`PlatformVm` has the same
 * guestWrite/guestRead).
 *
 * Page tables, contexts and rings come from a pool of guest frames the caller
 * reserves; a write into a protected frame traps to the vGPU as it would on
 * KVM.
 */
import { VFIO_PCI_BAR0_REGION_INDEX, type Vgpu } from "@vgpu-iommu/core";
import {
  CTX_DESC_VALID,
  CTX_PDP0_LDW,
  CTX_PDP0_UDW,
  CTX_RING_BUFFER_START,
  CTX_RING_HEAD,
  CTX_RING_TAIL,
  DISPLAY_PLANE_ENABLE,
  DISPPLANE_BGRX888,
  DISPPLANE_PIXFORMAT_SHIFT,
  GEN8_PAGE_PRESENT,
  GEN8_PAGE_RW,
  GEN8_PDE_IPS_64K,
  GEN8_PDE_PS,
  GGTT_OFFSET,
  MI_BATCH_BUFFER_END,
  MI_BATCH_BUFFER_START,
  MI_BB_PPGTT,
  MI_NOOP,
  REG,
} from "../gvt-params.js";

export interface GuestMemory {
  guestWrite(gpa: bigint, data: Uint8Array): number;
  guestRead(gpa: bigint, out: Uint8Array): number;
}

export type LeafSize = "4K" | "64K" | "2M" | "1G";

/** A gen8 entry's two halves for frame `gfn` with `flags` (present and writable by default). */
export function pte(gfn: number, flags = GEN8_PAGE_PRESENT | GEN8_PAGE_RW): [number, number] {
  return [((gfn % 0x100000) * 4096 + (flags & 0xfff)) >>> 0, Math.floor(gfn / 0x100000) >>> 0];
}

export class GuestGfxDriver {
  #nextTable: number;
  readonly #tableEnd: number;

  constructor(
    readonly vgpu: Vgpu,
    readonly mem: GuestMemory,
    /** Guest frames [poolGfn, poolGfn + poolPages) are the driver's own: tables, contexts, rings. */
    poolGfn: number,
    poolPages: number,
  ) {
    this.#nextTable = poolGfn;
    this.#tableEnd = poolGfn + poolPages;
  }

  // --- GGTT ------------------------------------------------------------------

  /** One 8-byte GGTT write: a present entry for `gfn`, or non-present when gfn is undefined. */
  ggttWrite(index: number, gfn: number | undefined): void {
    const [lo, hi] = gfn === undefined ? [0, 0] : pte(gfn);
    const b = new Uint8Array(8);
    put32(b, 0, lo);
    put32(b, 4, hi);
    this.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, BigInt(GGTT_OFFSET + index * 8), b);
  }

  /** One BAR0 write of `gfns.length` consecutive entries (the vfio op cuts it into 8-byte writes). */
  ggttWriteRange(firstIndex: number, gfns: ArrayLike<number>): void {
    const b = new Uint8Array(gfns.length * 8);
    for (let i = 0; i < gfns.length; i++) {
      const [lo, hi] = pte(gfns[i]!);
      put32(b, i * 8, lo);
      put32(b, i * 8 + 4, hi);
    }
    this.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, BigInt(GGTT_OFFSET + firstIndex * 8), b);
  }

  /** A 4-byte write of half `off` (0 or 4) of entry `index`. */
  ggttWriteHalf(index: number, off: number, value: number): void {
    const b = new Uint8Array(4);
    put32(b, 0, value);
    this.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, BigInt(GGTT_OFFSET + index * 8 + off), b);
  }

  mmioWrite(offset: number, value: number): void {
    const b = new Uint8Array(4);
    put32(b, 0, value);
    this.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, BigInt(offset), b);
  }

  mmioRead(offset: number): number {
    const b = this.vgpu.read(VFIO_PCI_BAR0_REGION_INDEX, BigInt(offset), 4);
    return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  }

  // --- PPGTT -----------------------------------------------------------------

  /** A zeroed page-table page from the pool. */
  newTable(): number {
    if (this.#nextTable >= this.#tableEnd) throw new RangeError("guest driver: table pool exhausted");
    const gfn = this.#nextTable++;
    this.#check(this.mem.guestWrite(BigInt(gfn) * 4096n, new Uint8Array(4096)));
    return gfn;
  }

  /** Writes entry `index` of table `tableGfn`: 8 bytes at once, or two 4-byte halves (low first). */
  writeEntry(tableGfn: number, index: number, lo: number, hi: number, split = false): void {
    const gpa = BigInt(tableGfn) * 4096n + BigInt(index * 8);
    if (!split) {
      const b = new Uint8Array(8);
      put32(b, 0, lo);
      put32(b, 4, hi);
      this.#check(this.mem.guestWrite(gpa, b));
      return;
    }
    const a = new Uint8Array(4);
    put32(a, 0, lo);
    this.#check(this.mem.guestWrite(gpa, a));
    const c = new Uint8Array(4);
    put32(c, 0, hi);
    this.#check(this.mem.guestWrite(gpa + 4n, c));
  }

  readEntry(tableGfn: number, index: number): [number, number] {
    const b = new Uint8Array(8);
    this.#check(this.mem.guestRead(BigInt(tableGfn) * 4096n + BigInt(index * 8), b));
    return [get32(b, 0), get32(b, 4)];
  }

  /**
   * Maps graphics address `gma` to guest frame `gfn` in the 4-level tables
   * rooted at `root`, creating the directories it needs. 64K entries go in a
   * PT whose PDE carries IPS (the PT index must be a multiple of 16); 2M and
   * 1G entries set PS in the PDE and PDPE. Returns the table and index written.
   */
  map(root: number, gma: number, gfn: number, size: LeafSize = "4K"): { table: number; index: number } {
    const idx = (level: number): number => Math.floor(gma / 2 ** (12 + 9 * (level - 1))) % 512;
    let table = root;
    for (let level = 4; level > 1; level--) {
      const i = idx(level);
      if ((level === 3 && size === "1G") || (level === 2 && size === "2M")) {
        const [lo, hi] = pte(gfn, GEN8_PAGE_PRESENT | GEN8_PAGE_RW | GEN8_PDE_PS);
        this.writeEntry(table, i, lo, hi);
        return { table, index: i };
      }
      let [lo, hi] = this.readEntry(table, i);
      if ((lo & GEN8_PAGE_PRESENT) === 0) {
        const next = this.newTable();
        [lo, hi] = pte(next, GEN8_PAGE_PRESENT | GEN8_PAGE_RW | (level === 2 && size === "64K" ? GEN8_PDE_IPS_64K : 0));
        this.writeEntry(table, i, lo, hi);
      }
      table = (lo >>> 12) + (hi & 0x3fff) * 0x100000;
    }
    const i = idx(1);
    const [lo, hi] = pte(gfn);
    this.writeEntry(table, i, lo, hi);
    return { table, index: i };
  }

  // --- display ---------------------------------------------------------------

  /** Programs primary plane A: surface at `gma`, `width` x `height`, `stride` bytes per line, 32 bpp. */
  setPrimaryPlane(gma: number, width: number, height: number, stride = width * 4, format = DISPPLANE_BGRX888): void {
    this.mmioWrite(REG.PIPEASRC, (((width - 1) & 0xfff) << 16) | ((height - 1) & 0xfff));
    this.mmioWrite(REG.DSPASTRIDE, stride);
    this.mmioWrite(REG.DSPASURF, gma);
    this.mmioWrite(REG.DSPACNTR, (DISPLAY_PLANE_ENABLE | (format << DISPPLANE_PIXFORMAT_SHIFT)) >>> 0);
  }

  // --- execlists -------------------------------------------------------------

  /**
   * Builds a context image at GGTT address `lrca` (two pages from the pool,
   * mapped in the GGTT) whose PDP0 is `rootGfn`'s PML4, and a one-page ring
   * at GGTT address `ringGma` holding `commands`. Returns the descriptor low dword.
   */
  buildContext(lrca: number, rootGfn: number, ringGma: number, commands: readonly number[]): number {
    const hwsp = this.newTable();
    const state = this.newTable();
    const ring = this.newTable();
    this.ggttWrite(lrca / 4096, hwsp);
    this.ggttWrite(lrca / 4096 + 1, state);
    this.ggttWrite(ringGma / 4096, ring);
    // RING_TAIL is qword aligned: an odd number of dwords is padded with MI_NOOP.
    if (commands.length % 2 === 1) commands = [...commands, MI_NOOP << 23];
    const regs = new Uint8Array(0x40 * 4);
    const pml4 = rootGfn * 4096;
    put32(regs, CTX_RING_HEAD * 4, 0);
    put32(regs, CTX_RING_TAIL * 4, commands.length * 4);
    put32(regs, CTX_RING_BUFFER_START * 4, ringGma);
    put32(regs, CTX_PDP0_UDW * 4, Math.floor(pml4 / 0x100000000));
    put32(regs, CTX_PDP0_LDW * 4, pml4 >>> 0);
    this.#check(this.mem.guestWrite(BigInt(state) * 4096n, regs));
    const cmds = new Uint8Array(commands.length * 4);
    commands.forEach((c, i) => put32(cmds, i * 4, c));
    if (cmds.length > 0) this.#check(this.mem.guestWrite(BigInt(ring) * 4096n, cmds));
    return (lrca | CTX_DESC_VALID) >>> 0;
  }

  /** Submits a descriptor on the render ELSP: element 1 (empty) then element 0, upper dword first. */
  elspSubmit(descriptorLo: number): void {
    this.mmioWrite(REG.RCS_ELSP, 0);
    this.mmioWrite(REG.RCS_ELSP, 0);
    this.mmioWrite(REG.RCS_ELSP, 0);
    this.mmioWrite(REG.RCS_ELSP, descriptorLo);
  }

  /** A batch page in the pool holding `commands` then MI_BATCH_BUFFER_END; returns its guest frame. */
  newBatch(commands: readonly number[] = []): number {
    const gfn = this.newTable();
    const b = new Uint8Array((commands.length + 1) * 4);
    commands.forEach((c, i) => put32(b, i * 4, c));
    put32(b, commands.length * 4, MI_BATCH_BUFFER_END << 23);
    this.#check(this.mem.guestWrite(BigInt(gfn) * 4096n, b));
    return gfn;
  }

  #check(r: number): void {
    if (r !== 0) throw new Error(`guest driver: guest memory access failed (${r})`);
  }
}

/** MI_BATCH_BUFFER_START of a PPGTT (or GGTT) address: three dwords. */
export function batchStart(gma: number, ppgtt = true): number[] {
  return [((MI_BATCH_BUFFER_START << 23) | (ppgtt ? MI_BB_PPGTT : 0) | 1) >>> 0, gma >>> 0, Math.floor(gma / 0x100000000)];
}

function put32(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
  b[at + 2] = (v >>> 16) & 0xff;
  b[at + 3] = (v >>> 24) & 0xff;
}

function get32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}
