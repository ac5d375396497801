/**
 * Direct mapping (kernel/dma/direct.{c,h}): no IOMMU translation, or an
 * identity domain. On x86 phys_to_dma is the identity, so IOVA = PA.
 *
 * Model:
 * - map: a device forced to swiotlb always bounces; otherwise, if the buffer
 *   is not dma_capable (above min_not_zero(mask, bus_dma_limit)), it bounces
 *   through swiotlb when a pool is active, else dev_WARN_ONCE "DMA addr ...
 *   overflow (mask ..., bus limit ...)" and DMA_MAPPING_ERROR. A bounce
 *   buffer the device cannot reach either is released and warned about
 *   ("swiotlb addr ... overflow").
 * - map_sg maps every entry on its own and never merges; it returns nents, or
 *   -EIO after unmapping what it had mapped (without copying back).
 * - unmap (and sync_for_cpu) of an address inside the swiotlb pool copies
 *   back and, for unmap, frees the slots.
 * - Coherent x86 devices need no cache maintenance; none is modelled.
 *
 * Invariants: a direct mapping of a reachable buffer is its physical address;
 * every bounce slot taken by a map is released by its unmap.
 */
import { ERRNO } from "../errors/errno.js";
import { PAGE_SIZE } from "../address/address.js";
import { DMA_ERROR_HALF, DMA_MAPPING_ERROR, TWO_32, dmaAddrOfNumber, hex, type DmaDirection } from "./dma-addr.js";
import { dmaCapable, type DmaDevice } from "./dma-device.js";
import type { Scatterlist } from "./scatterlist.js";

/** swiotlb_map: a bounce buffer's address, or -1. */
function swiotlbMap(dev: DmaDevice, phys: number, size: number, dir: DmaDirection): number {
  const pool = dev.swiotlb!;
  const tlb = pool.mapSingle(dev, phys, size, size, dir);
  if (tlb < 0) return -1;
  if (!dmaCapable(dev, tlb, size)) {
    pool.unmapSingle(dev, tlb, size, dir, true);
    dev.host.kernel.warnOnce(true, "swiotlb_map", `${dev.name}: swiotlb addr ${hex(tlb)}+${size} overflow (mask ${hex(dev.dmaMask)}, bus limit ${hex(dev.busDmaLimit)}).`);
    return -1;
  }
  return tlb;
}

/** dma_direct_map_phys: the device address of `size` bytes at physical `phys`, or -1. */
export function dmaDirectMapPhys(dev: DmaDevice, phys: number, size: number, dir: DmaDirection): number {
  if (dev.forceSwiotlb && dev.swiotlb !== undefined) return swiotlbMap(dev, phys, size, dir);
  if (!dmaCapable(dev, phys, size)) {
    if (dev.swiotlb !== undefined) return swiotlbMap(dev, phys, size, dir);
    dev.host.kernel.warnOnce(true, "dma_direct_map_page", `${dev.name}: DMA addr ${hex(phys)}+${size} overflow (mask ${hex(dev.dmaMask)}, bus limit ${hex(dev.busDmaLimit)}).`);
    return -1;
  }
  return phys;
}

/** dma_direct_unmap_phys: copies back from and frees a bounce buffer; a direct address needs nothing. */
export function dmaDirectUnmapPhys(dev: DmaDevice, addr: number, size: number, dir: DmaDirection, skipCpuSync = false): void {
  const pool = dev.swiotlb;
  if (pool !== undefined && pool.isSwiotlbBuffer(addr)) pool.unmapSingle(dev, addr, size, dir, skipCpuSync);
}

export function dmaDirectMapPage(dev: DmaDevice, pfn: number, offset: number, size: number, dir: DmaDirection): bigint {
  const addr = dmaDirectMapPhys(dev, pfn * PAGE_SIZE + offset, size, dir);
  return addr < 0 ? DMA_MAPPING_ERROR : dmaAddrOfNumber(addr);
}

export function dmaDirectUnmapPage(dev: DmaDevice, addr: bigint, size: number, dir: DmaDirection): void {
  if (addr < 1n << 53n) dmaDirectUnmapPhys(dev, Number(addr), size, dir);
}

/** dma_direct_map_sg: nents, or -EIO. */
export function dmaDirectMapSg(dev: DmaDevice, sg: Scatterlist, nents: number, dir: DmaDirection): number {
  for (let i = 0; i < nents; i++) {
    const len = sg.length[i]!;
    const addr = dmaDirectMapPhys(dev, sg.page[i]! * PAGE_SIZE + sg.offset[i]!, len, dir);
    if (addr < 0) {
      sg.dmaAddrHi[i] = DMA_ERROR_HALF;
      sg.dmaAddrLo[i] = DMA_ERROR_HALF;
      for (let k = 0; k < i; k++) dmaDirectUnmapPhys(dev, addressOf(sg, k), sg.dmaLength[k]!, dir, true);
      return -ERRNO.EIO;
    }
    sg.dmaAddrHi[i] = Math.floor(addr / TWO_32);
    sg.dmaAddrLo[i] = addr % TWO_32;
    sg.dmaLength[i] = len;
  }
  return nents;
}

export function dmaDirectUnmapSg(dev: DmaDevice, sg: Scatterlist, nents: number, dir: DmaDirection): void {
  for (let i = 0; i < nents; i++) dmaDirectUnmapPhys(dev, addressOf(sg, i), sg.dmaLength[i]!, dir);
}

export function dmaDirectSyncSingleForCpu(dev: DmaDevice, addr: number, size: number, dir: DmaDirection): void {
  const pool = dev.swiotlb;
  if (pool !== undefined && pool.isSwiotlbBuffer(addr)) pool.syncSingleForCpu(dev, addr, size, dir);
}

export function dmaDirectSyncSingleForDevice(dev: DmaDevice, addr: number, size: number, dir: DmaDirection): void {
  const pool = dev.swiotlb;
  if (pool !== undefined && pool.isSwiotlbBuffer(addr)) pool.syncSingleForDevice(dev, addr, size, dir);
}

export function dmaDirectSyncSgForCpu(dev: DmaDevice, sg: Scatterlist, nents: number, dir: DmaDirection): void {
  for (let i = 0; i < nents; i++) dmaDirectSyncSingleForCpu(dev, addressOf(sg, i), sg.length[i]!, dir);
}

export function dmaDirectSyncSgForDevice(dev: DmaDevice, sg: Scatterlist, nents: number, dir: DmaDirection): void {
  for (let i = 0; i < nents; i++) dmaDirectSyncSingleForDevice(dev, addressOf(sg, i), sg.length[i]!, dir);
}

const addressOf = (sg: Scatterlist, i: number): number => sg.dmaAddrHi[i]! * TWO_32 + sg.dmaAddrLo[i]!;
