/**
 * An in-memory VgpuServices for unit tests and benches: guest RAM in one
 * buffer, a host frame per guest frame (contiguous like THP-backed memory, or
 * scattered by a seeded shuffle), per-frame pin refcounts with an optional
 * memlock limit, a parent device with an IOVA allocator shared by every vGPU
 * on it, write protection that routes guest writes to a listener (as KVM
 * page-track does) and fault hooks.
 *
 * Semantics kept from the real stack: pins are all or nothing and refcounted
 * per frame; a frame outside guest RAM is -EINVAL; passing the memlock limit
 * with a new frame is -ENOMEM; a failed device mapping is KernelError
 * (reason "dma-mapping-error") and pins nothing; releasing an unknown handle
 * is -EINVAL (reason "translate-unknown-handle"); protect outside guest RAM
 * is -EINVAL; dmaRw outside guest RAM throws -EINVAL and pins nothing.
 */
import { KernelError, VfioError, type DeviceHandle, type FrameSpec, type IsolationFinding, type Translation, type TranslationHandle, type TranslateOptions, type VgpuServices } from "@vgpu-iommu/core";

/** The parent GPU: one IOVA space shared by all its vGPUs, with the owner of each mapped page. */
export class FakeParent implements DeviceHandle {
  nextIovaPage = 0x100000;
  /** Owner id (index into #names, 0 = none) of each device page. */
  #owner = new Uint16Array(1 << 21);
  readonly #names: string[] = [""];
  constructor(readonly name = "gvt-parent0") {}

  idOf(vm: string): number {
    let id = this.#names.indexOf(vm);
    if (id < 0) id = this.#names.push(vm) - 1;
    return id;
  }

  setOwner(page: number, id: number): void {
    if (page >= this.#owner.length) {
      let n = this.#owner.length;
      while (n <= page) n *= 2;
      const o = new Uint16Array(n);
      o.set(this.#owner);
      this.#owner = o;
    }
    this.#owner[page] = id;
  }

  ownerOf(page: number): string | undefined {
    const id = page < this.#owner.length ? this.#owner[page]! : 0;
    return id === 0 ? undefined : this.#names[id];
  }
}

export interface FakeServicesOptions {
  readonly vm?: string;
  readonly ramPages: number;
  /** contiguous: host frame = base + gfn (THP-like); scattered: a seeded permutation. */
  readonly backing?: "contiguous" | "scattered";
  readonly seed?: number;
  /** Distinct frames that may be pinned at once; unlimited when omitted. */
  readonly memlockPages?: number;
  /** iommu: the parent allocates IOVAs; direct: the device address is the host address. */
  readonly dmaMode?: "iommu" | "direct";
  readonly parent?: FakeParent;
}

export interface FakeCounters {
  /** pinPages calls and the frames they pinned. */
  pinCalls: number;
  unpinCalls: number;
  /** translate calls, with and without a device. */
  translates: number;
  releases: number;
  /** Device mappings made (one per translate with a device). */
  maps: number;
  protects: number;
  unprotects: number;
  dmaRwCalls: number;
  dmaRwBytes: number;
  irqs: number;
  /** Unpins of frames that were not pinned (a WARN in the kernel). */
  badUnpins: number;
}

/** A live translation: frames `start + i` (or `gfns[i]`), mapped at `dmaBase + i` (iommu) or at `pfns[i]` (direct). */
interface Record_ {
  readonly start: number;
  readonly n: number;
  readonly gfns: Float64Array | undefined;
  readonly pfns: Uint32Array;
  /** -1: not mapped for the device. */
  readonly dmaBase: number;
}

const HOST_BASE_PFN = 0x40000;

export class FakeVgpuServices implements VgpuServices {
  readonly vm: string;
  readonly parentDevice: FakeParent;
  readonly ramPages: number;
  readonly pfnOf: Uint32Array;
  readonly pinRefs: Uint32Array;
  readonly counters: FakeCounters = { pinCalls: 0, unpinCalls: 0, translates: 0, releases: 0, maps: 0, protects: 0, unprotects: 0, dmaRwCalls: 0, dmaRwBytes: 0, irqs: 0, badUnpins: 0 };
  readonly protectedFrames = new Set<number>();
  /** Frames with at least one pin. */
  pinnedFrames = 0;
  memlockPages: number;
  /** KVM page-track: called after a guest write to a protected frame landed. */
  onTrackedWrite: ((gpa: bigint, data: Uint8Array) => void) | undefined;
  /** Test hook, called after a frame becomes protected. */
  onProtect: ((gfn: number) => void) | undefined;
  /** Fault hooks: return an errno name to make that pin or map fail. */
  failPin: ((gfn: number) => "ENOMEM" | "EFAULT" | "EINVAL" | undefined) | undefined;
  failMap: ((npages: number) => boolean) | undefined;
  /** injectIrq answers false once the VMM has gone. */
  vmmAlive = true;
  readonly #records: (Record_ | undefined)[] = [];
  #live = 0;
  readonly #ownerId: number;
  readonly #ram = new Map<number, Uint8Array>();
  #nextHandle = 1;
  readonly #direct: boolean;

