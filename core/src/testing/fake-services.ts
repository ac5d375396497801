/**
 * In-memory VgpuServices for vendor unit tests: no host, VFIO or hypervisor
 * underneath, only the ledger a test needs to assert exact counts and leaks.
 *
 * Model:
 * - FakeGuest: one VM's RAM of `guestPages` frames from GFN 0, on host frames
 *   that are contiguous (HOST_BASE_PFN + gfn, THP-like) or a seeded permutation;
 *   pin references per frame over every vGPU of the VM; the memlock charge in
 *   distinct pinned frames (an mdev-only container) against `memlockPages`;
 *   sparse RAM contents, where a guest write to a protected frame traps to the
 *   vGPU that protected it (KVM page-track); the WARNs of unbalanced unpins;
 *   `unmapDma` plays type1's UNMAP_DMA notifier loop and its BUG after 10
 *   retries.
 * - FakeParent: the parent GPU's device address space, shared by its vGPUs in
 *   every VM. A device translation maps at fresh IOVA as one segment
 *   (`guardPages` apart; a freed single page handed out again first when
 *   `recycle`); each mapped range keeps its owner for the isolation checker.
 * - FakeVgpuServices: one vGPU's services over a guest and a parent: the pins
 *   it holds per frame, its live translations, and counters of every call.
 *
 * Semantics (vendors.md 0.1 and 4.2, as the core): pins are all or nothing and
 * refcounted per frame; npage 0, a prot outside READ|WRITE or a frame outside
 * guest RAM is -EINVAL; more than 512 frames is -E2BIG; a new frame over the
 * memlock budget is -ENOMEM "memlock-limit"; a device other than the parent is
 * -ENODEV; a failed device mapping (`failMap`) is -ENOMEM "dma-mapping-error"
 * and leaves nothing pinned; releasing an unknown handle is -EINVAL
 * "translate-unknown-handle"; dmaRw outside guest RAM is -EINVAL; unpinning a
 * frame the vGPU does not hold is a WARN (counted and recorded), not an error.
 * Counters of calls count at entry; frame and byte counts count what was done.
 *
 * Invariants: guest.refs[g] = the sum over its vGPUs of refs[g];
 * guest.lockedPages = frames with guest.refs > 0; every live translation holds
 * one pin per frame it lists and, when mapped, its ranges on the parent.
 */
import sortedBtree from "sorted-btree";
import { KernelError, VfioError } from "../errors/kernel-error.js";
import type { ErrnoName } from "../errors/errno.js";
import type { DeviceHandle } from "../hypervisor/hypervisor-adapter.js";
import type { FrameSpec, IsolationFinding, Translation, TranslateOptions, TranslationHandle } from "../translate/translate-api.js";
import { IOMMU_READ, IOMMU_WRITE } from "../vfio/type1/vfio-dma.js";
import { frameList, type VgpuServices } from "../vendor/vgpu-services.js";
import type { Vgpu } from "../vendor/vgpu-vendor.js";

type BTree<K, V> = import("sorted-btree").default<K, V>;

const PAGE = 4096;
export const HOST_BASE_PFN = 0x40000;
const MAX_PIN = 512;
const UNMAP_RETRIES_BEFORE_BUG = 10;

export interface FakeParentOptions {
  readonly name?: string;
  readonly iovaBase?: bigint;
  /** Unmapped pages left after each mapping (1 by default), so a vendor reading past its end finds nothing. */
  readonly guardPages?: number;
  /** A freed single-page IOVA is handed out again first (LIFO), as an IOVA allocator's cache does. */
  readonly recycle?: boolean;
}

interface MappedRange {
  readonly last: bigint;
  readonly owner: string;
}

/** A parent GPU: one device address space shared by all its vGPUs. */
export class FakeParent implements DeviceHandle {
  readonly name: string;
  readonly iovaBase: bigint;
  readonly guardPages: number;
  readonly recycle: boolean;
  readonly #ranges: BTree<bigint, MappedRange> = new sortedBtree.default<bigint, MappedRange>();
  readonly #free: bigint[] = [];
  #next: bigint;

  constructor(options: FakeParentOptions = {}) {
    this.name = options.name ?? "0000:00:02.0";
    this.iovaBase = options.iovaBase ?? 0x1_0000_0000n;
    this.guardPages = options.guardPages ?? 1;
    this.recycle = options.recycle ?? false;
    this.#next = this.iovaBase;
  }

  /** Live mapped ranges. */
  get mappedRanges(): number {
    return this.#ranges.size;
  }

