/**
 * The mock GPU vendor: creates mock vGPUs (mock-vgpu.ts) from two types that
 * share a pool of partition slots, the way GVT types share aperture and
 * hidden GM.
 *
 * Model: `slots` partition slots (8 by default); "mock-small" takes 1 and has
 * `tableEntries` GTT entries, "mock-large" takes 2 and has twice as many.
 * `availableInstances(type)` is the free slots divided by what the type takes.
 * A vGPU may share a VM with others (`onePerVm: false`); the mock has no
 * migration and no requester ID of its own, so all its vGPUs share the parent
 * GPU's IOVA space. `hooks` and `failNth` are shared by every vGPU of the
 * vendor, so a test reaches vGPUs a platform created.
 *
 * Invariants: used slots = sum over live vGPUs of their type's slots <= slots;
 * vGPU names are unique among live vGPUs; an open vGPU cannot be destroyed.
 */
import { KernelError, Observable, type VendorCapabilities, type Vgpu, type VgpuServices, type VgpuType, type VgpuVendor } from "@vgpu-iommu/core";
import { AWKWARD_TABLE_OFFSET, DEFAULT_TABLE_OFFSET, makeGeometry } from "./gtt-geometry.js";
import { MockFaults, type MockFaultSite } from "./mock-faults.js";
import { MockGpuHooks } from "./mock-hooks.js";
import type { MockGpuEvents } from "./mock-events.js";
import { MockVgpu } from "./mock-vgpu.js";

export interface MockGpuOptions {
  /** GTT entries of a "mock-small" vGPU (512 by default); "mock-large" has twice as many. */
  readonly tableEntries?: number;
  /** BAR0 offset of the table, a multiple of 4 (0x1000 by default, 0x1ffc with `awkward`). */
  readonly tableOffset?: number;
  /** Table at 0x1ffc: entries 0, 512, 1024... straddle a 4 KiB boundary of BAR0. Implies `fourByteOnly` unless it is given. */
  readonly awkward?: boolean;
  /** Refuse 8-byte table writes (-EINVAL): entries arrive as two 4-byte halves. */
  readonly fourByteOnly?: boolean;
  /** Partition slots shared by all types (8 by default). */
  readonly slots?: number;
  /** The fixed device address of the scratch page. */
  readonly scratchAddress?: bigint;
  /** Leave shadow entries holding dead addresses after dmaUnmap, as GVT does (vendors.md 1.7). */
  readonly staleShadows?: boolean;
}

export const MOCK_SMALL = "mock-small";
export const MOCK_LARGE = "mock-large";
/** The top page of a 46-bit GPU address space (GVT's GTT_HAW), above the DMA masks parents use: no IOVA allocator hands it out. */
export const DEFAULT_SCRATCH_ADDRESS = 0x3fff_ffff_f000n;

const TYPES: readonly VgpuType[] = Object.freeze([
  Object.freeze({ name: MOCK_SMALL, description: "mock GPU, one partition slot", resources: Object.freeze({ slots: 1, tableScale: 1 }) }),
  Object.freeze({ name: MOCK_LARGE, description: "mock GPU, two partition slots, twice the GTT", resources: Object.freeze({ slots: 2, tableScale: 2 }) }),
]);

export class MockGpuVendor extends Observable<MockGpuEvents> implements VgpuVendor {
  readonly capabilities: VendorCapabilities = Object.freeze({ onePerVm: false, migration: false, ownRequesterId: false });
  readonly hooks = new MockGpuHooks();
  readonly faults = new MockFaults();
  readonly slots: number;
  readonly #vgpus = new Map<string, MockVgpu>();
  #usedSlots = 0;

  constructor(readonly options: MockGpuOptions = {}) {
    super();
    this.slots = options.slots ?? 8;
    // Validate the geometry once, at construction.
    makeGeometry(this.#tableOffset(), options.tableEntries ?? 512, this.#fourByteOnly());
  }

  listTypes(): readonly VgpuType[] {
    return TYPES;
  }

  availableInstances(type: string): number {
    return Math.floor((this.slots - this.#usedSlots) / this.#type(type).resources["slots"]!);
  }

  create(type: string, name: string, services: VgpuServices): MockVgpu {
    const t = this.#type(type);
    if (this.#vgpus.has(name)) throw new KernelError("EEXIST", "mock-duplicate-name", { vgpu: name });
    const need = t.resources["slots"]!;
    if (this.#usedSlots + need > this.slots) throw new KernelError("ENOSPC", "mock-no-slots", { type, free: this.slots - this.#usedSlots, need });
    if (this.faults.shouldFail("alloc")) throw new KernelError("ENOMEM", "mock-injected-alloc-failure", { vgpu: name });
    const geometry = makeGeometry(this.#tableOffset(), (this.options.tableEntries ?? 512) * t.resources["tableScale"]!, this.#fourByteOnly());
    const vgpu = new MockVgpu(name, type, services, { geometry, scratchAddress: this.options.scratchAddress ?? DEFAULT_SCRATCH_ADDRESS, staleShadows: this.options.staleShadows ?? false }, this.hooks, this.faults);
    this.#vgpus.set(name, vgpu);
    this.#usedSlots += need;
    this.emit("vgpuCreated", { vgpu: name, type });
    return vgpu;
  }

  destroy(vgpu: Vgpu): void {
    const mine = this.#vgpus.get(vgpu.name);
    if (mine === undefined || mine !== vgpu) throw new KernelError("ENODEV", "mock-unknown-vgpu", { vgpu: vgpu.name });
    if (mine.isOpen) throw new KernelError("EBUSY", "mock-vgpu-open", { vgpu: vgpu.name });
    this.#vgpus.delete(vgpu.name);
    this.#usedSlots -= this.#type(mine.type).resources["slots"]!;
    this.emit("vgpuDestroyed", { vgpu: mine.name, type: mine.type });
  }

  /** Live vGPUs, in creation order. */
  get vgpus(): readonly MockVgpu[] {
    return [...this.#vgpus.values()];
  }

  vgpu(name: string): MockVgpu | undefined {
    return this.#vgpus.get(name);
  }

  get usedSlots(): number {
    return this.#usedSlots;
  }

  /** Fail the n-th fallible step of this vendor or any of its vGPUs (see mock-faults.ts). */
  failNth(n: number, sites?: Iterable<MockFaultSite>): void {
    this.faults.failNth(n, sites);
  }

  disarm(): void {
    this.faults.disarm();
  }

  #type(name: string): VgpuType {
    const t = TYPES.find((x) => x.name === name);
    if (t === undefined) throw new KernelError("EINVAL", "mock-unknown-type", { type: name });
    return t;
  }

  #tableOffset(): number {
    return this.options.tableOffset ?? (this.options.awkward === true ? AWKWARD_TABLE_OFFSET : DEFAULT_TABLE_OFFSET);
  }

  #fourByteOnly(): boolean {
    return this.options.fourByteOnly ?? this.options.awkward === true;
  }
}
