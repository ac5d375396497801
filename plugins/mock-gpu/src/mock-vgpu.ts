/**
 * One mock vGPU: the GVT-g GGTT flow (vendors.md 1.4) in its simplest form.
 *
 * Model: the guest writes 8-byte entries into a table in BAR0 (see
 * gtt-geometry.ts). The vGPU keeps the guest's view of every entry (`guest`),
 * the halves written since the last commit (`partial`), and a shadow: the
 * device address the GPU would use (`shadow`), the frame it maps
 * (`shadowGfn`) and its state. Committing an entry (an 8-byte write, or the
 * second half of a 4-byte pair) maps the new frame first, then releases the
 * old one (add before remove). Mapping looks the frame up in the DMA cache: a
 * hit takes a reference, a miss translates the frame for the parent device
 * (`services.translate({start: gfn, npages: 1}, {prot, device: parentDevice})`,
 * which pins and maps) and caches the result with one reference. Any failure
 * points the entry at the scratch page, silently for the guest. Releasing an
 * entry drops a reference by device address (unknown addresses are ignored,
 * as GVT's unmap_guest_page does); the last reference releases the
 * translation.
 *
 * dmaUnmap(iova, length) releases every cache entry in the range whatever its
 * refcount; the shadow entries that used them are pointed at scratch
 * (`REVOKED`), or left holding the dead address (`STALE`) with
 * `staleShadows`, GVT's window of vendors.md 1.7. Reset (flr, d3-resume) and
 * close release every entry and clear the table; an engine reset keeps the GTT.
 *
 * Every step is a public method (`writeEntry`, `commitEntry`, `mapGuestPage`,
 * `putGuestPage`, `releaseTranslation`, `dropRange`, `releaseAll`) called
 * through `this`, so a test can spy or stub any of them on the instance; the
 * vendor's `hooks` see each step and `failNth` fails any fallible one.
 *
 * Invariants: an entry in state MAPPED holds one reference on the cache entry
 * of `shadowGfn`, whose address is `shadow`; the cache's refcount total equals
 * the number of MAPPED entries; after close, reset(flr) or dmaUnmap of a range
 * the vGPU holds no translation there.
 */
import { IOMMU_READ, IOMMU_WRITE, KernelError, Observable, type PlaneInfo, type ResetKind, type TranslationHandle, type Vgpu, type VgpuServices } from "@vgpu-iommu/core";
import { DmaCache } from "./dma-cache.js";
import { accessHalf, accessIndex, classifyAccess, GTT_GFN_MASK, GTT_PRESENT, HALF_BOTH, HALF_HIGH, readRegisters, REGISTER_ACCESS, type GttGeometry } from "./gtt-geometry.js";
import type { MockFaults } from "./mock-faults.js";
import type { MockGpuHooks, UnmapReason } from "./mock-hooks.js";
import type { MockVgpuEvents } from "./mock-events.js";

/** Shadow entry states. */
export const ENTRY_EMPTY = 0; // not present: scratch, no reference
export const ENTRY_MAPPED = 1; // holds a reference on the cache entry of its gfn
export const ENTRY_SCRATCH = 2; // present, but mapping failed: scratch
export const ENTRY_REVOKED = 3; // its cache entry was dropped by an invalidation: scratch
export const ENTRY_STALE = 4; // same, with staleShadows: still holds the dead address

const PROT_RW = IOMMU_READ | IOMMU_WRITE;
const LOW_MASK = 0xffff_ffffn;

export interface MockVgpuConfig {
  readonly geometry: GttGeometry;
  readonly scratchAddress: bigint;
  readonly staleShadows: boolean;
}

export interface MockVgpuStats {
  /** Live DMA cache entries (frames pinned and mapped). */
  readonly cacheEntries: number;
  /** Sum of their refcounts (= entries in state MAPPED). */
  readonly refs: number;
  /** Successful translate calls. */
  readonly translations: number;
  /** Release calls made. */
  readonly releases: number;
  readonly mapFailures: number;
  /** Release calls that reported an error (not retried). */
  readonly releaseErrors: number;
  /** Hook calls that threw where a step could not stop. */
  readonly hookErrors: number;
  /** Present entries pointing at scratch (failed or revoked). */
  readonly scratchEntries: number;
  readonly staleEntries: number;
}

