/**
 * A scatterlist (`struct scatterlist[]` with `struct sg_table`'s counts), laid
 * out as structure-of-arrays: one typed array per field, so mapping a list of
 * any length allocates O(1) objects.
 *
 * Model: entry i is `length[i]` bytes of physically contiguous host memory
 * starting `offset[i]` (< 4096) bytes into frame `page[i]`. After a map, the
 * first `count` entries hold the DMA segments (`sg_dma_address`, `sg_dma_len`)
 * and the entries after them hold DMA_MAPPING_ERROR and 0 where the
 * implementation merged; the DMA address is kept as two u32 halves.
 * `origNents` is the number of entries (sg_table.orig_nents) and `nents` what
 * dma_map_sgtable stored (sg_table.nents).
 *
 * The list also records the mapping it carries (device, entry count,
 * direction, bytes), as dma-debug does, so an unmap that does not match is
 * caught, and a second map of a mapped list is refused.
 *
 * Invariants: offset[i] < 4096; while mapped, `mappedBy` is the device and
 * `mappedNents` the nents the map was called with.
 */
import { DMA_ERROR_HALF, dmaAddrFromHalves, dmaPageOfHalves } from "./dma-addr.js";
import { PAGE_SIZE } from "../address/address.js";
import { u32Columns } from "../address/typed-slab.js";

export class Scatterlist {
  readonly origNents: number;
  /** sg_table.nents: DMA segments after dma_map_sgtable. */
  nents = 0;
  readonly page: Uint32Array;
  readonly offset: Uint32Array;
  readonly length: Uint32Array;
  readonly dmaAddrHi: Uint32Array;
  readonly dmaAddrLo: Uint32Array;
  readonly dmaLength: Uint32Array;
  #mappedBy: object | undefined;
  #mappedNents = 0;
  #mappedDir = 0;
  #mappedBytes = 0;

  /** sg_alloc_table: `nents` zeroed entries. */
  constructor(nents: number) {
    if (!(Number.isInteger(nents) && nents >= 1)) throw new RangeError(`a scatterlist needs at least one entry, got ${nents}`);
    this.origNents = nents;
    // One region for the six columns, carved from a slab: a list is allocated per map call.
    [this.page, this.offset, this.length, this.dmaAddrHi, this.dmaAddrLo, this.dmaLength] = u32Columns(6, nents) as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  }

  /** One full page per frame, unmerged (the sg list a vendor builds from pinned pages). */
  static fromPages(frames: ArrayLike<number>, npages: number = frames.length): Scatterlist {
    const sg = new Scatterlist(npages);
    for (let i = 0; i < npages; i++) sg.page[i] = frames[i]!;
    sg.length.fill(PAGE_SIZE);
    return sg;
  }

  /** sg_set_page: entry i is `length` bytes at `offset` into frame `pfn` and the frames after it. */
  set(i: number, pfn: number, offset: number, length: number): this {
    if (!(i >= 0 && i < this.origNents)) throw new RangeError(`entry ${i} is outside the list of ${this.origNents}`);
    if (!(offset >= 0 && offset < PAGE_SIZE)) throw new RangeError(`offset ${offset} must be inside the page`);
    this.page[i] = pfn;
    this.offset[i] = offset;
    this.length[i] = length;
    return this;
  }

  /** sg_dma_address(entry i). */
  dmaAddress(i: number): bigint {
    return dmaAddrFromHalves(this.dmaAddrHi[i]!, this.dmaAddrLo[i]!);
  }

  /** sg_dma_address(entry i) >> 12. */
  dmaPage(i: number): number {
    return dmaPageOfHalves(this.dmaAddrHi[i]!, this.dmaAddrLo[i]!);
  }

  /** sg_dma_address(entry i) & 0xfff. */
  dmaOffset(i: number): number {
    return this.dmaAddrLo[i]! & (PAGE_SIZE - 1);
  }

  /** Whether entry i's DMA address is DMA_MAPPING_ERROR. */
  isMappingError(i: number): boolean {
    return this.dmaAddrHi[i] === DMA_ERROR_HALF && this.dmaAddrLo[i] === DMA_ERROR_HALF;
  }

  /** Sum of the lengths of the first `nents` entries. */
  bytes(nents: number): number {
    let n = 0;
    for (let i = 0; i < nents; i++) n += this.length[i]!;
    return n;
  }

  get mappedBy(): object | undefined {
    return this.#mappedBy;
  }

  get mappedNents(): number {
    return this.#mappedNents;
  }

  get mappedDir(): number {
    return this.#mappedDir;
  }

  get mappedBytes(): number {
    return this.#mappedBytes;
  }

  /** @internal Records the mapping dma_map_sg made (dma-debug's entries). */
  recordMapping(device: object, nents: number, dir: number, bytes: number): void {
    this.#mappedBy = device;
    this.#mappedNents = nents;
    this.#mappedDir = dir;
    this.#mappedBytes = bytes;
  }

  /** @internal Forgets the mapping after dma_unmap_sg. */
  clearMapping(): void {
    this.#mappedBy = undefined;
    this.#mappedNents = 0;
    this.#mappedDir = 0;
    this.#mappedBytes = 0;
  }

  /** @internal __invalidate_sg: every DMA field back to DMA_MAPPING_ERROR / 0. */
  invalidate(nents: number): void {
    this.dmaAddrHi.fill(DMA_ERROR_HALF, 0, nents);
    this.dmaAddrLo.fill(DMA_ERROR_HALF, 0, nents);
    this.dmaLength.fill(0, 0, nents);
  }
}