  /** Maps `npages` for `owner` at fresh device addresses (one segment) and returns its start. */
  map(npages: number, owner: string): bigint {
    let base: bigint;
    if (npages === 1 && this.recycle && this.#free.length > 0) base = this.#free.pop()!;
    else {
      base = this.#next;
      this.#next += BigInt((npages + this.guardPages) * PAGE);
    }
    this.#ranges.set(base, { last: base + BigInt(npages * PAGE) - 1n, owner });
    return base;
  }

  unmap(addr: bigint): void {
    const r = this.#ranges.get(addr);
    if (r === undefined) throw new RangeError(`fake parent: 0x${addr.toString(16)} is not mapped`);
    this.#ranges.delete(addr);
    if (r.last - addr + 1n === BigInt(PAGE)) this.#free.push(addr);
  }

  ownerOf(addr: bigint): string | undefined {
    const hit = this.#ranges.nextLowerPair(addr + 1n);
    return hit === undefined || hit[1].last < addr ? undefined : hit[1].owner;
  }
}

export interface FakeGuestOptions {
  readonly guestPages: number;
  readonly vm?: string;
  /** contiguous: host frame = HOST_BASE_PFN + gfn; scattered: a permutation of those, seeded. */
  readonly backing?: "contiguous" | "scattered";
  readonly seed?: number;
  /** RLIMIT_MEMLOCK in pages (distinct frames pinned at once); unlimited when omitted. */
  readonly memlockPages?: number;
  /** The parent the guest's services map for unless given their own. */
  readonly parent?: FakeParent;
}

/** One VM's guest memory and the pins of all its vGPUs. */
export class FakeGuest {
  readonly guestPages: number;
  readonly vm: string;
  readonly parent: FakeParent;
  readonly pfnOf: Uint32Array;
  /** Pins of each frame over every vGPU. */
  readonly refs: Uint32Array;
  /** Distinct frames pinned: the memlock charge. */
  lockedPages = 0;
  memlockPages: number;
  /** injectIrq answers false once the VMM has gone. */
  vmmAlive = true;
  /** WARNs: unpins of frames a vGPU does not hold. */
  readonly warnings: string[] = [];
  /** type1's record of a vendor that did not unpin: set once, then every unmapDma throws. */
  bug: string | undefined;
  /** UNMAP_DMA notifications sent, over all unmapDma calls. */
  notifications = 0;
  readonly services: FakeVgpuServices[] = [];
  /** Per frame, the pin call that last counted it fresh: a frame listed twice is charged once. */
  readonly stamp: Uint32Array;
  readonly #ram = new Map<number, Uint8Array>();
  #generation = 0;

  constructor(options: FakeGuestOptions) {
    this.guestPages = options.guestPages;
    this.vm = options.vm ?? "vm0";
    this.parent = options.parent ?? new FakeParent();
    this.memlockPages = options.memlockPages ?? Number.POSITIVE_INFINITY;
    this.refs = new Uint32Array(options.guestPages);
    this.pfnOf = new Uint32Array(options.guestPages);
    this.stamp = new Uint32Array(options.guestPages);
    for (let g = 0; g < options.guestPages; g++) this.pfnOf[g] = HOST_BASE_PFN + g;
    if (options.backing === "scattered") shuffle(this.pfnOf, options.seed ?? 1);
  }

  nextStamp(): number {
    return ++this.#generation;
  }

  /** Services of one more vGPU of this VM. */
  servicesFor(vgpu: string, parent = this.parent): FakeVgpuServices {
    return new FakeVgpuServices({ guest: this, vgpu, parent });
  }

  /** Total pins held over every vGPU. */
  get totalPins(): number {
    return this.pinsIn(0, this.guestPages);
  }

  pinsIn(first: number, end: number): number {
    let n = 0;
    for (let g = Math.max(0, first); g < Math.min(end, this.guestPages); g++) n += this.refs[g]!;
    return n;
  }

  /** VFIO_IOMMU_UNMAP_DMA of [first, first + npages) with these vGPUs in the container; returns the notifications sent. */
  unmapDma(first: number, npages: number, vgpus: readonly Vgpu[]): number {
    if (this.bug !== undefined) throw new Error(`host crashed: ${this.bug}`);
    let sent = 0;
    for (let retry = 0; this.pinsIn(first, first + npages) > 0; retry++) {
      if (retry > UNMAP_RETRIES_BEFORE_BUG) {
        this.bug = `vfio_dma_do_unmap: vendor driver did not unpin [${first}, ${first + npages})`;
        throw new Error(`host crashed: ${this.bug}`);
      }
      for (const v of vgpus) void v.dmaUnmap(BigInt(first) << 12n, BigInt(npages) << 12n);
      sent++;
      this.notifications++;
    }
    return sent;
  }