  constructor(options: FakeServicesOptions) {
    this.vm = options.vm ?? "vm0";
    this.parentDevice = options.parent ?? new FakeParent();
    this.ramPages = options.ramPages;
    this.pfnOf = new Uint32Array(options.ramPages);
    this.pinRefs = new Uint32Array(options.ramPages);
    this.memlockPages = options.memlockPages ?? Number.POSITIVE_INFINITY;
    this.#direct = options.dmaMode === "direct";
    this.#ownerId = this.parentDevice.idOf(this.vm);
    for (let g = 0; g < options.ramPages; g++) this.pfnOf[g] = HOST_BASE_PFN + g;
    if (options.backing === "scattered") {
      let s = (options.seed ?? 1) >>> 0 || 1;
      for (let i = options.ramPages - 1; i > 0; i--) {
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        const j = (s >>> 0) % (i + 1);
        const t = this.pfnOf[i]!;
        this.pfnOf[i] = this.pfnOf[j]!;
        this.pfnOf[j] = t;
      }
    }
  }

  pinPages(gfn: number, npage: number, _prot: number, out: Uint32Array): number {
    if (npage > 512) throw new VfioError("E2BIG", "pin-too-many-pages", { npage });
    this.#pinRun(gfn, npage, out, 0);
    this.counters.pinCalls++;
    return npage;
  }

  unpinPages(gfn: number, npage: number): void {
    this.counters.unpinCalls++;
    for (let i = 0; i < npage; i++) this.#unpin(gfn + i);
  }

  pinPagesArray(gfns: ArrayLike<number>, npage: number, _prot: number, out: Uint32Array): number {
    let done = 0;
    try {
      for (; done < npage; done++) this.#pinRun(gfns[done]!, 1, out, done);
    } catch (e) {
      for (let i = 0; i < done; i++) this.#unpin(gfns[i]!);
      throw e;
    }
    this.counters.pinCalls++;
    return npage;
  }

  unpinPagesArray(gfns: ArrayLike<number>, npage: number): number {
    this.counters.unpinCalls++;
    for (let i = 0; i < npage; i++) this.#unpin(gfns[i]!);
    return npage;
  }

  dmaRw(gpa: bigint, data: Uint8Array, write: boolean): void {
    const at = Number(gpa);
    if (at < 0 || at + data.length > this.ramPages * 4096) throw new VfioError("EINVAL", "rw-iova-not-mapped", { gpa });
    this.counters.dmaRwCalls++;
    this.counters.dmaRwBytes += data.length;
    this.#copy(at, data, write);
  }

