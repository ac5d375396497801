/**
 * swiotlb-xen (drivers/xen/swiotlb-xen.c): Dom0's DMA API when Xen owns the
 * IOMMU and Dom0 cannot program it. It only translates and bounces.
 *
 * Model:
 * - A buffer is named by frames of a `XenPhysView`: Dom0 PFNs (bus frame from
 *   its P2M: the MFN for PV, markers stripped) or machine frames (a foreign
 *   frame's MFN, what a FOREIGN_FRAME P2M entry resolves to). The bus address
 *   is `pfn_to_bfn(frame) << 12 | offset` (xen_phys_to_bus).
 * - `map_page` maps directly only when the bus range is `dma_capable` for the
 *   device's mask and the buffer does not straddle a machine-page boundary
 *   (every following frame's BFN is the next BFN); otherwise it bounces
 *   through the swiotlb pool, which Xen made machine-contiguous below 4 GiB
 *   (XENMEM_exchange with address bits up to 32), checks the bounce address is
 *   DMA-capable, and fails with DMA_MAPPING_ERROR when the pool is full or the
 *   device cannot reach it.
 * - Bounces copy data: the original is copied in on map for TO_DEVICE and
 *   BIDIRECTIONAL, and back on unmap for FROM_DEVICE and BIDIRECTIONAL, frame
 *   by frame through the view (the original need not be machine-contiguous).
 * - `map_sg` maps each entry on its own and never merges; on a failure it
 *   unmaps what it did and returns 0 (era "2016") or -EIO (since 2021).
 *
 * Invariants: every live bounce holds its pool slots and is found by its bus
 * address; `bounced` + `direct` = pages mapped; an unmapped bounce frees its
 * slots exactly once.
 */
import { DMA_MAPPING_ERROR, DmaDirection, ERRNO, PAGE_SIZE, type PhysicalMemory, type Scatterlist, type SwiotlbPool } from "@vgpu-iommu/core";
import type { XenEra } from "./xen.js";
import type { PvP2m } from "./pv-p2m.js";

/** What a Dom0 device looks like to swiotlb-xen. */
export interface XenDmaDevice {
  readonly name: string;
  /** The streaming DMA mask. */
  readonly dmaMask: bigint;
  readonly segmentBoundaryMask: bigint;
  /** swiotlb=force. */
  readonly forceSwiotlb?: boolean;
}

/** How the frames handed to the DMA API resolve: to a bus frame, and to the machine frame holding the data. */
export interface XenPhysView {
  bfn(frame: number): number;
  mfn(frame: number): number;
  /** Set when frames are MFNs and bfn(frame) = frame + busOffset: lets hot loops skip the calls. */
  readonly busOffset?: number;
}

/** Machine frames whose bus frame is `busOffset` + MFN (XenServer's foreign region), or the MFN itself. */
export function machineView(busOffset = 0): XenPhysView {
  return { bfn: (f) => f + busOffset, mfn: (f) => f, busOffset };
}

/** Frames that are MFNs already (a foreign frame, or any frame of a non-translated view): bfn = mfn = frame. */
export const MACHINE_VIEW: XenPhysView = machineView(0);

/** A PV domain's PFNs through its Linux P2M (identity frames resolve to themselves). */
export function pvPfnView(p2m: PvP2m): XenPhysView {
  return { bfn: (pfn) => p2m.pfnToBfn(pfn), mfn: (pfn) => p2m.mfn(pfn) };
}

interface Bounce {
  /** The pool's (machine) address of the bounce buffer. */
  readonly tlb: number;
  readonly frames: Float64Array;
  readonly offset: number;
  readonly size: number;
  readonly dir: DmaDirection;
}

const LIMIT = (mask: bigint): number => (mask >= 1n << 53n ? Number.MAX_SAFE_INTEGER : Number(mask));

export class XenSwiotlb {
  /** Pages mapped directly / through a bounce buffer. */
  direct = 0;
  bounced = 0;
  readonly #bounces = new Map<number, Bounce>();
  readonly #buf = new Uint8Array(PAGE_SIZE);