  /** A guest CPU write: lands in RAM, then traps to each vGPU that protected the frame. 0 or -EFAULT. */
  guestWrite(gpa: bigint, data: Uint8Array): number {
    if (!this.#inRam(gpa, data.length)) return -14;
    this.copy(Number(gpa), data, true);
    const gfn = Number(gpa >> 12n);
    for (const s of this.services) if (s.protectedFrames.has(gfn)) s.onTrackedWrite?.(gpa, data);
    return 0;
  }

  guestRead(gpa: bigint, out: Uint8Array): number {
    if (!this.#inRam(gpa, out.length)) return -14;
    this.copy(Number(gpa), out, false);
    return 0;
  }

  /** Copies to or from RAM; a page exists once written, unwritten pages read as zeros. */
  copy(at: number, data: Uint8Array, write: boolean): void {
    for (let done = 0; done < data.length; ) {
      const pos = at + done;
      const page = Math.floor(pos / PAGE);
      const off = pos % PAGE;
      const len = Math.min(data.length - done, PAGE - off);
      let mem = this.#ram.get(page);
      if (write) {
        if (mem === undefined) this.#ram.set(page, (mem = new Uint8Array(PAGE)));
        mem.set(data.subarray(done, done + len), off);
      } else if (mem === undefined) data.fill(0, done, done + len);
      else data.set(mem.subarray(off, off + len), done);
      done += len;
    }
  }

  #inRam(gpa: bigint, length: number): boolean {
    return gpa >= 0n && gpa + BigInt(length) <= BigInt(this.guestPages) * BigInt(PAGE);
  }
}

/** A seeded xorshift Fisher-Yates shuffle. */
function shuffle(a: Uint32Array, seed: number): void {
  let s = seed >>> 0 || 1;
  for (let i = a.length - 1; i > 0; i--) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const j = (s >>> 0) % (i + 1);
    const t = a[i]!;
    a[i] = a[j]!;
    a[j] = t;
  }
}

export interface FakeServicesOptions extends Partial<FakeGuestOptions> {
  readonly vgpu?: string;
  /** The VM's guest, shared with its other vGPUs; a fresh one from the guest options when omitted. */
  readonly guest?: FakeGuest;
  /** Defaults to the guest's parent. */
  readonly parent?: FakeParent;
}

export interface FakeCounters {
  pinCalls: number;
  /** Frames pinned by pin calls. */
  pinnedPages: number;
  unpinCalls: number;
  /** Frames listed in unpin calls. */
  unpinnedPages: number;
  translateCalls: number;
  translations: number;
  releaseCalls: number;
  releases: number;
  /** Translations mapped for the device, and their unmaps. */
  maps: number;
  unmaps: number;
  /** Pin references taken and dropped, by pin calls and translations. */
  framesPinned: number;
  framesUnpinned: number;
  dmaRwCalls: number;
  dmaRwBytes: number;
  protects: number;
  unprotects: number;
  irqs: number;
  /** Unpins of frames this vGPU did not hold (a WARN in the kernel). */
  badUnpins: number;
}

export interface FakeLeaks {
  readonly pinnedFrames: number;
  readonly pinRefs: number;
  readonly translations: number;
  readonly protectedFrames: number;
  readonly badUnpins: number;
}

export const NO_FAKE_LEAKS: FakeLeaks = Object.freeze({ pinnedFrames: 0, pinRefs: 0, translations: 0, protectedFrames: 0, badUnpins: 0 });

interface LiveTranslation {
  readonly gfns: Float64Array;
  /** Where it is mapped on the parent; undefined when not mapped for the device. */
  readonly addr: bigint | undefined;
}

export class FakeVgpuServices implements VgpuServices {
  readonly vgpu: string;
  readonly guest: FakeGuest;
  readonly parent: FakeParent;
  readonly counters: FakeCounters = {
    pinCalls: 0,
    pinnedPages: 0,
    unpinCalls: 0,
    unpinnedPages: 0,
    translateCalls: 0,
    translations: 0,
    releaseCalls: 0,
    releases: 0,
    maps: 0,
    unmaps: 0,
    framesPinned: 0,
    framesUnpinned: 0,
    dmaRwCalls: 0,
    dmaRwBytes: 0,
    protects: 0,
    unprotects: 0,
    irqs: 0,
    badUnpins: 0,
  };
  /** Pins this vGPU holds on each frame. */
  readonly refs: Uint32Array;
  /** Sum of `refs`. */
  pinRefs = 0;
  /** Frames with a non-zero `refs`. */
  pinnedFrames = 0;
  readonly protectedFrames = new Set<number>();
  /** Unmap count per handle id that ever mapped: every value must end at 1. */
  readonly unmapsByHandle = new Map<number, number>();
  /** KVM page-track: called after a guest write to a frame this vGPU protected. */
  onTrackedWrite: ((gpa: bigint, data: Uint8Array) => void) | undefined;
  /** Called after a frame becomes protected. */
  onProtect: ((gfn: number) => void) | undefined;
  /** Fault hooks: an errno name makes the pin of that frame fail; true makes that device mapping fail. */
  failPin: ((gfn: number) => ErrnoName | undefined) | undefined;
  failMap: ((npages: number) => boolean) | undefined;
  readonly #live = new Map<number, LiveTranslation>();
  #nextHandle = 1;

