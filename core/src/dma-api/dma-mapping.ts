/**
 * The DMA API front (include/linux/dma-mapping.h, kernel/dma/mapping.c): what
 * a driver calls on its device, dispatched to dma-direct, dma-iommu or the
 * 2016 VT-d ops by the device's mode.
 *
 * Model:
 * - `dmaMapPage` returns a `dma_addr_t` (bigint), DMA_MAPPING_ERROR on
 *   failure; `dmaMapSg` returns the DMA segment count, 0 on failure and never
 *   a negative value; `dmaMapSgtable` returns 0 or -EINVAL / -ENOMEM / -EIO /
 *   -EREMOTEIO, turning any other failure (an old op's 0) into -EIO with a
 *   WARN_ON_ONCE, as __dma_map_sg_attrs does. For an intel-2016 device,
 *   `dmaMapSg` behaves as the 2016 front did: the op's 0, no WARN.
 * - An invalid direction is a BUG_ON (the host crashes).
 * - dma-debug is modelled as a gate: every map is recorded, and an unmap whose
 *   address is unknown, or whose size, entry count or direction differs from
 *   the map, is a WARN on the host's KernelLog (with dma-debug's message) and
 *   unmaps NOTHING, so the mismatch also shows as a leak. `dmaUnmapSg` must be
 *   given the nents passed to `dmaMapSg`, not the returned count. A list that
 *   is already mapped cannot be mapped again (WARN, 0 / -EINVAL).
 * - Syncs only move data for swiotlb bounce buffers (dma-direct); coherent
 *   x86 devices behind an IOMMU need no maintenance, and the 2016 VT-d ops had
 *   no sync methods.
 * - dma_set_mask fails with -EIO when dma_supported says no: every mask under
 *   dma-iommu, masks of at least 24 bits (ZONE_DMA) otherwise.
 *
 * Invariants: a device's `liveMappings` is the number of successful maps not
 * matched by an unmap; an unmap that WARNs changes no state.
 */
import { ERRNO } from "../errors/errno.js";
import { PAGE_SIZE } from "../address/address.js";
import {
  DMA_DIRECTION_NAMES,
  DMA_MAPPING_ERROR,
  SGTABLE_ERRNOS,
  dmaBitMask,
  dmaOffsetOf,
  dmaPageOf,
  hex,
  validDmaDirection,
  type DmaDirection,
} from "./dma-addr.js";
import { ULONG_MAX, type DmaDevice } from "./dma-device.js";
import {
  dmaDirectMapPage,
  dmaDirectMapSg,
  dmaDirectSyncSgForCpu,
  dmaDirectSyncSgForDevice,
  dmaDirectSyncSingleForCpu,
  dmaDirectSyncSingleForDevice,
  dmaDirectUnmapPage,
  dmaDirectUnmapSg,
} from "./dma-direct.js";
import type { Scatterlist } from "./scatterlist.js";

const DMA_BIT_MASK_24 = dmaBitMask(24);
const TWO_53 = 1n << 53n;

function enter(dev: DmaDevice, dir: number, site: string): asserts dir is DmaDirection {
  const log = dev.host.kernel;
  log.assertAlive();
  log.bugOn(!validDmaDirection(dir), site, "BUG_ON(!valid_dma_direction(dir))", { device: dev.name, dir });
}

const dirName = (dir: number): string => DMA_DIRECTION_NAMES[dir] ?? `${dir}`;

/**
 * dma_map_page: `size` bytes at `offset` into host frame `pfn` (and the frames
 * after it, which must be physically contiguous). Returns the device address,
 * or DMA_MAPPING_ERROR.
 */
export function dmaMapPage(dev: DmaDevice, pfn: number, offset: number, size: number, dir: DmaDirection): bigint {
  enter(dev, dir, "dma_map_page_attrs");
  if (!(Number.isInteger(size) && size > 0 && Number.isInteger(offset) && offset >= 0)) throw new RangeError(`dma_map_page of ${size} bytes at offset ${offset}`);
  pfn += Math.floor(offset / PAGE_SIZE);
  offset %= PAGE_SIZE;
  const addr = dev.mode === "direct" ? dmaDirectMapPage(dev, pfn, offset, size, dir) : dev.iommu!.mapPage(dev, pfn, offset, size, dir);
  if (addr !== DMA_MAPPING_ERROR) dev.singles.add(dmaPageOf(addr), dmaOffsetOf(addr), size, dir);
  return addr;
}

