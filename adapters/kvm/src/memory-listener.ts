/**
 * A QEMU-like VMM: guest RAM in the VMM process, the PC memory layout, KVM
 * memslots for it, and the VFIO memory listener that mirrors every RAM section
 * into the type1 container with VFIO_IOMMU_MAP_DMA (iova = GPA, vaddr = HVA).
 *
 * Layout (q35-like): RAM below 4 GiB up to `lowmemLimit` (3 GiB by default),
 * the PCI hole up to 4 GiB with the BIOS ROM at its top (read-only: mapped
 * READ only), RAM above 4 GiB, then hot-pluggable DIMMs and virtio-mem regions.
 * A virtio-mem region is mapped one block per MAP_DMA, as QEMU's
 * RamDiscardListener does, so unplugging (ballooning out) a block is a v2
 * UNMAP_DMA of whole mappings followed by discarding the pages.
 *
 * During migration the listener's log_sync reads the container's dirty bitmap
 * (VFIO_IOMMU_DIRTY_PAGES GET_BITMAP) over each mapped run of each section, in
 * host pages, as QEMU does for a container without device dirty tracking.
 *
 * Invariants: every RAM section has exactly one memslot and one MAP_DMA per
 * block; an unplugged block has neither a mapping nor backing pages.
 */
import {
  ERRNO,
  PAGE_SIZE_N,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_IOMMU_DIRTY_PAGES,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  dirtyBitmapBytes,
  hvaToPfn,
  type BackingKind,
  type DirtyReport,
  type Hva,
  type Host,
  type Process,
} from "@vgpu-iommu/core";
import { KVM_MEM_READONLY, type KvmVm } from "./kvm-vm.js";

const GiB = 1n << 30n;
const FOUR_GIB = 4n * GiB;
export const BIOS_ROM_BASE = 0xfffc0000n;
export const BIOS_ROM_SIZE = 0x40000n;

export interface RamSection {
  readonly name: string;
  readonly gpa: bigint;
  readonly size: bigint;
  readonly hva: Hva;
  readonly readonly: boolean;
  readonly slot: number;
  /** MAP_DMA granularity: the whole section, or a virtio-mem block. */
  readonly block: bigint;
  /** Blocks currently plugged (mapped and backed), by index. */
  readonly plugged: boolean[];
}

export interface QemuVmmOptions {
  readonly ramBytes: bigint;
  readonly backing?: BackingKind;
  readonly lowmemLimit?: bigint;
}

export class QemuVmm {
  readonly sections: RamSection[] = [];
  #nextSlot = 0;
  #nextHotplugGpa: bigint;

  constructor(
    readonly host: Host,
    readonly process: Process,
    readonly vm: KvmVm,
    /** The VFIO container fd the listener maps into; undefined before a vGPU is added. */
    public containerFd: number | undefined,
  ) {
    this.#nextHotplugGpa = FOUR_GIB;
  }

  /** Builds the boot layout: low RAM, the BIOS ROM, high RAM. Returns 0 or the first negative errno. */
  async boot(options: QemuVmmOptions): Promise<number> {
    const lowmemLimit = options.lowmemLimit ?? 3n * GiB;
    const low = options.ramBytes < lowmemLimit ? options.ramBytes : lowmemLimit;
    const high = options.ramBytes - low;
    const backing = options.backing ?? "scattered-4k";
    let r = await this.addSection("ram-below-4g", 0n, low, backing, false, low);
    if (r === 0) r = await this.addSection("bios-rom", BIOS_ROM_BASE, BIOS_ROM_SIZE, "scattered-4k", true, BIOS_ROM_SIZE);
    if (r === 0 && high > 0n) r = await this.addSection("ram-above-4g", FOUR_GIB, high, backing, false, high);
    this.#nextHotplugGpa = FOUR_GIB + (high > 0n ? ((high + GiB - 1n) / GiB) * GiB : 0n);
    return r;
  }

  /** Hot-plugs a DIMM above the existing RAM. */
  plugDimm(name: string, size: bigint, backing: BackingKind = "scattered-4k"): Promise<number> {
    const gpa = this.#nextHotplugGpa;
    this.#nextHotplugGpa += ((size + GiB - 1n) / GiB) * GiB;
    return this.addSection(name, gpa, size, backing, false, size);
  }

  /** A virtio-mem region whose blocks are mapped one MAP_DMA each. */
  addVirtioMem(name: string, size: bigint, block: bigint, backing: BackingKind = "scattered-4k"): Promise<number> {
    const gpa = this.#nextHotplugGpa;
    this.#nextHotplugGpa += ((size + GiB - 1n) / GiB) * GiB;
    return this.addSection(name, gpa, size, backing, false, block);
  }

  section(name: string): RamSection {
    const s = this.sections.find((x) => x.name === name);
    if (s === undefined) throw new RangeError(`no RAM section ${name}`);
    return s;
  }

  /** The HVA backing a GPA, or undefined outside guest RAM. */
  gpaToHva(gpa: bigint): bigint | undefined {
    const s = this.sections.find((x) => gpa >= x.gpa && gpa < x.gpa + x.size);
    return s === undefined ? undefined : s.hva + (gpa - s.gpa);
  }

  async addSection(name: string, gpa: bigint, size: bigint, backing: BackingKind, readonly: boolean, block: bigint): Promise<number> {
    const hva = this.process.mmap({ length: size, backing, prot: { read: true, write: !readonly } });
    const slot = this.#nextSlot++;
    const r = this.vm.setUserMemoryRegion({ slot, flags: readonly ? KVM_MEM_READONLY : 0, guest_phys_addr: gpa, memory_size: size, userspace_addr: hva });
    if (r !== 0) {
      this.process.munmap(hva);
      return r;
    }
    const blocks = Number(size / block);
    const section: RamSection = { name, gpa, size, hva, readonly, slot, block, plugged: new Array<boolean>(blocks).fill(true) };
    this.sections.push(section);
    for (let b = 0; b < blocks; b++) {
      const m = await this.#mapBlock(section, b);
      if (m !== 0) return m;
    }
    return 0;
  }

