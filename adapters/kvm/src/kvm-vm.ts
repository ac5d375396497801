/**
 * A KVM virtual machine: memslots, the GFN -> HVA -> PFN walk, guest memory
 * access, and write tracking of guest frames (virt/kvm/kvm_main.c,
 * arch/x86/kvm/mmu/page_track.c).
 *
 * Model:
 * - Two address spaces (0 normal, 1 SMM), each a sorted array of memslots
 *   `{ id, baseGfn, npages, userspacePage, flags }` that never overlap; the
 *   lookup tries the last slot used, then binary-searches, as gfn_to_memslot.
 * - The user-slot limit is the generation's: 509 in 2016, 32764 today.
 * - GFN -> PFN goes through the VMM process's mm, faulting pages in; it does
 *   not pin (a vGPU pins through VFIO). Errors are the kernel's error PFNs,
 *   encoded as negative numbers so the hot path stays on small integers.
 * - Write tracking keeps a count per tracked GFN; a guest write to a tracked
 *   frame is emulated (the bytes land in guest memory) and then reported to
 *   the registered notifiers with the GPA and the bytes, as track_write is.
 *
 * Invariants: memslots of one address space never overlap; every tracked GFN
 * lies in a memslot (slot removal drops its tracking and tells the notifiers).
 */
import { ERRNO, Observable, type Host, type Process } from "@vgpu-iommu/core";

export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_MEM_READONLY = 1 << 1;
export const KVM_ADDRESS_SPACE_NUM = 2;

export type KvmGeneration = "2016" | "current";
/** KVM_USER_MEM_SLOTS on x86: 509 (+3 private) in 2016, SHRT_MAX minus internal slots today. */
export const KVM_USER_MEM_SLOTS: Readonly<Record<KvmGeneration, number>> = { "2016": 509, current: 32764 };

/** Error PFNs (kvm_host.h), in the model's encoding: a negative number instead of the high bits. */
export const KVM_PFN_ERR_FAULT = -1;
export const KVM_PFN_ERR_HWPOISON = -2;
export const KVM_PFN_ERR_RO_FAULT = -3;
export const KVM_PFN_NOSLOT = -4;
/** The kernel's values of those error PFNs. */
export const KVM_PFN_ERROR_VALUES: Readonly<Record<number, bigint>> = {
  [KVM_PFN_ERR_FAULT]: 0x7ffn << 52n,
  [KVM_PFN_ERR_HWPOISON]: (0x7ffn << 52n) + 1n,
  [KVM_PFN_ERR_RO_FAULT]: (0x7ffn << 52n) + 2n,
  [KVM_PFN_NOSLOT]: 1n << 63n,
};
/** KVM_HVA_ERR_BAD, as a page number the model never maps. */
export const KVM_HVA_ERR_BAD = -1;

/** `struct kvm_userspace_memory_region`. */
export interface KvmUserspaceMemoryRegion {
  slot: number;
  flags: number;
  guest_phys_addr: bigint;
  memory_size: bigint;
  userspace_addr: bigint;
}

export class Memslot {
  constructor(
    readonly id: number,
    readonly asId: number,
    readonly baseGfn: number,
    readonly npages: number,
    readonly userspacePage: number,
    readonly flags: number,
  ) {}

  get endGfn(): number {
    return this.baseGfn + this.npages;
  }

  /**
   * The frame table behind the slot when one VMA of a non-PFNMAP object backs
   * all of it, valid while the mm's layout generation is `hintGeneration`:
   * the hot GFN -> PFN path reads `hintFrames[hintBase + (gfn - baseGfn)]`.
   */
  hintFrames: Uint32Array | null = null;
  hintBase = 0;
  hintGeneration = -1;
}

/** kvm_page_track_notifier_node: called after KVM has emulated a guest write to a tracked frame. */
export interface TrackNotifier {
  trackWrite(gpa: bigint, data: Uint8Array): void;
  /** The slot is going away: tracking of its frames ends. */
  trackRemoveRegion(firstGfn: number, npages: number): void;
}

export interface KvmVmEvents {
  memslotChanged(e: { id: number; asId: number; change: "create" | "delete" | "move" | "flags"; baseGfn: number; npages: number }): void;
  guestWriteTracked(e: { gpa: bigint; length: number }): void;
}

export interface KvmVmOptions {
  readonly name: string;
  readonly generation?: KvmGeneration;
}

const PAGE = 4096n;

export class KvmVm extends Observable<KvmVmEvents> {
  readonly name: string;
  readonly generation: KvmGeneration;
  readonly #slots: Memslot[][] = [[], []];
  readonly #byId = new Map<number, Memslot>();
  #last: Memslot | undefined;
  readonly #tracked = new Map<number, number>();
  readonly #notifiers: TrackNotifier[] = [];