/** dma_unmap_page: must repeat the address, size and direction of the map. */
export function dmaUnmapPage(dev: DmaDevice, addr: bigint, size: number, dir: DmaDirection): void {
  enter(dev, dir, "dma_unmap_page_attrs");
  const log = dev.host.kernel;
  if (addr === DMA_MAPPING_ERROR) {
    log.warnOn(true, "check_unmap", `${dev.name}: DMA-API: device driver tries to free an invalid DMA memory address`);
    return;
  }
  const singles = dev.singles;
  const slot = singles.find(dmaPageOf(addr), dmaOffsetOf(addr));
  if (slot < 0) {
    log.warnOn(true, "check_unmap", `${dev.name}: DMA-API: device driver tries to free DMA memory it has not allocated [device address=${hex(addr)}] [size=${size} bytes]`, { addr, size });
    return;
  }
  if (singles.sizeAt(slot) !== size) {
    log.warnOn(true, "check_unmap", `${dev.name}: DMA-API: device driver frees DMA memory with different size [device address=${hex(addr)}] [map size=${singles.sizeAt(slot)} bytes] [unmap size=${size} bytes]`, { addr, size, mapSize: singles.sizeAt(slot) });
    return;
  }
  if (singles.dirAt(slot) !== dir) {
    log.warnOn(true, "check_unmap", `${dev.name}: DMA-API: device driver frees DMA memory with different direction [device address=${hex(addr)}] [size=${size} bytes] [mapped with ${dirName(singles.dirAt(slot))}] [unmapped with ${dirName(dir)}]`, { addr, size });
    return;
  }
  singles.remove(slot);
  if (dev.mode === "direct") dmaDirectUnmapPage(dev, addr, size, dir);
  else dev.iommu!.unmapPage(dev, addr, size, dir);
}

/** dma_mapping_error. */
export const dmaMappingError = (_dev: DmaDevice, addr: bigint): boolean => addr === DMA_MAPPING_ERROR;

/** __dma_map_sg_attrs: the segment count, or a negative errno; `legacyFront` keeps an old op's 0. */
function mapSgAttrs(dev: DmaDevice, sg: Scatterlist, nents: number, dir: number, legacyFront: boolean): number {
  enter(dev, dir, "dma_map_sg_attrs");
  if (!(Number.isInteger(nents) && nents >= 1 && nents <= sg.origNents)) throw new RangeError(`dma_map_sg of ${nents} entries of a list of ${sg.origNents}`);
  const log = dev.host.kernel;
  if (sg.mappedBy !== undefined) {
    log.warnOn(true, "debug_dma_map_sg", `${dev.name}: DMA-API: device driver maps a scatterlist that is already mapped`, { nents });
    return -ERRNO.EINVAL;
  }
  let ents = dev.mode === "direct" ? dmaDirectMapSg(dev, sg, nents, dir) : dev.iommu!.mapSg(dev, sg, nents, dir);
  if (ents > 0) {
    sg.recordMapping(dev, nents, dir, sg.bytes(nents));
    dev.liveScatterlists++;
  } else if (!(legacyFront && ents === 0) && log.warnOnce(!SGTABLE_ERRNOS.includes(ents), "__dma_map_sg_attrs", "WARN_ON_ONCE(ents != -EINVAL && ents != -ENOMEM && ents != -EIO && ents != -EREMOTEIO)", { device: dev.name, ents })) {
    ents = -ERRNO.EIO;
  }
  return ents;
}

/** dma_map_sg: the number of DMA segments (1..nents), 0 on failure, never negative. */
export function dmaMapSg(dev: DmaDevice, sg: Scatterlist, nents: number, dir: DmaDirection): number {
  const ents = mapSgAttrs(dev, sg, nents, dir, dev.mode === "intel-2016");
  return ents < 0 ? 0 : ents;
}

/** dma_map_sgtable: 0 (sgt.nents set), or -EINVAL / -ENOMEM / -EIO / -EREMOTEIO. */
export function dmaMapSgtable(dev: DmaDevice, sgt: Scatterlist, dir: DmaDirection): number {
  const ents = mapSgAttrs(dev, sgt, sgt.origNents, dir, false);
  if (ents < 0) return ents;
  sgt.nents = ents;
  return 0;
}

/** dma_unmap_sg: `nents` must be the count given to dma_map_sg, not the count it returned. */
export function dmaUnmapSg(dev: DmaDevice, sg: Scatterlist, nents: number, dir: DmaDirection): void {
  enter(dev, dir, "dma_unmap_sg_attrs");
  const log = dev.host.kernel;
  if (sg.mappedBy !== dev) {
    log.warnOn(true, "check_unmap", `${dev.name}: DMA-API: device driver tries to free DMA memory it has not allocated [device address=${hex(sg.dmaAddress(0))}] [size=${sg.length[0]} bytes]`, { nents });
    return;
  }
  if (nents !== sg.mappedNents) {
    log.warnOn(true, "check_unmap", `${dev.name}: DMA-API: device driver frees DMA sg list with different entry count [map count=${sg.mappedNents}] [unmap count=${nents}]`, { mapNents: sg.mappedNents, nents });
    return;
  }
  const bytes = sg.bytes(nents);
  if (bytes !== sg.mappedBytes) {
    log.warnOn(true, "check_unmap", `${dev.name}: DMA-API: device driver frees DMA memory with different size [device address=${hex(sg.dmaAddress(0))}] [map size=${sg.mappedBytes} bytes] [unmap size=${bytes} bytes]`, { nents });
    return;
  }
  if (dir !== sg.mappedDir) {
    log.warnOn(true, "check_unmap", `${dev.name}: DMA-API: device driver frees DMA memory with different direction [device address=${hex(sg.dmaAddress(0))}] [size=${bytes} bytes] [mapped with ${dirName(sg.mappedDir)}] [unmapped with ${dirName(dir)}]`, { nents });
    return;
  }
  if (dev.mode === "direct") dmaDirectUnmapSg(dev, sg, nents, dir);
  else dev.iommu!.unmapSg(dev, sg, nents, dir);
  sg.clearMapping();
  dev.liveScatterlists--;
}

