/**
 * The translate API: the 2016 thread's answer, made one function.
 *
 *   translate(vdev, frames, { prot, device? }) -> { pfns, dmaAddrs?, segments?, handle }
 *   pinForCpu(vdev, frames, prot)              = translate without a device
 *   mapForDevice(vdev, frames, prot, device)   = translate with one
 *   release(handle)
 *
 * Model: a translation pins guest frames once through the hypervisor's pin
 * port for the vGPU (on KVM, VFIO type1: the only place pages are charged) and,
 * when the vendor names its parent device, asks the hypervisor adapter to map
 * the host frames for that device. A device mapping changes no accounting. The
 * core keeps the device handle only inside the mapping it made, and forgets it
 * on release.
 *
 * Invariants:
 * - every live handle holds exactly one pin per frame it lists, and at most one
 *   device mapping, unmapped exactly once with its original entry count;
 * - release, releaseRange and invalidation never fail: they unmap before they
 *   unpin, as the kernel does (an address must not stay mapped to a frame that
 *   is no longer pinned);
 * - `DeviceAddressSpaces` holds every live device mapping with the vGPU whose
 *   translation made it; the isolation checker reads nothing else;
 * - where the adapter declares `coreChoosesIova`, a device translation holds
 *   one range the core placed in the device's space (device-iova.ts), given to
 *   the adapter's map call and freed after the adapter unmapped it (at once
 *   when the map failed). Other adapters' translations place nothing.
 */
import { inject, injectable } from "tsyringe";
import { Observable, type Disposable } from "../events/emitter.js";
import { IHypervisorAdapter, type DeviceHandle, type DeviceMapping, type HypervisorAdapter, type GuestInvalidation } from "../hypervisor/hypervisor-adapter.js";
import type { GuestPinPort } from "../hypervisor/guest-pin-port.js";
import { KernelError, VfioError } from "../errors/kernel-error.js";
import { IOMMU_READ, IOMMU_WRITE } from "../vfio/type1/vfio-dma.js";
import { PAGE_SIZE } from "../address/address.js";
import { f64Array, u32Array } from "../address/typed-slab.js";
import type { IovaRange } from "../dma-api/iova-domain.js";
import { DeviceIova, type DeviceIovaOptions } from "./device-iova.js";

/** Guest frames: a contiguous range, or an arbitrary list of frame numbers. */
export type FrameSpec = { readonly start: number; readonly npages: number } | ArrayLike<number>;

export interface TranslateOptions {
  /** IOMMU_READ | IOMMU_WRITE, from the device's point of view. */
  readonly prot: number;
  /** The vendor's own parent device; omitted for CPU access. */
  readonly device?: DeviceHandle;
}

export interface TranslationHandle {
  readonly id: number;
}

export interface Translation {
  readonly handle: TranslationHandle;
  /** Host frame of each guest frame, in order. */
  readonly pfns: Uint32Array;
  /** With a device: the device address of each guest frame (computed on first read). */
  readonly dmaAddrs?: BigUint64Array;
  /** With a device: the segments the mapping produced (fewer than frames when the mechanism merges). */
  readonly segments?: { readonly count: number; readonly addr: BigUint64Array; readonly length: Float64Array };
}

/** A device translation; per-frame addresses cost a bigint each, so they are derived from the segments only when read. */
class DeviceTranslation implements Translation {
  #dmaAddrs: BigUint64Array | undefined;
  #segments: Translation["segments"];

  constructor(
    readonly handle: TranslationHandle,
    readonly pfns: Uint32Array,
    private readonly mapping: DeviceMapping,
  ) {}

  get segments(): NonNullable<Translation["segments"]> {
    const m = this.mapping;
    return (this.#segments ??= {
      count: m.count,
      addr: m.segAddr.length === m.count ? m.segAddr : m.segAddr.subarray(0, m.count),
      length: m.segLength.length === m.count ? m.segLength : m.segLength.subarray(0, m.count),
    });
  }

  get dmaAddrs(): BigUint64Array {
    return (this.#dmaAddrs ??= frameAddresses(this.mapping, this.pfns.length));
  }
}

export type IsolationFinding = { readonly addr: bigint; readonly kind: "unmapped" } | { readonly addr: bigint; readonly kind: "other-vgpu"; readonly owner: string };

export interface TranslateEvents {
  translated(e: { vdev: string; handle: number; npages: number; device: string | null; segments: number }): void;
  released(e: { vdev: string; handle: number; npages: number; device: string | null }): void;
  revoked(e: { vdev: string; handles: number[]; firstGfn: number; npages: number; reason: string }): void;
}

