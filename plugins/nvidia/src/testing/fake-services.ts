/**
 * An in-memory VgpuServices for vendor tests: a guest of `guestPages` frames,
 * a memlock budget counted in distinct pinned frames (mdev-only container),
 * a parent device whose DMA mappings are counted, and per-vGPU pin counts so a
 * test can check the DMA_UNMAP postcondition and leaks exactly.
 *
 * Semantics follow the VFIO contract (vendors.md 0.1, 4.2): pins are
 * all-or-nothing and refcounted per frame (a frame listed twice takes two
 * references, but is charged once); more than 512 frames is -E2BIG; a frame
 * outside the guest is -EINVAL; going over the memlock budget is -ENOMEM. A
 * translation pins like the array form and maps the frames for the parent as
 * one merged segment of fresh IOVA (dma-iommu style); release unmaps, then
 * unpins; an unknown handle is -EINVAL "translate-unknown-handle", as in the
 * core. Unpinning a frame this vGPU has not pinned is recorded as a warning.
 *
 * `FakeGuest.unmapDma` plays type1's VFIO_IOMMU_UNMAP_DMA: it notifies every
 * vGPU with the whole range, again while pins remain, and records a BUG after
 * 10 retries.
 */
import { KernelError, VfioError, type DeviceHandle, type FrameSpec, type IsolationFinding, type Translation, type TranslateOptions, type TranslationHandle, type Vgpu, type VgpuServices } from "@vgpu-iommu/core";

const MAX = 512;
const UNMAP_RETRIES_BEFORE_BUG = 10;

export interface FakeGuestOptions {
  readonly guestPages: number;
  /** RLIMIT_MEMLOCK in pages; unlimited when omitted. */
  readonly memlockPages?: number;
  readonly vm?: string;
}

interface FakeMapping {
  readonly id: number;
  readonly owner: FakeVgpuServices;
  readonly gfns: Float64Array;
  readonly iovaPage: number;
}

export interface FakeCounters {
  pinCalls: number;
  pinnedPages: number;
  unpinCalls: number;
  unpinnedPages: number;
  translations: number;
  releases: number;
  maps: number;
  unmaps: number;
}

export class FakeGuest {
  readonly guestPages: number;
  readonly vm: string;
  memlockPages: number;
  readonly parentDevice: DeviceHandle = Object.freeze({ name: "0000:01:00.0" });
  /** Pins of each frame over every vGPU. */
  readonly refs: Uint32Array;
  /** Distinct frames pinned: the memlock charge. */
  lockedPages = 0;
  readonly mappings = new Map<number, FakeMapping>();
  readonly warnings: string[] = [];
  /** type1's record of a vendor that did not unpin: set once, then every unmapDma throws. */
  bug: string | undefined;
  /** UNMAP_DMA notifications sent, over all calls. */
  notifications = 0;
  /** Per-frame stamp of the last pin call that saw it, to count fresh frames once. */
  readonly stamp: Uint32Array;
  #gen = 0;
  #nextIovaPage = 0x100000;
  #nextId = 1;

  constructor(options: FakeGuestOptions) {
    this.guestPages = options.guestPages;
    this.memlockPages = options.memlockPages ?? Number.POSITIVE_INFINITY;
    this.vm = options.vm ?? "vm0";
    this.refs = new Uint32Array(options.guestPages);
    this.stamp = new Uint32Array(options.guestPages);
  }

  nextStamp(): number {
    return ++this.#gen;
  }

  services(vgpu: string): FakeVgpuServices {
    return new FakeVgpuServices(this, vgpu);
  }

  /** The host frame backing a guest frame: scattered, deterministic. */
  pfnOf(gfn: number): number {
    return 0x200000 + ((gfn * 7919) % 0x100000) * 4 + (gfn & 3);
  }

  nextId(): number {
    return this.#nextId++;
  }

  allocIova(npages: number): number {
    const at = this.#nextIovaPage;
    this.#nextIovaPage += npages + 1; // a guard page between mappings
    return at;
  }