  /** Maps every section into a container that arrives after boot (the listener's region_add replay). */
  async attachContainer(fd: number): Promise<number> {
    this.containerFd = fd;
    for (const s of this.sections) {
      for (let b = 0; b < s.plugged.length; b++) {
        if (!s.plugged[b]) continue;
        const r = await this.#mapBlock(s, b);
        if (r !== 0) return r;
      }
    }
    return 0;
  }

  /**
   * Unplugs (balloons out) blocks [first, first + count) of a section: UNMAP_DMA
   * of each block's mapping, which invalidates vendor pins there, then the
   * pages are discarded. Returns the first negative errno, or the bytes unmapped.
   */
  async unplugBlocks(name: string, first: number, count: number): Promise<bigint | number> {
    const s = this.section(name);
    let total = 0n;
    for (let b = first; b < first + count; b++) {
      if (!s.plugged[b]) return -ERRNO.EINVAL;
      if (this.containerFd !== undefined) {
        const unmap = { argsz: 24, flags: 0, iova: s.gpa + BigInt(b) * s.block, size: s.block };
        const r = await this.host.ioctl(this.process, this.containerFd, VFIO_IOMMU_UNMAP_DMA, unmap);
        if (r !== 0) return r;
        total += unmap.size;
      }
      s.plugged[b] = false;
      this.process.mm.madviseDontNeed(hvaToPfn((s.hva + BigInt(b) * s.block) as Hva), Number(s.block >> 12n));
    }
    return total;
  }

  /** Plugs blocks back in: fresh pages, a new MAP_DMA each. */
  async plugBlocks(name: string, first: number, count: number): Promise<number> {
    const s = this.section(name);
    for (let b = first; b < first + count; b++) {
      if (s.plugged[b]) return -ERRNO.EINVAL;
      s.plugged[b] = true;
      const r = await this.#mapBlock(s, b);
      if (r !== 0) return r;
    }
    return 0;
  }

  /** Hot-unplugs a whole section: UNMAP_DMA of its mappings, memslot deletion, munmap. */
  async unplugSection(name: string): Promise<number> {
    const s = this.section(name);
    for (let b = 0; b < s.plugged.length; b++) {
      if (!s.plugged[b] || this.containerFd === undefined) continue;
      const r = await this.host.ioctl(this.process, this.containerFd, VFIO_IOMMU_UNMAP_DMA, { argsz: 24, flags: 0, iova: s.gpa + BigInt(b) * s.block, size: s.block });
      if (r !== 0) return r;
      s.plugged[b] = false;
    }
    const r = this.vm.setUserMemoryRegion({ slot: s.slot, flags: 0, guest_phys_addr: s.gpa, memory_size: 0n, userspace_addr: s.hva });
    if (r !== 0) return r;
    this.process.munmap(s.hva);
    this.sections.splice(this.sections.indexOf(s), 1);
    return 0;
  }

  /** VFIO_IOMMU_DIRTY_PAGES START or STOP on the container: 0 or a negative errno; -ENODEV before a vGPU brought one. */
  setDirtyLogging(on: boolean): Promise<number> {
    if (this.containerFd === undefined) return Promise.resolve(-ERRNO.ENODEV);
    const flags = on ? VFIO_IOMMU_DIRTY_PAGES_FLAG_START : VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP;
    return this.host.ioctl(this.process, this.containerFd, VFIO_IOMMU_DIRTY_PAGES, { argsz: 8, flags });
  }

  /** log_sync: GET_BITMAP over each run of plugged blocks (whole mappings, never bisected); one report per run. */
  async syncDirtyLog(): Promise<DirtyReport[] | number> {
    if (this.containerFd === undefined) return -ERRNO.ENODEV;
    const reports: DirtyReport[] = [];
    for (const s of this.sections) {
      for (let b = 0; b < s.plugged.length; ) {
        if (!s.plugged[b]) {
          b++;
          continue;
        }
        let end = b + 1;
        while (end < s.plugged.length && s.plugged[end]) end++;
        const iova = s.gpa + BigInt(b) * s.block;
        const size = BigInt(end - b) * s.block;
        const npages = Number(size / PAGE_SIZE_N);
        const bitmap = new Uint8Array(Number(dirtyBitmapBytes(BigInt(npages))));
        const arg = { argsz: 48, flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, data: { iova, size, bitmap: { pgsize: PAGE_SIZE_N, size: BigInt(bitmap.length), data: bitmap } } };
        const r = await this.host.ioctl(this.process, this.containerFd, VFIO_IOMMU_DIRTY_PAGES, arg);
        if (r !== 0) return r;
        reports.push({ bitmap, firstGfn: Number(iova / PAGE_SIZE_N), npages });
        b = end;
      }
    }
    return reports;
  }

  #mapBlock(s: RamSection, b: number): Promise<number> {
    if (this.containerFd === undefined) return Promise.resolve(0);
    const offset = BigInt(b) * s.block;
    const flags = VFIO_DMA_MAP_FLAG_READ | (s.readonly ? 0 : VFIO_DMA_MAP_FLAG_WRITE);
    return this.host.ioctl(this.process, this.containerFd, VFIO_IOMMU_MAP_DMA, { argsz: 32, flags, vaddr: s.hva + offset, iova: s.gpa + offset, size: s.block });
  }
}