interface VgpuIdentity {
  readonly name: string;
}

interface TranslationRecord {
  readonly id: number;
  readonly vdev: VgpuIdentity;
  readonly pins: GuestPinPort;
  readonly gfns: GfnList;
  readonly mapping: DeviceMapping | undefined;
  /** The first device page the core placed the mapping at (coreChoosesIova), else undefined. */
  readonly dfn: number | undefined;
}

/** The live device mappings of one physical device, each with the vGPU that owns it. */
interface DeviceSpace {
  readonly live: Map<DeviceMapping, string>;
  /** Sorted segment index for the checker, rebuilt after a change (checks are rare, maps are not). */
  index: { readonly start: BigUint64Array; readonly last: BigUint64Array; readonly owner: string[] } | undefined;
  /** Where the core places translations for the device, once its adapter let it choose. */
  iova: DeviceIova | undefined;
}

/**
 * What each physical device can reach, owner by owner. Shared by the translate
 * APIs of every VM of a platform (one parent GPU serves vGPUs in several VMs),
 * so the isolation checker sees them all; a platform registers one instance in
 * the scope its VMs descend from. Recording a mapping is O(1); the sorted
 * segment index the checker searches is built on the first check after a change.
 * It also holds each device's placement space for adapters that let the core
 * choose device addresses, so vGPUs of different VMs never get the same range.
 */
export class DeviceAddressSpaces {
  readonly #spaces = new Map<DeviceHandle, DeviceSpace>();

  constructor(private readonly options: DeviceIovaOptions = {}) {}

  add(mapping: DeviceMapping, owner: string): void {
    const space = this.#space(mapping.device);
    space.live.set(mapping, owner);
    space.index = undefined;
  }

  /**
   * Places an `npages` translation for `device` in its address space (see
   * DeviceIova; the device's limits are read from `adapter` the first time):
   * the first device page. ENOMEM `dma-mapping-error` when no range fits.
   */
  placeIova(adapter: HypervisorAdapter, device: DeviceHandle, npages: number): number {
    let iova = this.#spaces.get(device)?.iova;
    if (iova === undefined) {
      iova = new DeviceIova(adapter.capabilities(device), this.options);
      this.#space(device).iova = iova;
    }
    const pfn = iova.place(npages);
    if (pfn < 0) throw new KernelError("ENOMEM", "dma-mapping-error", { device: device.name, npages });
    return pfn;
  }

  /** Frees the range placed at `pfn` for `device`. */
  freeIova(device: DeviceHandle, pfn: number): void {
    this.#spaces.get(device)?.iova?.free(pfn);
  }

  /** The ranges placed for `device` and not yet freed, lowest first. */
  placedRanges(device: DeviceHandle): IovaRange[] {
    return this.#spaces.get(device)?.iova?.ranges() ?? [];
  }

  #space(device: DeviceHandle): DeviceSpace {
    let space = this.#spaces.get(device);
    if (space === undefined) this.#spaces.set(device, (space = { live: new Map(), index: undefined, iova: undefined }));
    return space;
  }

  remove(mapping: DeviceMapping): void {
    const space = this.#spaces.get(mapping.device);
    if (space?.live.delete(mapping) === true) space.index = undefined;
  }

  /** Owners of the live segments of `device` that contain `addr` (several when one host frame is mapped twice in direct mode). */
  owners(device: DeviceHandle, addr: bigint): string[] {
    const space = this.#spaces.get(device);
    if (space === undefined) return [];
    const index = (space.index ??= buildIndex(space.live));
    let lo = 0;
    let hi = index.start.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (index.start[mid]! <= addr) lo = mid + 1;
      else hi = mid;
    }
    const out: string[] = [];
    for (let k = lo - 1; k >= 0 && index.start[k] === index.start[lo - 1]; k--) if (index.last[k]! >= addr) out.push(index.owner[k]!);
    return out;
  }
}

function buildIndex(live: ReadonlyMap<DeviceMapping, string>): NonNullable<DeviceSpace["index"]> {
  const segs: { start: bigint; last: bigint; owner: string }[] = [];
  for (const [m, owner] of live) for (let s = 0; s < m.count; s++) segs.push({ start: m.segAddr[s]!, last: m.segAddr[s]! + BigInt(m.segLength[s]!) - 1n, owner });
  segs.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  return { start: BigUint64Array.from(segs, (x) => x.start), last: BigUint64Array.from(segs, (x) => x.last), owner: segs.map((x) => x.owner) };
}