  /** Total pins held over every vGPU. */
  get totalPins(): number {
    let n = 0;
    for (let g = 0; g < this.refs.length; g++) n += this.refs[g]!;
    return n;
  }

  pinsIn(first: number, end: number): number {
    let n = 0;
    for (let g = first; g < Math.min(end, this.guestPages); g++) n += this.refs[g]!;
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
}

export class FakeVgpuServices implements VgpuServices {
  readonly vm: string;
  readonly parentDevice: DeviceHandle;
  readonly counters: FakeCounters = { pinCalls: 0, pinnedPages: 0, unpinCalls: 0, unpinnedPages: 0, translations: 0, releases: 0, maps: 0, unmaps: 0 };
  /** Pins this vGPU holds on each frame. */
  readonly mine: Uint32Array;
  readonly #translations = new Map<number, FakeMapping>();
  protected = 0;

  constructor(
    readonly guest: FakeGuest,
    readonly vgpu: string,
  ) {
    this.vm = guest.vm;
    this.parentDevice = guest.parentDevice;
    this.mine = new Uint32Array(guest.guestPages);
  }

  get pins(): number {
    let n = 0;
    for (let g = 0; g < this.mine.length; g++) n += this.mine[g]!;
    return n;
  }

  pinsIn(first: number, end: number): number {
    let n = 0;
    for (let g = first; g < Math.min(end, this.mine.length); g++) n += this.mine[g]!;
    return n;
  }

  /** Live translations (device mappings) of this vGPU. */
  get liveMappings(): number {
    return this.#translations.size;
  }

  pinPages(gfn: number, npage: number, prot: number, out: Uint32Array): number {
    const gfns = new Float64Array(npage);
    for (let i = 0; i < npage; i++) gfns[i] = gfn + i;
    return this.pinPagesArray(gfns, npage, prot, out);
  }

  unpinPages(gfn: number, npage: number): void {
    const gfns = new Float64Array(npage);
    for (let i = 0; i < npage; i++) gfns[i] = gfn + i;
    this.unpinPagesArray(gfns, npage);
  }

  pinPagesArray(gfns: ArrayLike<number>, npage: number, _prot: number, out: Uint32Array): number {
    this.counters.pinCalls++;
    this.#pin(gfns, npage, out);
    this.counters.pinnedPages += npage;
    return npage;
  }

  unpinPagesArray(gfns: ArrayLike<number>, npage: number): number {
    this.counters.unpinCalls++;
    this.counters.unpinnedPages += npage;
    this.#unpin(gfns, npage);
    return npage;
  }

  dmaRw(_gpa: bigint, _data: Uint8Array, _write: boolean): void {}

  translate(frames: FrameSpec, options: TranslateOptions): Translation {
    const gfns = framesOf(frames);
    const n = gfns.length;
    if (n === 0) throw new VfioError("EINVAL", "translate-no-frames");
    if (n > MAX) throw new VfioError("E2BIG", "translate-too-many-frames", { npages: n, max: MAX });
    const pfns = new Uint32Array(n);
    this.#pin(gfns, n, pfns);
    this.counters.translations++;
    const handle = Object.freeze({ id: this.guest.nextId() });
    if (options.device === undefined) {
      this.#translations.set(handle.id, { id: handle.id, owner: this, gfns, iovaPage: -1 });
      return { handle, pfns };
    }
    if (options.device !== this.guest.parentDevice) {
      this.#unpin(gfns, n);
      throw new KernelError("ENODEV", "device-not-registered", { device: options.device.name });
    }
    const iovaPage = this.guest.allocIova(n);
    const mapping: FakeMapping = { id: handle.id, owner: this, gfns, iovaPage };
    this.#translations.set(handle.id, mapping);
    this.guest.mappings.set(handle.id, mapping);
    this.counters.maps++;
    const base = BigInt(iovaPage) << 12n;
    const dmaAddrs = new BigUint64Array(n);
    for (let i = 0; i < n; i++) dmaAddrs[i] = base + (BigInt(i) << 12n);
    return { handle, pfns, dmaAddrs, segments: { count: 1, addr: BigUint64Array.of(base), length: Float64Array.of(n * 4096) } };
  }