  constructor(
    readonly host: Host,
    /** The VMM process: kvm->mm. */
    readonly vmm: Process,
    options: KvmVmOptions,
  ) {
    super();
    this.name = options.name;
    this.generation = options.generation ?? "current";
  }

  get mm(): Process["mm"] {
    return this.vmm.mm;
  }

  memslots(asId = 0): readonly Memslot[] {
    return this.#slots[asId] ?? [];
  }

  /** KVM_SET_USER_MEMORY_REGION: 0 or a negative errno, in __kvm_set_memory_region's order. */
  setUserMemoryRegion(mem: KvmUserspaceMemoryRegion): number {
    if ((mem.flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)) !== 0) return -ERRNO.EINVAL;
    const asId = mem.slot >>> 16;
    const id = mem.slot & 0xffff;
    if (id >= KVM_USER_MEM_SLOTS[this.generation]) return -ERRNO.EINVAL;
    if ((mem.memory_size & (PAGE - 1n)) !== 0n || mem.memory_size < 0n) return -ERRNO.EINVAL;
    if ((mem.guest_phys_addr & (PAGE - 1n)) !== 0n || mem.guest_phys_addr < 0n) return -ERRNO.EINVAL;
    if ((mem.userspace_addr & (PAGE - 1n)) !== 0n || mem.userspace_addr < 0n || mem.userspace_addr >= 1n << 47n) return -ERRNO.EINVAL;
    if (asId >= KVM_ADDRESS_SPACE_NUM) return -ERRNO.EINVAL;
    if (mem.guest_phys_addr + mem.memory_size >= 1n << 64n) return -ERRNO.EINVAL;
    const key = mem.slot;
    const old = this.#byId.get(key);
    if (mem.memory_size === 0n) {
      if (old === undefined) return -ERRNO.EINVAL;
      this.#delete(old);
      this.emit("memslotChanged", { id, asId, change: "delete", baseGfn: old.baseGfn, npages: old.npages });
      return 0;
    }
    const baseGfn = Number(mem.guest_phys_addr / PAGE);
    const npages = Number(mem.memory_size / PAGE);
    const userspacePage = Number(mem.userspace_addr / PAGE);
    let change: "create" | "move" | "flags";
    if (old === undefined) change = "create";
    else {
      if (userspacePage !== old.userspacePage || npages !== old.npages || ((mem.flags ^ old.flags) & KVM_MEM_READONLY) !== 0) return -ERRNO.EINVAL;
      if (baseGfn !== old.baseGfn) change = "move";
      else if (mem.flags !== old.flags) change = "flags";
      else return 0;
    }
    if (change !== "flags" && this.memslots(asId).some((s) => s !== old && s.baseGfn < baseGfn + npages && baseGfn < s.endGfn)) return -ERRNO.EEXIST;
    if (change === "move" && this.#notifiers.length > 0) return -ERRNO.EINVAL;
    if (old !== undefined) this.#delete(old);
    const slot = new Memslot(id, asId, baseGfn, npages, userspacePage, mem.flags);
    const list = this.#slots[asId]!;
    list.push(slot);
    list.sort((a, b) => a.baseGfn - b.baseGfn);
    this.#byId.set(key, slot);
    this.emit("memslotChanged", { id, asId, change, baseGfn, npages });
    return 0;
  }

