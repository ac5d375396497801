/**
 * An in-memory VgpuServices for vendor unit tests, with no host, VFIO or
 * hypervisor underneath: it keeps exactly the ledger a test needs to assert
 * exact counts and leaks.
 *
 * Model: guest RAM is `guestPages` frames from GFN 0; host frame = gfn +
 * HOST_FRAME_BIAS. Pins are refcounted per frame (Uint32Array), pin calls are
 * all-or-nothing, at most 512 frames, -EINVAL outside guest RAM, -E2BIG above
 * 512, -EINVAL for a bad prot. A translation with a device pins its frames and
 * maps them at one contiguous range of the parent's IOVA space, allocated by a
 * FakeParent shared by the services of every vGPU of that parent (so the
 * isolation checker can name the owner); a release unmaps and unpins, and an
 * unknown or released handle is -EINVAL (translate-unknown-handle), as in the
 * core. Counters: calls of each kind, frames pinned/unpinned, live
 * translations, unmaps per handle (each must be 1).
 *
 * Invariants: totalPins = sum(pins); every live translation holds one pin per
 * frame it lists and one IOVA range owned by this vGPU.
 */
import sortedBtree from "sorted-btree";
import { IOMMU_READ, IOMMU_WRITE, KernelError, VfioError, type DeviceHandle, type FrameSpec, type IsolationFinding, type Translation, type TranslateOptions, type TranslationHandle, type VgpuServices } from "@vgpu-iommu/core";

type BTree<K, V> = import("sorted-btree").default<K, V>;

export const HOST_FRAME_BIAS = 0x10_0000;
const MAX_PIN = 512;

interface Owned {
  readonly last: bigint;
  readonly owner: string;
}

/** A parent GPU's IOVA space, shared by the fake services of its vGPUs. */
export class FakeParent {
  readonly handle: DeviceHandle;
  readonly #ranges: BTree<bigint, Owned> = new sortedBtree.default<bigint, Owned>();
  readonly #free: bigint[] = [];
  #next: bigint;

  /** `recycle`: a freed single-page IOVA is handed out again first (LIFO), as an IOVA allocator's cache does. */
  constructor(
    name = "0000:00:02.0",
    readonly iovaBase = 0x1_0000_0000n,
    readonly recycle = false,
  ) {
    this.handle = Object.freeze({ name });
    this.#next = iovaBase;
  }

  /** Live mapped ranges. */
  get mappedRanges(): number {
    return this.#ranges.size;
  }

  map(npages: number, owner: string): bigint {
    const length = BigInt(npages) << 12n;
    let addr: bigint;
    if (npages === 1 && this.recycle && this.#free.length > 0) addr = this.#free.pop()!;
    else {
      addr = this.#next;
      this.#next += length;
    }
    this.#ranges.set(addr, { last: addr + length - 1n, owner });
    return addr;
  }

  unmap(addr: bigint): void {
    const r = this.#ranges.get(addr);
    if (r === undefined) throw new RangeError(`fake parent: 0x${addr.toString(16)} is not mapped`);
    this.#ranges.delete(addr);
    if (r.last - addr + 1n === 4096n) this.#free.push(addr);
  }

  ownerOf(addr: bigint): string | undefined {
    const hit = this.#ranges.nextLowerPair(addr + 1n);
    return hit === undefined || hit[1].last < addr ? undefined : hit[1].owner;
  }
}

interface LiveTranslation {
  readonly gfns: Float64Array;
  readonly addr: bigint | undefined;
}

export interface FakeServicesOptions {
  readonly vgpu?: string;
  readonly vm?: string;
  readonly guestPages?: number;
  readonly parent?: FakeParent;
}

export interface FakeCounters {
  pinCalls: number;
  unpinCalls: number;
  translateCalls: number;
  releaseCalls: number;
  /** Frames pinned and unpinned, each reference counted. */
  framesPinned: number;
  framesUnpinned: number;
  /** Translations that mapped for the device, and their unmaps. */
  maps: number;
  unmaps: number;
  dmaRwCalls: number;
  irqs: number;
}

export class FakeVgpuServices implements VgpuServices {
  readonly vgpu: string;
  readonly vm: string;
  readonly parent: FakeParent;
  readonly guestPages: number;
  readonly pins: Uint32Array;
  totalPins = 0;
  readonly counters: FakeCounters = { pinCalls: 0, unpinCalls: 0, translateCalls: 0, releaseCalls: 0, framesPinned: 0, framesUnpinned: 0, maps: 0, unmaps: 0, dmaRwCalls: 0, irqs: 0 };
  readonly live = new Map<number, LiveTranslation>();
  /** Unmap count per handle id that ever mapped: every value must end at 1. */
  readonly unmapsByHandle = new Map<number, number>();
  readonly protectedGfns = new Set<number>();
  #nextHandle = 1;
  #ram: Uint8Array | undefined;