  translate(frames: FrameSpec, options: TranslateOptions): Translation {
    const contiguous = "npages" in frames && "start" in frames;
    const gfns = contiguous ? undefined : framesOf(frames);
    const start = contiguous ? frames.start : 0;
    const n = contiguous ? frames.npages : gfns!.length;
    const pfns = new Uint32Array(n);
    if (contiguous) this.#pinRun(start, n, pfns, 0);
    else {
      let done = 0;
      try {
        for (; done < n; done++) this.#pinRun(gfns![done]!, 1, pfns, done);
      } catch (e) {
        for (let i = 0; i < done; i++) this.#unpin(gfns![i]!);
        throw e;
      }
    }
    this.counters.translates++;
    const id = this.#nextHandle++;
    const handle: TranslationHandle = { id };
    if (options.device === undefined) {
      this.#records[id] = { start, n, gfns, pfns, dmaBase: -1 };
      this.#live++;
      return { handle, pfns };
    }
    if (options.device !== this.parentDevice || this.failMap?.(n) === true) {
      this.#unpinAll(start, n, gfns);
      throw new KernelError("ENOMEM", "dma-mapping-error", { npages: n });
    }
    const dmaAddrs = new BigUint64Array(n);
    const parent = this.parentDevice;
    const owner = this.#ownerId;
    const base = this.#direct ? 0 : parent.nextIovaPage;
    if (!this.#direct) parent.nextIovaPage += n;
    for (let i = 0; i < n; i++) {
      const page = this.#direct ? pfns[i]! : base + i;
      dmaAddrs[i] = BigInt(page * 4096);
      parent.setOwner(page, owner);
    }
    this.#records[id] = { start, n, gfns, pfns, dmaBase: this.#direct ? 0 : base };
    this.#live++;
    this.counters.maps++;
    return { handle, pfns, dmaAddrs };
  }

  release(handle: TranslationHandle): void {
    const rec = this.#records[handle.id];
    if (rec === undefined) throw new VfioError("EINVAL", "translate-unknown-handle", { handle: handle.id });
    this.#records[handle.id] = undefined;
    this.#live--;
    if (rec.dmaBase >= 0) for (let i = 0; i < rec.n; i++) this.parentDevice.setOwner(this.#direct ? rec.pfns[i]! : rec.dmaBase + i, 0);
    this.#unpinAll(rec.start, rec.n, rec.gfns);
    this.counters.releases++;
  }

  checkIsolation(visible: ArrayLike<bigint>): IsolationFinding[] {
    const out: IsolationFinding[] = [];
    for (let i = 0; i < visible.length; i++) {
      const addr = visible[i]!;
      const owner = this.parentDevice.ownerOf(Number(addr >> 12n));
      if (owner === undefined) out.push({ addr, kind: "unmapped" });
      else if (owner !== this.vm) out.push({ addr, kind: "other-vgpu", owner });
    }
    return out;
  }

  protect(gfn: number): number {
    if (gfn < 0 || gfn >= this.ramPages) return -22;
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
    if (!this.vmmAlive) return false;
    this.counters.irqs++;
    return true;
  }

  /** A guest CPU write: lands in RAM, then traps to the listener when the frame is protected. 0 or -EFAULT. */
  guestWrite(gpa: bigint, data: Uint8Array): number {
    const at = Number(gpa);
    if (at < 0 || at + data.length > this.ramPages * 4096) return -14;
    this.#copy(at, data, true);
    if (this.protectedFrames.has(Number(gpa >> 12n))) this.onTrackedWrite?.(gpa, data);
    return 0;
  }

  guestRead(gpa: bigint, out: Uint8Array): number {
    const at = Number(gpa);
    if (at < 0 || at + out.length > this.ramPages * 4096) return -14;
    this.#copy(at, out, false);
    return 0;
  }

  /** Guest RAM is sparse: a page exists once written; unwritten pages read as zeros. */
  #copy(at: number, data: Uint8Array, write: boolean): void {
    for (let done = 0; done < data.length; ) {
      const pos = at + done;
      const page = Math.floor(pos / 4096);
      const off = pos % 4096;
      const len = Math.min(data.length - done, 4096 - off);
      let mem = this.#ram.get(page);
      if (write) {
        if (mem === undefined) this.#ram.set(page, (mem = new Uint8Array(4096)));
        mem.set(data.subarray(done, done + len), off);
      } else if (mem === undefined) data.fill(0, done, done + len);
      else data.set(mem.subarray(off, off + len), done);
      done += len;
    }
  }

  /** Live translations. */
  get liveTranslations(): number {
    return this.#live;
  }

  /** Live device mappings, in pages. */
  liveMappedPages(): number {
    let n = 0;
    for (const r of this.#records) if (r !== undefined && r.dmaBase >= 0) n += r.n;
    return n;
  }

  /** Sum of all pin references. */
  totalPinRefs(): number {
    let n = 0;
    for (let g = 0; g < this.ramPages; g++) n += this.pinRefs[g]!;
    return n;
  }

  /** What is still held: for the leak check at the end of every test. */
  leaks(): { pinnedFrames: number; pinRefs: number; translations: number; protectedFrames: number; badUnpins: number } {
    return { pinnedFrames: this.pinnedFrames, pinRefs: this.totalPinRefs(), translations: this.#live, protectedFrames: this.protectedFrames.size, badUnpins: this.counters.badUnpins };
  }

  #pinRun(gfn: number, n: number, out: Uint32Array, outAt: number): void {
    let done = 0;
    try {
      for (; done < n; done++) {
        const g = gfn + done;
        if (!Number.isInteger(g) || g < 0 || g >= this.ramPages) throw new VfioError("EINVAL", "pin-iova-not-mapped", { gfn: g });
        const f = this.failPin?.(g);
        if (f !== undefined) throw new VfioError(f, "pin-injected-fault", { gfn: g });
        if (this.pinRefs[g] === 0) {
          if (this.pinnedFrames >= this.memlockPages) throw new VfioError("ENOMEM", "pin-memlock-exceeded", { gfn: g, limit: this.memlockPages });
          this.pinnedFrames++;
        }
        this.pinRefs[g]!++;
        out[outAt + done] = this.pfnOf[g]!;
      }
    } catch (e) {
      for (let i = 0; i < done; i++) this.#unpin(gfn + i);
      throw e;
    }
  }

  #unpinAll(start: number, n: number, gfns: Float64Array | undefined): void {
    for (let i = 0; i < n; i++) this.#unpin(gfns === undefined ? start + i : gfns[i]!);
  }

  #unpin(g: number): void {
    if (g < 0 || g >= this.ramPages || this.pinRefs[g] === 0) {
      this.counters.badUnpins++;
      return;
    }
    if (--this.pinRefs[g]! === 0) this.pinnedFrames--;
  }
}

function framesOf(list: ArrayLike<number>): Float64Array {
  const out = new Float64Array(list.length);
  for (let i = 0; i < list.length; i++) out[i] = list[i]!;
  return out;
}