  release(handle: TranslationHandle): void {
    const t = this.#translations.get(handle.id);
    if (t === undefined) throw new VfioError("EINVAL", "translate-unknown-handle", { handle: handle.id });
    this.#drop(t);
    this.counters.releases++;
  }

  /** The core's releaseRange on a memory invalidation: every translation touching the range goes. */
  revoke(first: number, npages: number): number {
    let n = 0;
    for (const t of [...this.#translations.values()]) {
      if (!t.gfns.some((g) => g >= first && g < first + npages)) continue;
      this.#drop(t);
      n++;
    }
    return n;
  }

  checkIsolation(visible: ArrayLike<bigint>): IsolationFinding[] {
    const findings: IsolationFinding[] = [];
    for (let i = 0; i < visible.length; i++) {
      const addr = visible[i]!;
      const page = Number(addr >> 12n);
      let hit: FakeMapping | undefined;
      for (const m of this.guest.mappings.values()) if (page >= m.iovaPage && page < m.iovaPage + m.gfns.length) hit = m;
      if (hit === undefined) findings.push({ addr, kind: "unmapped" });
      else if (hit.owner !== this) findings.push({ addr, kind: "other-vgpu", owner: hit.owner.vgpu });
    }
    return findings;
  }

  protect(_gfn: number): number {
    this.protected++;
    return 0;
  }

  unprotect(_gfn: number): number {
    this.protected--;
    return 0;
  }

  injectIrq(_vector: number): boolean {
    return true;
  }

  #drop(t: FakeMapping): void {
    this.#translations.delete(t.id);
    if (t.iovaPage >= 0) {
      this.guest.mappings.delete(t.id);
      this.counters.unmaps++;
    }
    this.#unpin(t.gfns, t.gfns.length);
  }

  #pin(gfns: ArrayLike<number>, npage: number, out: Uint32Array): void {
    const g = this.guest;
    if (npage > MAX) throw new VfioError("E2BIG", "pin-too-many-pages", { npage });
    let fresh = 0;
    const gen = g.nextStamp();
    for (let i = 0; i < npage; i++) {
      const f = gfns[i]!;
      if (!Number.isSafeInteger(f) || f < 0 || f >= g.guestPages) throw new VfioError("EINVAL", "iova-not-mapped", { gfn: f });
      // Count each fresh frame once even when listed twice.
      if (g.refs[f] === 0 && g.stamp[f] !== gen) {
        g.stamp[f] = gen;
        fresh++;
      }
    }
    if (g.lockedPages + fresh > g.memlockPages) throw new VfioError("ENOMEM", "memlock-limit", { locked: g.lockedPages, wanted: fresh, limit: g.memlockPages });
    for (let i = 0; i < npage; i++) {
      const f = gfns[i]!;
      if (g.refs[f] === 0) g.lockedPages++;
      g.refs[f]!++;
      this.mine[f]!++;
      out[i] = g.pfnOf(f);
    }
  }

  #unpin(gfns: ArrayLike<number>, npage: number): void {
    const g = this.guest;
    for (let i = 0; i < npage; i++) {
      const f = gfns[i]!;
      if (this.mine[f] === 0) {
        g.warnings.push(`${this.vgpu}: unpin of frame ${f} it does not hold`);
        continue;
      }
      this.mine[f]!--;
      if (--g.refs[f]! === 0) g.lockedPages--;
    }
  }
}

function framesOf(frames: FrameSpec): Float64Array {
  if ("npages" in frames && "start" in frames && !("length" in frames)) {
    const out = new Float64Array(frames.npages);
    for (let i = 0; i < frames.npages; i++) out[i] = frames.start + i;
    return out;
  }
  const list = frames as ArrayLike<number>;
  return Float64Array.from({ length: list.length }, (_, i) => list[i]!);
}