  constructor(options: FakeServicesOptions = {}) {
    this.vgpu = options.vgpu ?? "vgpu0";
    this.guest = options.guest ?? new FakeGuest({ guestPages: 4096, ...options });
    this.parent = options.parent ?? this.guest.parent;
    this.refs = new Uint32Array(this.guest.guestPages);
    this.guest.services.push(this);
  }

  get vm(): string {
    return this.guest.vm;
  }

  get parentDevice(): FakeParent {
    return this.parent;
  }

  get liveTranslations(): number {
    return this.#live.size;
  }

  /** Pages mapped for the device by live translations. */
  liveMappedPages(): number {
    let n = 0;
    for (const t of this.#live.values()) if (t.addr !== undefined) n += t.gfns.length;
    return n;
  }

  pinsIn(first: number, end: number): number {
    let n = 0;
    for (let g = Math.max(0, first); g < Math.min(end, this.refs.length); g++) n += this.refs[g]!;
    return n;
  }

  /** What a test must have released: NO_FAKE_LEAKS when nothing leaked. */
  leaks(): FakeLeaks {
    return { pinnedFrames: this.pinnedFrames, pinRefs: this.pinRefs, translations: this.#live.size, protectedFrames: this.protectedFrames.size, badUnpins: this.counters.badUnpins };
  }

  pinPages(gfn: number, npage: number, prot: number, out: Uint32Array): number {
    this.counters.pinCalls++;
    const gfns = new Float64Array(Math.max(0, npage));
    for (let i = 0; i < npage; i++) gfns[i] = gfn + i;
    this.#pin(gfns, prot, out);
    this.counters.pinnedPages += npage;
    return npage;
  }

  unpinPages(gfn: number, npage: number): void {
    this.counters.unpinCalls++;
    this.counters.unpinnedPages += npage;
    for (let i = 0; i < npage; i++) this.#unpinOne(gfn + i);
  }

  pinPagesArray(gfns: ArrayLike<number>, npage: number, prot: number, out: Uint32Array): number {
    this.counters.pinCalls++;
    const list = new Float64Array(Math.max(0, npage));
    for (let i = 0; i < npage; i++) list[i] = gfns[i]!;
    this.#pin(list, prot, out);
    this.counters.pinnedPages += npage;
    return npage;
  }

  unpinPagesArray(gfns: ArrayLike<number>, npage: number): number {
    this.counters.unpinCalls++;
    this.counters.unpinnedPages += npage;
    for (let i = 0; i < npage; i++) this.#unpinOne(gfns[i]!);
    return npage;
  }

  dmaRw(gpa: bigint, data: Uint8Array, write: boolean): void {
    this.counters.dmaRwCalls++;
    if (gpa < 0n || gpa + BigInt(data.length) > BigInt(this.guest.guestPages) * BigInt(PAGE)) throw new VfioError("EINVAL", "rw-outside-mappings", { gpa, length: data.length });
    this.guest.copy(Number(gpa), data, write);
    this.counters.dmaRwBytes += data.length;
  }

  translate(frames: FrameSpec, options: TranslateOptions): Translation {
    this.counters.translateCalls++;
    const gfns = frameList(frames);
    if (options.device !== undefined && options.device !== this.parent) throw new KernelError("ENODEV", "device-not-registered", { device: options.device.name });
    const pfns = new Uint32Array(gfns.length);
    this.#pin(gfns, options.prot, pfns);
    const id = this.#nextHandle++;
    const handle: TranslationHandle = Object.freeze({ id });
    if (options.device === undefined) {
      this.#live.set(id, { gfns, addr: undefined });
      this.counters.translations++;
      return { handle, pfns };
    }
    if (this.failMap?.(gfns.length) === true) {
      this.#unpinAll(gfns);
      throw new KernelError("ENOMEM", "dma-mapping-error", { npages: gfns.length });
    }
    const n = gfns.length;
    const addr = this.parent.map(n, this.vgpu);
    const dmaAddrs = new BigUint64Array(n);
    for (let i = 0; i < n; i++) dmaAddrs[i] = addr + BigInt(i * PAGE);
    this.#live.set(id, { gfns, addr });
    this.unmapsByHandle.set(id, 0);
    this.counters.translations++;
    this.counters.maps++;
    return { handle, pfns, dmaAddrs, segments: { count: 1, addr: BigUint64Array.of(addr), length: Float64Array.of(n * PAGE) } };
  }

  release(handle: TranslationHandle): void {
    this.counters.releaseCalls++;
    const id = typeof handle === "object" && handle !== null ? handle.id : undefined;
    const t = id === undefined ? undefined : this.#live.get(id);
    if (t === undefined || id === undefined) throw new VfioError("EINVAL", "translate-unknown-handle", { handle: id });
    this.#drop(id, t);
    this.counters.releases++;
  }

  /** The core's releaseRange on a memory invalidation: every translation touching [first, first + npages) goes. */
  revoke(first: number, npages: number): number {
    let n = 0;
    for (const [id, t] of [...this.#live]) {
      if (!t.gfns.some((g) => g >= first && g < first + npages)) continue;
      this.#drop(id, t);
      n++;
    }
    return n;
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
    if (gfn < 0 || gfn >= this.guest.guestPages) return -22;
    this.counters.protects++;
    this.protectedFrames.add(gfn);
    this.onProtect?.(gfn);
    return 0;
  }

  unprotect(gfn: number): number {
    if (this.protectedFrames.delete(gfn)) this.counters.unprotects++;
    return 0;
  }

  injectIrq(_vector: number): boolean {
    if (!this.guest.vmmAlive) return false;
    this.counters.irqs++;
    return true;
  }

  #drop(id: number, t: LiveTranslation): void {
    this.#live.delete(id);
    if (t.addr !== undefined) {
      this.parent.unmap(t.addr);
      this.counters.unmaps++;
      this.unmapsByHandle.set(id, (this.unmapsByHandle.get(id) ?? 0) + 1);
    }
    this.#unpinAll(t.gfns);
  }

  /** All or nothing, as type1: every frame is checked, and the memlock charge counted, before any is pinned. */
  #pin(gfns: Float64Array, prot: number, out: Uint32Array): void {
    const g = this.guest;
    const n = gfns.length;
    if (!Number.isInteger(prot) || prot === 0 || (prot & ~(IOMMU_READ | IOMMU_WRITE)) !== 0) throw new VfioError("EINVAL", "pin-bad-prot", { prot });
    if (n === 0) throw new VfioError("EINVAL", "pin-no-pages");
    if (n > MAX_PIN) throw new VfioError("E2BIG", "pin-too-many-pages", { npage: n });
    let fresh = 0;
    const gen = g.nextStamp();
    for (let i = 0; i < n; i++) {
      const f = gfns[i]!;
      if (!Number.isSafeInteger(f) || f < 0 || f >= g.guestPages) throw new VfioError("EINVAL", "pin-outside-guest-ram", { gfn: f });
      const fault = this.failPin?.(f);
      if (fault !== undefined) throw new VfioError(fault, "pin-injected-fault", { gfn: f });
      // A fresh frame listed twice is charged once.
      if (g.refs[f] === 0 && g.stamp[f] !== gen) {
        g.stamp[f] = gen;
        fresh++;
      }
    }
    if (g.lockedPages + fresh > g.memlockPages) throw new VfioError("ENOMEM", "memlock-limit", { locked: g.lockedPages, wanted: fresh, limit: g.memlockPages });
    for (let i = 0; i < n; i++) {
      const f = gfns[i]!;
      if (g.refs[f]!++ === 0) g.lockedPages++;
      if (this.refs[f]!++ === 0) this.pinnedFrames++;
      out[i] = g.pfnOf[f]!;
    }
    this.pinRefs += n;
    this.counters.framesPinned += n;
  }

  #unpinAll(gfns: Float64Array): void {
    for (let i = 0; i < gfns.length; i++) this.#unpinOne(gfns[i]!);
  }

  #unpinOne(f: number): void {
    if (!Number.isSafeInteger(f) || f < 0 || f >= this.refs.length || this.refs[f] === 0) {
      this.counters.badUnpins++;
      this.guest.warnings.push(`${this.vgpu}: unpin of frame ${f} it does not hold`);
      return;
    }
    if (--this.refs[f]! === 0) this.pinnedFrames--;
    if (--this.guest.refs[f]! === 0) this.guest.lockedPages--;
    this.pinRefs--;
    this.counters.framesUnpinned++;
  }
}