  /**
   * @param bounceBus the bus address of a bounce buffer at machine address
   *   `tlb` (swiotlb-xen: the machine address itself; a native swiotlb under
   *   the XenServer PV-IOMMU: Dom0's pseudo-physical address, BFN == PFN)
   * @param checkContiguity whether a multi-page buffer must be machine-contiguous
   *   to map directly (swiotlb-xen's range_straddles_page_boundary)
   */
  constructor(
    readonly pool: SwiotlbPool,
    private readonly phys: PhysicalMemory,
    readonly era: XenEra,
    private readonly bounceBus: (tlb: number) => number = (tlb) => tlb,
    private readonly checkContiguity = true,
  ) {}

  /** dma_capable(dev, addr, size). */
  static dmaCapable(dev: XenDmaDevice, addr: number, size: number): boolean {
    return addr + size - 1 <= LIMIT(dev.dmaMask);
  }

  /** range_straddles_page_boundary: the buffer is not machine-contiguous. */
  static straddles(view: XenPhysView, frame: number, offset: number, size: number): boolean {
    const nr = Math.ceil((offset + size) / PAGE_SIZE);
    const first = view.bfn(frame);
    for (let i = 1; i < nr; i++) if (view.bfn(frame + i) !== first + i) return true;
    return false;
  }

  /** Live bounce buffers. */
  get liveBounces(): number {
    return this.#bounces.size;
  }

  /**
   * xen_swiotlb_map_page: the bus address as a plain number (< 2^53), or -1 for
   * DMA_MAPPING_ERROR. `frame` is in `view`'s numbering.
   */
  mapPhys(dev: XenDmaDevice, view: XenPhysView, frame: number, offset: number, size: number, dir: DmaDirection): number {
    const bfn = view.bfn(frame);
    if (bfn < 0) return -1;
    const devAddr = bfn * PAGE_SIZE + offset;
    if (XenSwiotlb.dmaCapable(dev, devAddr, size) && (offset + size <= PAGE_SIZE || !this.checkContiguity || !XenSwiotlb.straddles(view, frame, offset, size)) && dev.forceSwiotlb !== true) {
      this.direct++;
      return devAddr;
    }
    const tlb = this.pool.mapSingle(dev, view.mfn(frame) * PAGE_SIZE + offset, size, size, dir, true);
    if (tlb < 0) return -1;
    const bus = this.bounceBus(tlb);
    if (!XenSwiotlb.dmaCapable(dev, bus, size)) {
      this.pool.unmapSingle(dev, tlb, size, dir, true);
      return -1;
    }
    const nr = Math.ceil((offset + size) / PAGE_SIZE);
    const frames = new Float64Array(nr);
    for (let i = 0; i < nr; i++) frames[i] = view.mfn(frame + i);
    const b: Bounce = { tlb, frames, offset, size, dir };
    this.#bounces.set(bus, b);
    if (dir === DmaDirection.TO_DEVICE || dir === DmaDirection.BIDIRECTIONAL) this.#copy(b, true);
    this.bounced++;
    return bus;
  }

  /** dma_map_page through swiotlb-xen: a bigint address or DMA_MAPPING_ERROR. */
  mapPage(dev: XenDmaDevice, view: XenPhysView, frame: number, offset: number, size: number, dir: DmaDirection): bigint {
    const a = this.mapPhys(dev, view, frame, offset, size, dir);
    return a < 0 ? DMA_MAPPING_ERROR : BigInt(a);
  }

  /** xen_swiotlb_unmap_page: copies back and frees a bounce; nothing for a direct mapping. */
  unmapPhys(dev: XenDmaDevice, devAddr: number, size: number, dir: DmaDirection, skipCpuSync = false): void {
    const b = this.#bounces.get(devAddr);
    if (b === undefined) return;
    if (!skipCpuSync && (dir === DmaDirection.FROM_DEVICE || dir === DmaDirection.BIDIRECTIONAL)) this.#copy(b, false);
    this.#bounces.delete(devAddr);
    this.pool.unmapSingle(dev, b.tlb, size, dir, true);
  }