  constructor(options: FakeServicesOptions = {}) {
    this.vgpu = options.vgpu ?? "vgpu0";
    this.vm = options.vm ?? "vm0";
    this.parent = options.parent ?? new FakeParent();
    this.guestPages = options.guestPages ?? 4096;
    this.pins = new Uint32Array(this.guestPages);
  }

  get parentDevice(): DeviceHandle {
    return this.parent.handle;
  }

  /** What a test must have released: 0 everywhere when nothing leaked. */
  leaks(): { pins: number; translations: number; protected: number } {
    return { pins: this.totalPins, translations: this.live.size, protected: this.protectedGfns.size };
  }

  pinPages(gfn: number, npage: number, prot: number, out: Uint32Array): number {
    this.counters.pinCalls++;
    const gfns = new Float64Array(npage);
    for (let i = 0; i < npage; i++) gfns[i] = gfn + i;
    this.#pin(gfns, prot, out);
    return npage;
  }

  unpinPages(gfn: number, npage: number): void {
    this.counters.unpinCalls++;
    for (let i = 0; i < npage; i++) this.#unpinOne(gfn + i);
  }

  pinPagesArray(gfns: ArrayLike<number>, npage: number, prot: number, out: Uint32Array): number {
    this.counters.pinCalls++;
    const list = new Float64Array(npage);
    for (let i = 0; i < npage; i++) list[i] = gfns[i]!;
    this.#pin(list, prot, out);
    return npage;
  }

  unpinPagesArray(gfns: ArrayLike<number>, npage: number): number {
    this.counters.unpinCalls++;
    for (let i = 0; i < npage; i++) this.#unpinOne(gfns[i]!);
    return npage;
  }