const handleOf = (id: number): TranslationHandle => ({ id });

@injectable()
export class TranslateApi extends Observable<TranslateEvents> {
  readonly #records = new Map<number, TranslationRecord>();
  readonly #byVdev = new Map<VgpuIdentity, Set<TranslationRecord>>();
  readonly #vdevsByVm = new Map<string, Set<VgpuIdentity>>();
  readonly #subscription: Disposable;
  #nextId = 1;

  constructor(
    @inject(IHypervisorAdapter) private readonly adapter: HypervisorAdapter,
    @inject(DeviceAddressSpaces) private readonly spaces: DeviceAddressSpaces,
  ) {
    super();
    this.#subscription = adapter.onInvalidate((inv) => this.#onInvalidate(inv));
  }

  /** Declares which VM a vGPU belongs to, so the adapter's invalidations reach its translations. */
  attach(vm: string, vdev: VgpuIdentity): void {
    let set = this.#vdevsByVm.get(vm);
    if (set === undefined) this.#vdevsByVm.set(vm, (set = new Set()));
    set.add(vdev);
  }

  detach(vm: string, vdev: VgpuIdentity): void {
    this.#vdevsByVm.get(vm)?.delete(vdev);
  }

  translate(vdev: VgpuIdentity, frames: FrameSpec, options: TranslateOptions): Translation {
    const prot = options.prot;
    if (!Number.isInteger(prot) || prot === 0 || (prot & ~(IOMMU_READ | IOMMU_WRITE)) !== 0) throw new VfioError("EINVAL", "translate-bad-prot", { prot });
    const caps = this.adapter.capabilities();
    const gfns = normalizeFrames(frames, caps.maxPinPerCall);
    const n = gfns.length;
    const pins = this.adapter.guestPins(vdev);
    const pfns = u32Array(n);
    const write = (prot & IOMMU_WRITE) !== 0;
    pins.pin(gfns, n, write, pfns);
    let mapping: DeviceMapping | undefined;
    let dfn: number | undefined;
    if (options.device !== undefined) {
      try {
        if (caps.coreChoosesIova) dfn = this.spaces.placeIova(this.adapter, options.device, n);
        mapping = this.adapter.mapForDevice(options.device, pfns, n, write, dfn);
      } catch (e) {
        if (dfn !== undefined) this.spaces.freeIova(options.device, dfn);
        pins.unpin(gfns, n);
        throw e;
      }
    }
    const record: TranslationRecord = { id: this.#nextId++, vdev, pins, gfns, mapping, dfn };
    this.#records.set(record.id, record);
    let mine = this.#byVdev.get(vdev);
    if (mine === undefined) this.#byVdev.set(vdev, (mine = new Set()));
    mine.add(record);
    const handle = handleOf(record.id);
    if (mapping === undefined) {
      if (this.hasListeners("translated")) this.emit("translated", { vdev: vdev.name, handle: record.id, npages: n, device: null, segments: 0 });
      return { handle, pfns };
    }
    this.spaces.add(mapping, vdev.name);
    if (this.hasListeners("translated")) this.emit("translated", { vdev: vdev.name, handle: record.id, npages: n, device: mapping.device.name, segments: mapping.count });
    return new DeviceTranslation(handle, pfns, mapping);
  }

  pinForCpu(vdev: VgpuIdentity, frames: FrameSpec, prot: number): Translation {
    return this.translate(vdev, frames, { prot });
  }

  mapForDevice(vdev: VgpuIdentity, frames: FrameSpec, prot: number, device: DeviceHandle): Translation {
    return this.translate(vdev, frames, { prot, device });
  }

  /** Releases a translation: unmaps it from the device, then unpins. An unknown or released handle is -EINVAL. */
  release(handle: TranslationHandle): void {
    const record = typeof handle === "object" && handle !== null ? this.#records.get(handle.id) : undefined;
    if (record === undefined) throw new VfioError("EINVAL", "translate-unknown-handle", { handle: (handle as { id?: unknown } | null)?.id });
    this.#release(record);
    if (this.hasListeners("released")) this.emit("released", { vdev: record.vdev.name, handle: record.id, npages: record.gfns.length, device: record.mapping?.device.name ?? null });
  }

  /** Releases every translation of `vdev` that lists a frame of [firstGfn, firstGfn + npages); returns their handles. */
  releaseRange(vdev: VgpuIdentity, firstGfn: number, npages: number, reason = "dma_unmap"): TranslationHandle[] {
    const released: number[] = [];
    for (const record of [...(this.#byVdev.get(vdev) ?? [])]) {
      if (!touches(record.gfns, firstGfn, firstGfn + npages)) continue;
      this.#release(record);
      released.push(record.id);
    }
    if (released.length > 0) this.emit("revoked", { vdev: vdev.name, handles: released, firstGfn, npages, reason });
    return released.map(handleOf);
  }

  /** Live translations of a vGPU, or of all vGPUs. */
  liveCount(vdev?: VgpuIdentity): number {
    return vdev === undefined ? this.#records.size : (this.#byVdev.get(vdev)?.size ?? 0);
  }

  /**
   * The isolation checker: for each device address a vGPU has made visible to
   * its parent, reports the ones that belong to another vGPU on the same parent
   * (a single requester ID cannot tell them apart) or that are no longer mapped.
   */
  checkIsolation(vdev: VgpuIdentity, device: DeviceHandle, visible: ArrayLike<bigint>): IsolationFinding[] {
    const findings: IsolationFinding[] = [];
    for (let i = 0; i < visible.length; i++) {
      const addr = visible[i]!;
      const owners = this.spaces.owners(device, addr);
      if (owners.length === 0) findings.push({ addr, kind: "unmapped" });
      else if (!owners.includes(vdev.name)) findings.push({ addr, kind: "other-vgpu", owner: owners[0]! });
    }
    return findings;
  }

  /** Stops listening to the adapter; live translations stay until released. */
  dispose(): void {
    this.#subscription.dispose();
  }

  #release(record: TranslationRecord): void {
    this.#records.delete(record.id);
    this.#byVdev.get(record.vdev)?.delete(record);
    if (record.mapping !== undefined) {
      this.spaces.remove(record.mapping);
      this.adapter.unmapForDevice(record.mapping);
      if (record.dfn !== undefined) this.spaces.freeIova(record.mapping.device, record.dfn);
    }
    record.pins.unpin(record.gfns, record.gfns.length);
  }

  #onInvalidate(inv: GuestInvalidation): void {
    for (const vdev of this.#vdevsByVm.get(inv.vm) ?? []) this.releaseRange(vdev, inv.firstGfn, inv.npages, inv.reason);
  }
}

/** Guest frame numbers as 4 bytes each while they fit (they do below 16 TiB of guest space), 8 otherwise. */
type GfnList = Uint32Array | Float64Array;

/** The frames as a list, counted before anything is read or allocated (vfio_pin_pages checks npage, then the pages). */
function normalizeFrames(frames: FrameSpec, max: number): GfnList {
  if (frames === null || typeof frames !== "object") throw new VfioError("EINVAL", "translate-bad-frames");
  const range = "npages" in frames && "start" in frames && !("length" in frames);
  const n = range ? frames.npages : frames.length;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) throw new VfioError("EINVAL", "translate-bad-frames");
  if (n === 0) throw new VfioError("EINVAL", "translate-no-frames");
  if (n > max) throw new VfioError("E2BIG", "translate-too-many-frames", { npages: n, max });
  if (range) {
    const start = frames.start;
    if (!Number.isSafeInteger(start) || start < 0) throw new VfioError("EINVAL", "translate-bad-frames");
    const out = start + n <= 0x1_0000_0000 ? u32Array(n) : f64Array(n);
    for (let i = 0; i < n; i++) out[i] = start + i;
    return out;
  }
  let wide = false;
  for (let i = 0; i < n; i++) {
    const g = frames[i]!;
    if (!Number.isSafeInteger(g) || g < 0) throw new VfioError("EINVAL", "translate-bad-frames", { index: i });
    if (g >= 0x1_0000_0000) wide = true;
  }
  const out = wide ? f64Array(n) : u32Array(n);
  out.set(frames);
  return out;
}

function touches(gfns: GfnList, first: number, end: number): boolean {
  for (let i = 0; i < gfns.length; i++) if (gfns[i]! >= first && gfns[i]! < end) return true;
  return false;
}

/** The device address of each page-sized frame, walking the segments in order (one segment per frame: the segments themselves). */
function frameAddresses(mapping: DeviceMapping, n: number): BigUint64Array {
  if (mapping.count === n && mapping.segAddr.length === n) return mapping.segAddr;
  const out = new BigUint64Array(n);
  let seg = 0;
  let used = 0;
  for (let i = 0; i < n; i++) {
    while (seg < mapping.count && used >= mapping.segLength[seg]!) {
      seg++;
      used = 0;
    }
    out[i] = mapping.segAddr[seg]! + BigInt(used);
    used += PAGE_SIZE;
  }
  return out;
}