  #delete(old: Memslot): void {
    const list = this.#slots[old.asId]!;
    list.splice(list.indexOf(old), 1);
    this.#byId.delete((old.asId << 16) | old.id);
    if (this.#last === old) this.#last = undefined;
    if (old.asId !== 0) return;
    let dropped = false;
    for (const gfn of [...this.#tracked.keys()]) {
      if (gfn >= old.baseGfn && gfn < old.endGfn) {
        this.#tracked.delete(gfn);
        dropped = true;
      }
    }
    if (dropped || this.#notifiers.length > 0) for (const n of this.#notifiers) n.trackRemoveRegion(old.baseGfn, old.npages);
  }

  /** gfn_to_memslot, in address space 0. */
  gfnToMemslot(gfn: number): Memslot | undefined {
    const last = this.#last;
    if (last !== undefined && gfn >= last.baseGfn && gfn < last.baseGfn + last.npages) return last;
    const list = this.#slots[0]!;
    let lo = 0;
    let hi = list.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const s = list[mid]!;
      if (gfn < s.baseGfn) hi = mid - 1;
      else if (gfn >= s.baseGfn + s.npages) lo = mid + 1;
      else return (this.#last = s);
    }
    return undefined;
  }

  /** gfn_to_hva: the HVA page backing `gfn`, or KVM_HVA_ERR_BAD. */
  gfnToHva(gfn: number): number {
    const slot = this.gfnToMemslot(gfn);
    return slot === undefined ? KVM_HVA_ERR_BAD : slot.userspacePage + (gfn - slot.baseGfn);
  }

  /** gfn_to_pfn_prot: the host frame behind `gfn` (faulted in, not pinned), or an error PFN. */
  gfnToPfn(gfn: number, write = false): number {
    const slot = this.gfnToMemslot(gfn);
    if (slot === undefined) return KVM_PFN_NOSLOT;
    if (write && (slot.flags & KVM_MEM_READONLY) !== 0) return KVM_PFN_ERR_RO_FAULT;
    const mm = this.vmm.mm;
    if (slot.hintGeneration !== mm.layoutGeneration) this.#refreshHint(slot, mm);
    const frames = slot.hintFrames;
    if (frames !== null) {
      const present = frames[slot.hintBase + (gfn - slot.baseGfn)]!;
      if (present !== 0) return present;
    }
    const pfn = mm.translate(slot.userspacePage + (gfn - slot.baseGfn));
    return pfn === 0 ? KVM_PFN_ERR_FAULT : pfn;
  }

  #refreshHint(slot: Memslot, mm: Process["mm"]): void {
    const vma = mm.findVma(slot.userspacePage);
    const whole = vma !== undefined && !vma.object.isPfnmap && vma.endPage >= slot.userspacePage + slot.npages;
    slot.hintFrames = whole ? vma.object.frames : null;
    slot.hintBase = whole ? vma.pgoff + (slot.userspacePage - vma.startPage) : 0;
    slot.hintGeneration = mm.layoutGeneration;
  }

  /** kvm_read_guest: -EFAULT when any page of the range is outside the memslots. */
  readGuest(gpa: bigint, out: Uint8Array): number {
    return this.#copy(gpa, out, false);
  }

  /** kvm_write_guest. */
  writeGuest(gpa: bigint, data: Uint8Array): number {
    return this.#copy(gpa, data, true);
  }

  #copy(gpa: bigint, buf: Uint8Array, write: boolean): number {
    for (let done = 0; done < buf.length; ) {
      const at = gpa + BigInt(done);
      const gfn = Number(at / PAGE);
      const offset = Number(at % PAGE);
      const n = Math.min(buf.length - done, 4096 - offset);
      const pfn = this.gfnToPfn(gfn, write);
      if (pfn < 0) return -ERRNO.EFAULT;
      const part = buf.subarray(done, done + n);
      if (write) this.host.phys.write(pfn, offset, part);
      else this.host.phys.read(pfn, offset, part);
      done += n;
    }
    return 0;
  }

  /** kvm_page_track_register_notifier: -ESRCH unless called from the VM's own mm. */
  registerTrackNotifier(notifier: TrackNotifier, current: Process): number {
    if (current.mm !== this.vmm.mm) return -ERRNO.ESRCH;
    this.#notifiers.push(notifier);
    return 0;
  }

  unregisterTrackNotifier(notifier: TrackNotifier): void {
    const i = this.#notifiers.indexOf(notifier);
    if (i >= 0) this.#notifiers.splice(i, 1);
  }

  /** kvm_write_track_add_gfn: -EINVAL for a frame in no memslot; counted per frame. */
  writeTrackAdd(gfn: number): number {
    if (this.gfnToMemslot(gfn) === undefined) return -ERRNO.EINVAL;
    this.#tracked.set(gfn, (this.#tracked.get(gfn) ?? 0) + 1);
    return 0;
  }

  /** kvm_write_track_remove_gfn. */
  writeTrackRemove(gfn: number): number {
    if (this.gfnToMemslot(gfn) === undefined) return -ERRNO.EINVAL;
    const n = this.#tracked.get(gfn);
    if (n === undefined) return 0;
    if (n === 1) this.#tracked.delete(gfn);
    else this.#tracked.set(gfn, n - 1);
    return 0;
  }

  isWriteTracked(gfn: number): boolean {
    return this.#tracked.has(gfn);
  }

  get trackedCount(): number {
    return this.#tracked.size;
  }

  /**
   * A guest write: the bytes land in guest memory; if the frame is tracked, the
   * write was a trap that KVM emulated, and the notifiers hear of it after.
   * Returns -EFAULT when the GPA is not in guest RAM.
   */
  guestWrite(gpa: bigint, data: Uint8Array): number {
    const r = this.writeGuest(gpa, data);
    if (r !== 0) return r;
    if (this.#tracked.has(Number(gpa / PAGE))) {
      for (const n of this.#notifiers) n.trackWrite(gpa, data);
      this.emit("guestWriteTracked", { gpa, length: data.length });
    }
    return 0;
  }
}