  dmaRw(gpa: bigint, data: Uint8Array, write: boolean): void {
    this.counters.dmaRwCalls++;
    const end = gpa + BigInt(data.length);
    if (gpa < 0n || end > BigInt(this.guestPages) << 12n) throw new VfioError("EINVAL", "dma-rw-outside-mapping", { gpa, length: data.length });
    this.#ram ??= new Uint8Array(this.guestPages * 4096);
    const at = Number(gpa);
    if (write) this.#ram.set(data, at);
    else data.set(this.#ram.subarray(at, at + data.length));
  }

  translate(frames: FrameSpec, options: TranslateOptions): Translation {
    this.counters.translateCalls++;
    const gfns = normalize(frames);
    if (options.device !== undefined && options.device !== this.parent.handle) throw new KernelError("ENODEV", "device-not-registered", { device: options.device.name });
    const pfns = new Uint32Array(gfns.length);
    this.#pin(gfns, options.prot, pfns);
    const id = this.#nextHandle++;
    const handle: TranslationHandle = Object.freeze({ id });
    if (options.device === undefined) {
      this.live.set(id, { gfns, addr: undefined });
      return { handle, pfns };
    }
    const addr = this.parent.map(gfns.length, this.vgpu);
    this.counters.maps++;
    this.unmapsByHandle.set(id, 0);
    this.live.set(id, { gfns, addr });
    const dmaAddrs = new BigUint64Array(gfns.length);
    for (let i = 0; i < gfns.length; i++) dmaAddrs[i] = addr + (BigInt(i) << 12n);
    const length = new Float64Array([gfns.length * 4096]);
    return { handle, pfns, dmaAddrs, segments: { count: 1, addr: new BigUint64Array([addr]), length } };
  }

  release(handle: TranslationHandle): void {
    this.counters.releaseCalls++;
    const id = typeof handle === "object" && handle !== null ? handle.id : undefined;
    const t = id === undefined ? undefined : this.live.get(id);
    if (t === undefined || id === undefined) throw new VfioError("EINVAL", "translate-unknown-handle", { handle: id });
    this.live.delete(id);
    if (t.addr !== undefined) {
      this.parent.unmap(t.addr);
      this.counters.unmaps++;
      this.unmapsByHandle.set(id, (this.unmapsByHandle.get(id) ?? 0) + 1);
    }
    for (let i = 0; i < t.gfns.length; i++) this.#unpinOne(t.gfns[i]!);
  }

  checkIsolation(visible: ArrayLike<bigint>): IsolationFinding[] {
    const findings: IsolationFinding[] = [];
    for (let i = 0; i < visible.length; i++) {
      const addr = visible[i]!;
      const owner = this.parent.ownerOf(addr);
      if (owner === undefined) findings.push({ addr, kind: "unmapped" });
      else if (owner !== this.vgpu) findings.push({ addr, kind: "other-vgpu", owner });
    }
    return findings;
  }

  protect(gfn: number): number {
    if (gfn < 0 || gfn >= this.guestPages) return -22;
    this.protectedGfns.add(gfn);
    return 0;
  }

  unprotect(gfn: number): number {
    this.protectedGfns.delete(gfn);
    return 0;
  }

  injectIrq(_vector: number): boolean {
    this.counters.irqs++;
    return true;
  }

  /** All or nothing, as type1: validate every frame before pinning any. */
  #pin(gfns: Float64Array, prot: number, out: Uint32Array): void {
    if (!Number.isInteger(prot) || prot === 0 || (prot & ~(IOMMU_READ | IOMMU_WRITE)) !== 0) throw new VfioError("EINVAL", "pin-bad-prot", { prot });
    if (gfns.length === 0) throw new VfioError("EINVAL", "pin-no-pages");
    if (gfns.length > MAX_PIN) throw new VfioError("E2BIG", "pin-too-many-pages", { npage: gfns.length });
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i]!;
      if (!Number.isSafeInteger(g) || g < 0 || g >= this.guestPages) throw new VfioError("EINVAL", "pin-outside-guest-ram", { gfn: g });
    }
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i]!;
      this.pins[g]!++;
      out[i] = g + HOST_FRAME_BIAS;
    }
    this.totalPins += gfns.length;
    this.counters.framesPinned += gfns.length;
  }

  #unpinOne(gfn: number): void {
    if (gfn < 0 || gfn >= this.guestPages || this.pins[gfn] === 0) throw new VfioError("EINVAL", "unpin-not-pinned", { gfn });
    this.pins[gfn]!--;
    this.totalPins--;
    this.counters.framesUnpinned++;
  }
}

function normalize(frames: FrameSpec): Float64Array {
  if ("start" in frames && "npages" in frames && !("length" in frames)) {
    const out = new Float64Array(frames.npages);
    for (let i = 0; i < frames.npages; i++) out[i] = frames.start + i;
    return out;
  }
  const list = frames as ArrayLike<number>;
  const out = new Float64Array(list.length);
  for (let i = 0; i < list.length; i++) out[i] = list[i]!;
  return out;
}