  /** is_xen_swiotlb_buffer. */
  isBounce(devAddr: number): boolean {
    return this.#bounces.has(devAddr);
  }

  /**
   * xen_swiotlb_map_sg: every entry mapped on its own into the list's DMA fields
   * (never merged); returns nents, or on failure unmaps what it did and returns
   * 0 (era 2016) or -EIO.
   */
  mapSg(dev: XenDmaDevice, view: XenPhysView, sg: Scatterlist, nents: number, dir: DmaDirection): number {
    const page = sg.page;
    const off = sg.offset;
    const len = sg.length;
    const hi = sg.dmaAddrHi;
    const lo = sg.dmaAddrLo;
    const dlen = sg.dmaLength;
    const limit = LIMIT(dev.dmaMask);
    const busOffset = view.busOffset;
    const force = dev.forceSwiotlb === true;
    for (let i = 0; i < nents; i++) {
      const o = off[i]!;
      const l = len[i]!;
      if (busOffset !== undefined && !force && o + l <= PAGE_SIZE) {
        // The common case, inline: one machine page, reachable: direct.
        const bfn = page[i]! + busOffset;
        if (bfn * PAGE_SIZE + o + l - 1 <= limit) {
          hi[i] = Math.floor(bfn / 0x10_0000);
          lo[i] = (bfn % 0x10_0000) * PAGE_SIZE + o;
          dlen[i] = l;
          this.direct++;
          continue;
        }
      }
      const a = this.mapPhys(dev, view, page[i]!, o, l, dir);
      if (a < 0) {
        this.unmapSg(dev, sg, i, dir, true);
        dlen[0] = 0;
        return this.era === "2016" ? 0 : -ERRNO.EIO;
      }
      hi[i] = Math.floor(a / 0x1_0000_0000);
      lo[i] = a >>> 0;
      dlen[i] = l;
    }
    sg.nents = nents;
    return nents;
  }

  /** xen_swiotlb_unmap_sg over the first `nents` entries (the original count). */
  unmapSg(dev: XenDmaDevice, sg: Scatterlist, nents: number, dir: DmaDirection, skipCpuSync = false): void {
    for (let i = 0; i < nents; i++) {
      const a = sg.dmaAddrHi[i]! * 0x1_0000_0000 + sg.dmaAddrLo[i]!;
      if (this.#bounces.size > 0) this.unmapPhys(dev, a, sg.length[i]!, dir, skipCpuSync);
    }
  }

  /** The machine address of the bounce buffer behind bus address `devAddr`, or -1. */
  bounceMachineAddr(devAddr: number): number {
    return this.#bounces.get(devAddr)?.tlb ?? -1;
  }

  #copy(b: Bounce, toDevice: boolean): void {
    let left = b.size;
    let srcOff = b.offset;
    let at = b.tlb;
    for (let i = 0; left > 0; i++) {
      const n = Math.min(left, PAGE_SIZE - srcOff);
      const chunk = this.#buf.subarray(0, n);
      const mfn = b.frames[i]!;
      const tlbPfn = Math.floor(at / PAGE_SIZE);
      const tlbOff = at % PAGE_SIZE;
      if (toDevice) {
        this.phys.read(mfn, srcOff, chunk);
        this.#write(tlbPfn, tlbOff, chunk);
      } else {
        this.#read(tlbPfn, tlbOff, chunk);
        this.phys.write(mfn, srcOff, chunk);
      }
      left -= n;
      at += n;
      srcOff = 0;
    }
  }

  /** Bounce frames are machine-contiguous within a segment, so a copy may cross into the next frame. */
  #write(pfn: number, off: number, data: Uint8Array): void {
    const first = Math.min(data.length, PAGE_SIZE - off);
    this.phys.write(pfn, off, data.subarray(0, first));
    if (first < data.length) this.phys.write(pfn + 1, 0, data.subarray(first));
  }

  #read(pfn: number, off: number, out: Uint8Array): void {
    const first = Math.min(out.length, PAGE_SIZE - off);
    this.phys.read(pfn, off, out.subarray(0, first));
    if (first < out.length) this.phys.read(pfn + 1, 0, out.subarray(first));
  }
}