/** dma_unmap_sgtable. */
export function dmaUnmapSgtable(dev: DmaDevice, sgt: Scatterlist, dir: DmaDirection): void {
  dmaUnmapSg(dev, sgt, sgt.origNents, dir);
}

/** dma_sync_single_for_cpu: copies a bounce buffer back (FROM_DEVICE, BIDIRECTIONAL). */
export function dmaSyncSingleForCpu(dev: DmaDevice, addr: bigint, size: number, dir: DmaDirection): void {
  enter(dev, dir, "dma_sync_single_for_cpu");
  if (dev.mode === "direct" && addr < TWO_53) dmaDirectSyncSingleForCpu(dev, Number(addr), size, dir);
}

/** dma_sync_single_for_device: copies into a bounce buffer (TO_DEVICE, BIDIRECTIONAL). */
export function dmaSyncSingleForDevice(dev: DmaDevice, addr: bigint, size: number, dir: DmaDirection): void {
  enter(dev, dir, "dma_sync_single_for_device");
  if (dev.mode === "direct" && addr < TWO_53) dmaDirectSyncSingleForDevice(dev, Number(addr), size, dir);
}

/** dma_sync_sg_for_cpu, over the original `nents`. */
export function dmaSyncSgForCpu(dev: DmaDevice, sg: Scatterlist, nents: number, dir: DmaDirection): void {
  enter(dev, dir, "dma_sync_sg_for_cpu");
  if (dev.mode === "direct") dmaDirectSyncSgForCpu(dev, sg, nents, dir);
}

/** dma_sync_sg_for_device, over the original `nents`. */
export function dmaSyncSgForDevice(dev: DmaDevice, sg: Scatterlist, nents: number, dir: DmaDirection): void {
  enter(dev, dir, "dma_sync_sg_for_device");
  if (dev.mode === "direct") dmaDirectSyncSgForDevice(dev, sg, nents, dir);
}

/** dma_supported. */
export function dmaSupported(dev: DmaDevice, mask: bigint): boolean {
  if (dev.mode === "dma-iommu") return true;
  return mask >= DMA_BIT_MASK_24;
}

/** dma_set_mask: 0, or -EIO when the mask is unsupported. */
export function dmaSetMask(dev: DmaDevice, mask: bigint): number {
  mask &= ULONG_MAX;
  if (!dmaSupported(dev, mask)) return -ERRNO.EIO;
  dev.setMasks(mask, undefined);
  return 0;
}

/** dma_set_coherent_mask. */
export function dmaSetCoherentMask(dev: DmaDevice, mask: bigint): number {
  mask &= ULONG_MAX;
  if (!dmaSupported(dev, mask)) return -ERRNO.EIO;
  dev.setMasks(undefined, mask);
  return 0;
}

/** dma_set_mask_and_coherent. */
export function dmaSetMaskAndCoherent(dev: DmaDevice, mask: bigint): number {
  const rc = dmaSetMask(dev, mask);
  return rc === 0 ? dmaSetCoherentMask(dev, mask) : rc;
}

/** dma_get_mask. */
export const dmaGetMask = (dev: DmaDevice): bigint => dev.dmaMask;

/** dma_set_max_seg_size. */
export function dmaSetMaxSegSize(dev: DmaDevice, size: number): number {
  dev.setMaxSegmentSize(size);
  return 0;
}

/** dma_set_seg_boundary. */
export function dmaSetSegBoundary(dev: DmaDevice, mask: bigint): number {
  dev.setSegmentBoundary(mask);
  return 0;
}

/**
 * dma_max_mapping_size: the swiotlb limit for a direct device that may bounce
 * (forced, or addressing-limited below the top of RAM), else SIZE_MAX.
 */
export function dmaMaxMappingSize(dev: DmaDevice): number {
  const pool = dev.swiotlb;
  if (dev.mode !== "direct" || pool === undefined) return Number.MAX_SAFE_INTEGER;
  const limited = dev.dmaLimitNumber < dev.host.phys.ramFrames * PAGE_SIZE - 1;
  return limited || dev.forceSwiotlb ? pool.maxMappingSize() : Number.MAX_SAFE_INTEGER;
}