export class MockVgpu extends Observable<MockVgpuEvents> implements Vgpu {
  readonly cache = new DmaCache();
  readonly #guest: BigUint64Array;
  readonly #partial: Uint8Array;
  readonly #shadow: BigUint64Array;
  readonly #shadowGfn: Float64Array;
  readonly #state: Uint8Array;
  #open = false;
  #translations = 0;
  #releases = 0;
  #mapFailures = 0;
  #releaseErrors = 0;
  #hookErrors = 0;

  constructor(
    readonly name: string,
    readonly type: string,
    readonly services: VgpuServices,
    readonly config: MockVgpuConfig,
    readonly hooks: MockGpuHooks,
    readonly faults: MockFaults,
  ) {
    super();
    const n = config.geometry.tableEntries;
    this.#guest = new BigUint64Array(n);
    this.#partial = new Uint8Array(n);
    this.#shadow = new BigUint64Array(n).fill(config.scratchAddress);
    this.#shadowGfn = new Float64Array(n);
    this.#state = new Uint8Array(n);
  }

  get geometry(): GttGeometry {
    return this.config.geometry;
  }

  get isOpen(): boolean {
    return this.#open;
  }

  // ---------------------------------------------------------------- device ops

  async open(): Promise<void> {
    if (this.#open) throw new KernelError("EBUSY", "mock-already-open", { vgpu: this.name });
    this.#open = true;
    this.emit("opened", { vgpu: this.name });
  }

  async close(): Promise<void> {
    const released = this.releaseAll("close");
    this.#clearTable();
    this.#open = false;
    this.emit("closed", { vgpu: this.name, released });
  }

  read(region: number, offset: bigint, length: number): Uint8Array {
    this.#requireOpen();
    const access = classifyAccess(this.geometry, region, offset, length, false);
    const out = new Uint8Array(length);
    if (access === REGISTER_ACCESS) {
      readRegisters(this.geometry, Number(offset), out);
      return out;
    }
    const index = accessIndex(access);
    const view = new DataView(out.buffer);
    const value = this.#guest[index]!;
    if (accessHalf(access) === HALF_BOTH) view.setBigUint64(0, value, true);
    else view.setUint32(0, Number(accessHalf(access) === HALF_HIGH ? value >> 32n : value & LOW_MASK), true);
    return out;
  }

  write(region: number, offset: bigint, data: Uint8Array): void {
    this.#requireOpen();
    const access = classifyAccess(this.geometry, region, offset, data.length, true);
    if (access === REGISTER_ACCESS) return;
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const half = accessHalf(access);
    this.writeEntry(accessIndex(access), half, half === HALF_BOTH ? view.getBigUint64(0, true) : BigInt(view.getUint32(0, true)));
  }

  async reset(kind: ResetKind): Promise<void> {
    this.hooks.beforeReset(this.name, kind);
    let released = 0;
    if (kind !== "engine") {
      released = this.releaseAll("reset");
      this.#clearTable();
    }
    this.emit("reset", { vgpu: this.name, kind, released });
  }

  dmaUnmap(iova: bigint, length: bigint): void {
    const first = Number(iova >> 12n);
    const end = Number((iova + length + 0xfffn) >> 12n);
    this.dropRange(first, end - first, "dma-unmap");
  }

  /** The mock protects no guest frame, so no write can be for it. */
  onGuestWrite(gpa: bigint, data: Uint8Array): void {
    throw new KernelError("EINVAL", "mock-protects-nothing", { gpa, length: data.length });
  }

  /** The frames' backing went with their memory slot: drop cached entries there, as for dmaUnmap. */
  onMemslotRemoved(firstGfn: number, npages: number): void {
    this.dropRange(firstGfn, npages, "memslot");
  }

  queryPlane(_plane: "primary" | "cursor"): PlaneInfo | undefined {
    return undefined;
  }

  getDmabuf(dmabufId: number): void {
    throw new KernelError("EINVAL", "mock-no-plane", { dmabufId });
  }

  releaseDmabuf(dmabufId: number): void {
    throw new KernelError("EINVAL", "mock-no-plane", { dmabufId });
  }

  // ---------------------------------------------------------------- steps (public, so tests can spy on them)

  /** A guest write of one entry or of half of one (`half`: 0 low, 1 high, 2 both). */
  writeEntry(index: number, half: number, value: bigint): void {
    this.hooks.entryWritten(this.name, index, half, value);
    let committed: boolean;
    if (half === HALF_BOTH) {
      this.#guest[index] = value;
      this.#partial[index] = 0;
      committed = true;
    } else {
      const old = this.#guest[index]!;
      this.#guest[index] = half === HALF_HIGH ? (old & LOW_MASK) | (value << 32n) : (old & ~LOW_MASK) | value;
      const mask = this.#partial[index]! | (1 << half);
      committed = mask === 3;
      this.#partial[index] = committed ? 0 : mask;
    }
    if (this.hasListeners("entryWritten")) this.emit("entryWritten", { vgpu: this.name, index, value: this.#guest[index], committed });
    if (committed) this.commitEntry(index);
  }

  /** Shadows the guest's entry `index`: map the new frame, then release the old one. */
  commitEntry(index: number): void {
    const value = this.#guest[index]!;
    const oldState = this.#state[index]!;
    const oldAddr = this.#shadow[index]!;
    if ((value & GTT_PRESENT) === 0n) {
      this.#setShadow(index, ENTRY_EMPTY, this.config.scratchAddress, 0);
    } else {
      const gfn = Number((value >> 12n) & GTT_GFN_MASK);
      try {
        const addr = this.mapGuestPage(gfn);
        this.#setShadow(index, ENTRY_MAPPED, addr, gfn);
        if (this.hasListeners("pageMapped")) {
          const slot = this.cache.findGfn(gfn);
          this.emit("pageMapped", { vgpu: this.name, index, gfn, addr, refcount: this.cache.refOf(slot), cached: this.cache.refOf(slot) > 1 });
        }
      } catch (e) {
        if (!(e instanceof KernelError)) throw e;
        this.#mapFailures++;
        this.#setShadow(index, ENTRY_SCRATCH, this.config.scratchAddress, gfn);
        this.#callHook(() => this.hooks.mapFailed(this.name, index, gfn, e));
        this.emit("mapFailed", { vgpu: this.name, index, gfn, code: e.code, reason: e.reason });
      }
    }
    if (oldState === ENTRY_MAPPED || oldState === ENTRY_STALE) this.putGuestPage(oldAddr);
  }

  /** intel_gvt_dma_map_guest_page: the device address of `gfn`, taking a reference. Throws KernelError. */
  mapGuestPage(gfn: number): bigint {
    this.hooks.beforeMap(this.name, gfn);
    const hit = this.cache.findGfn(gfn);
    if (hit >= 0) {
      const refcount = this.cache.get(hit);
      const addr = this.cache.addrOf(hit);
      this.#callHook(() => this.hooks.afterMap(this.name, gfn, addr, refcount, true));
      return addr;
    }
    if (this.faults.shouldFail("translate")) throw new KernelError("ENOMEM", "mock-injected-translate-failure", { gfn });
    const t = this.services.translate({ start: gfn, npages: 1 }, { prot: PROT_RW, device: this.services.parentDevice });
    this.#translations++;
    const addr = t.dmaAddrs?.[0];
    if (addr === undefined) {
      this.releaseTranslation(t.handle, gfn);
      throw new KernelError("EIO", "mock-no-device-address", { gfn });
    }
    if (this.faults.shouldFail("alloc")) {
      this.releaseTranslation(t.handle, gfn);
      throw new KernelError("ENOMEM", "mock-injected-cache-alloc-failure", { gfn });
    }
    if (this.cache.findAddr(addr) >= 0) {
      this.releaseTranslation(t.handle, gfn);
      throw new KernelError("EEXIST", "mock-device-address-cached", { gfn, addr });
    }
    this.cache.insert(gfn, addr, t.handle);
    this.#callHook(() => this.hooks.afterMap(this.name, gfn, addr, 1, false));
    return addr;
  }

  /** intel_gvt_dma_unmap_guest_page: drops a reference by device address; the last one releases. Unknown addresses are ignored. */
  putGuestPage(addr: bigint): boolean {
    const slot = this.cache.findAddr(addr);
    if (slot < 0) return false;
    if (this.cache.put(slot) === 0) this.#unmapSlot(slot, "rewrite");
    return true;
  }

  /** Releases a translation; an error is counted, never retried, never thrown. */
  releaseTranslation(handle: TranslationHandle, gfn: number): void {
    this.#releases++;
    try {
      this.services.release(handle);
      if (this.faults.shouldFail("release")) throw new KernelError("EINVAL", "mock-injected-release-failure", { gfn });
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
      this.#releaseErrors++;
      this.emit("releaseFailed", { vgpu: this.name, gfn, code: e.code, reason: e.reason });
    }
  }

  /** Releases every cache entry of [firstGfn, firstGfn + npages) whatever its refcount; returns how many. */
  dropRange(firstGfn: number, npages: number, reason: UnmapReason): number {
    const slots = this.cache.slotsInRange(firstGfn, firstGfn + npages);
    for (const slot of slots) this.#unmapSlot(slot, reason);
    if (slots.length > 0) {
      const end = firstGfn + npages;
      const to = this.config.staleShadows ? ENTRY_STALE : ENTRY_REVOKED;
      for (let i = 0; i < this.#state.length; i++) {
        if (this.#state[i] !== ENTRY_MAPPED || this.#shadowGfn[i]! < firstGfn || this.#shadowGfn[i]! >= end) continue;
        this.#state[i] = to;
        if (to === ENTRY_REVOKED) this.#shadow[i] = this.config.scratchAddress;
      }
    }
    this.emit("rangeInvalidated", { vgpu: this.name, firstGfn, npages, dropped: slots.length });
    return slots.length;
  }

  /** Releases every cache entry (the sweep of reset and close); returns how many. */
  releaseAll(reason: UnmapReason): number {
    const slots = this.cache.slots();
    for (const slot of slots) this.#unmapSlot(slot, reason);
    return slots.length;
  }

  // ---------------------------------------------------------------- introspection

  /** Device addresses the shadow table exposes to the GPU (mapped and stale entries), scratch excluded. */
  deviceVisibleAddresses(): bigint[] {
    const out: bigint[] = [];
    for (let i = 0; i < this.#state.length; i++) if (this.#state[i] === ENTRY_MAPPED || this.#state[i] === ENTRY_STALE) out.push(this.#shadow[i]!);
    return out;
  }

  /** Addresses the vendor owns: the scratch page. */
  vendorOwnedAddresses(): bigint[] {
    return [this.config.scratchAddress];
  }

  /** The guest's view of entry `index`. */
  guestEntry(index: number): bigint {
    return this.#guest[index]!;
  }

  /** The device address the GPU uses for entry `index` (the scratch page unless mapped or stale). */
  shadowEntry(index: number): bigint {
    return this.#shadow[index]!;
  }

  entryState(index: number): number {
    return this.#state[index]!;
  }

  stats(): MockVgpuStats {
    let scratch = 0;
    let stale = 0;
    for (let i = 0; i < this.#state.length; i++) {
      const s = this.#state[i]!;
      if (s === ENTRY_SCRATCH || s === ENTRY_REVOKED) scratch++;
      else if (s === ENTRY_STALE) stale++;
    }
    return {
      cacheEntries: this.cache.count,
      refs: this.cache.refs,
      translations: this.#translations,
      releases: this.#releases,
      mapFailures: this.#mapFailures,
      releaseErrors: this.#releaseErrors,
      hookErrors: this.#hookErrors,
      scratchEntries: scratch,
      staleEntries: stale,
    };
  }

  // ---------------------------------------------------------------- internals

  #unmapSlot(slot: number, reason: UnmapReason): void {
    const gfn = this.cache.gfnOf(slot);
    const addr = this.cache.addrOf(slot);
    this.#callHook(() => this.hooks.beforeUnmap(this.name, gfn, addr, reason));
    const handle = this.cache.remove(slot);
    this.releaseTranslation(handle, gfn);
    this.#callHook(() => this.hooks.afterUnmap(this.name, gfn, addr, reason));
    if (this.hasListeners("pageUnmapped")) this.emit("pageUnmapped", { vgpu: this.name, gfn, addr, reason });
  }

  #setShadow(index: number, state: number, addr: bigint, gfn: number): void {
    this.#state[index] = state;
    this.#shadow[index] = addr;
    this.#shadowGfn[index] = gfn;
  }

  #clearTable(): void {
    this.#guest.fill(0n);
    this.#partial.fill(0);
    this.#shadow.fill(this.config.scratchAddress);
    this.#shadowGfn.fill(0);
    this.#state.fill(ENTRY_EMPTY);
  }

  /** A hook on a step that must complete: its error is counted, the step goes on. */
  #callHook(call: () => void): void {
    try {
      call();
    } catch {
      this.#hookErrors++;
    }
  }

  #requireOpen(): void {
    if (!this.#open) throw new KernelError("ENODEV", "mock-not-open", { vgpu: this.name });
  }
}
