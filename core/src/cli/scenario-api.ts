/**
 * The scenario API: what a workload scenario is, what it may touch while it
 * runs, and what a plugin contributes so scenarios can drive its devices.
 * Exported to plugins as `@vgpu-iommu/core/scenarios`.
 *
 * Model: a scenario is a named, parameterised list of phases run in order on a
 * composed stack (a host, a hypervisor platform, vendors, VMs and vGPUs). It
 * drives vGPUs only through the vendor-neutral ports (`PlatformVm`, `Vgpu`,
 * `VgpuServices`) and, where a step needs the guest to do something only a
 * vendor's own guest driver knows how to do (write a GTT entry, submit a
 * workload), through a `GuestDriver` the vendor plugin contributes. Where a
 * step needs the hypervisor to do something outside `PlatformVm` (move a
 * memslot, a balloon the guest drives itself), it asks the adapter plugin's
 * `HypervisorDriver`. A scenario that
 * needs an operation nobody contributed is skipped with a line naming the
 * plugin and the operation, never failed.
 *
 * Plugins contribute through the `IScenarioProvider` token: a vendor or
 * adapter plugin adds it to its manifest's `provides` and registers a
 * `ScenarioProvider`; a plugin may also contribute whole scenarios of its own.
 */
import { createToken } from "../di/token.js";
import type { Host } from "../host/host.js";
import type { Capability } from "../host/process.js";
import type { SeededRng } from "../host/rng.js";
import type { PlatformVm, VgpuPlatform, VmSpec } from "../vendor/vgpu-platform.js";
import type { VgpuServices } from "../vendor/vgpu-services.js";
import type { VendorCapabilities, Vgpu, VgpuVendor } from "../vendor/vgpu-vendor.js";

/** The guest side of one vGPU: what the vendor's guest driver does to the device. */
export interface GuestDriver {
  /** Slots the guest can point at its frames (GTT entries, memory-descriptor pages). */
  readonly slots: number;
  /**
   * Points slots [first, first + gfns.length) at guest frames, as the guest
   * driver does (a GGTT write each, or one batch). A failure the vendor hides
   * from the guest (a scratch entry) does not throw; a refused access does.
   */
  map(first: number, gfns: ArrayLike<number>): void;
  /** Clears slots [first, first + n). */
  unmap(first: number, n: number): void;
  /** Writes one entry as two 4-byte halves, low first (GVT's split write). */
  mapHalves?(slot: number, gfn: number): void;
  /** A huge entry: `pageBytes` of 64 KiB, 2 MiB or 1 GiB from `gfn`. */
  mapHuge?(slot: number, gfn: number, pageBytes: number): void;
  /** Programs the display engine to scan out `npages` slots from `first` as a `width` x `height` 32 bpp plane. */
  setPlane?(first: number, npages: number, width: number, height: number): void;
  /**
   * Builds a workload's page tables in the driver's pool (every leaf a 4 KiB
   * entry for the next frame of `leafGfns`) and submits it through the
   * device's doorbell; the vendor copies rings and batches with dmaRw.
   */
  submit?(leafGfns: readonly number[]): WorkloadResult;
  /** A table write the device must ignore: outside this vGPU's partition. */
  writeOutsidePartition?(gfn: number): void;
  /** Device addresses the GPU would use through this vGPU's tables, for the isolation check. */
  visibleAddresses?(): ArrayLike<bigint>;
}

export interface WorkloadResult {
  /** Page-table pages the vendor write-protected. */
  readonly protectedPages: number;
  /** Leaf entries it shadowed (pinned and mapped). */
  readonly shadowedLeaves: number;
  /** The workload ran; false when the vendor failed it (failsafe). */
  readonly completed: boolean;
  /** Bytes of ring, context and batch the vendor copied (never pinned). */
  readonly copiedBytes: number;
}

export type GuestOp = Exclude<keyof GuestDriver, "slots">;

/** Guest frames [firstGfn, firstGfn + npages) of low RAM, the guest driver's own. */
export interface GuestPool {
  readonly firstGfn: number;
  readonly npages: number;
}

/** Every VM's driver pool: 8 MiB to 16 MiB of guest-physical memory. */
export const GUEST_DRIVER_POOL: GuestPool = Object.freeze({ firstGfn: 0x800, npages: 0x800 });

/** The hypervisor side: operations on a VM that `PlatformVm` does not offer. */
export interface HypervisorDriver {
  /** Deletes the memory slot holding `gpa` and recreates it unchanged (an SMRAM or ROM remap); 0 or a negative errno. */
  recreateMemslot?(gpa: bigint): Promise<number>;
  /** Moves the memory slot holding `gpa` by `deltaBytes` (a BAR move); 0 or a negative errno. */
  moveMemslot?(gpa: bigint, deltaBytes: bigint): Promise<number>;
  /**
   * The guest's own balloon driver gives [gpa, gpa + length) back to the
   * hypervisor with no device model in the loop (Xen: XENMEM_decrease_reservation
   * from the guest), so no vGPU gets a dmaUnmap; bytes removed, or a negative errno.
   */
  decreaseReservation?(gpa: bigint, length: bigint): Promise<bigint | number>;
  /** The guest's balloon driver takes [gpa, gpa + length) back (Xen: XENMEM_populate_physmap), as fresh frames; 0 or a negative errno. */
  populatePhysmap?(gpa: bigint, length: bigint): Promise<number>;
}

export type HypervisorOp = keyof HypervisorDriver;

/** What a plugin contributes to scenarios. */
export interface ScenarioProvider {
  /** Whole scenarios of its own; names must not clash with the built-ins or another plugin's. */
  readonly scenarios?: readonly ScenarioDefinition[];
  /** The operations its guest drivers implement (for `vgpu-iommu list`). */
  readonly guestOps?: readonly GuestOp[];
  /**
   * The guest driver of one of its vGPUs (the vGPU its vendor created), or
   * undefined. `pool` is guest RAM reserved for the driver's own pages (page
   * tables, rings, contexts): scenarios never point entries there.
   */
  guestDriver?(vgpu: Vgpu, vm: PlatformVm, pool: GuestPool): GuestDriver | undefined;
  readonly hypervisorOps?: readonly HypervisorOp[];
  hypervisorDriver?(vm: PlatformVm): HypervisorDriver | undefined;
}

export const IScenarioProvider = createToken<ScenarioProvider>("IScenarioProvider");

/** A JSON Schema (draft 2020-12 subset that Ajv accepts) for a scenario's parameters. */
export type ParamsSchema = Readonly<Record<string, unknown>>;

export interface ScenarioDefinition<P = Record<string, unknown>> {
  /** Kebab-case name used in stack files. */
  readonly name: string;
  readonly title: string;
  /** vendors.md section 5 item, for the built-ins. */
  readonly item?: number;
  readonly description: string;
  /** An object schema with a default for every property: the stack file's `scenario.params` are validated and completed with it. */
  readonly params: ParamsSchema;
  /** What it needs; used to skip it with a clear line, and by `vgpu-iommu list`. */
  readonly requires?: ScenarioRequirements;
  /** The phases, in order; state shared between phases lives in the closure. */
  phases(params: P): readonly Phase[];
}

/** A scenario with typed parameters, as the catalog holds it (its parameters were validated against its schema). */
export const defineScenario = <P>(d: ScenarioDefinition<P>): ScenarioDefinition => d as unknown as ScenarioDefinition;

export interface ScenarioRequirements {
  /** Guest operations at least one vGPU's driver must have. */
  readonly guestOps?: readonly GuestOp[];
  readonly hypervisorOps?: readonly HypervisorOp[];
  /** A vendor capability at least one vGPU's vendor must declare true. */
  readonly vendorCapability?: keyof VendorCapabilities;
  /** A VM with balloonable memory. */
  readonly balloon?: boolean;
}

export interface Phase {
  readonly name: string;
  run(ctx: ScenarioContext): void | Promise<void>;
}

/** Thrown by `ctx.skip`: the rest of the scenario does not run, and the run says why. */
export class ScenarioSkipped extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = "ScenarioSkipped";
  }
}

/** A view of what one vGPU holds, from the run's ledger of its services calls. */
export interface PinView {
  /** Guest frames with at least one pin held by this vGPU. */
  readonly livePages: number;
  /** Pin references held (a frame pinned twice counts twice). */
  readonly liveRefs: number;
  /** Pin references held on frames in [firstGfn, firstGfn + npages). */
  refsInRange(firstGfn: number, npages: number): number;
  /** Pages pinned over the run (a pin of n pages counts n). */
  readonly pinnedTotal: number;
  /** Pin and translate calls the services refused. */
  readonly failedPins: number;
  /** dmaUnmap calls, memslot removals and revocations this vGPU was told of. */
  readonly invalidations: number;
  /** Device mappings (translations for a device) still live. */
  readonly mappingsLive: number;
  /** Device addresses of every live device mapping, one per page. */
  liveDeviceAddresses(): bigint[];
}

export interface ScenarioVendor {
  /** The plugin's package name. */
  readonly id: string;
  readonly vendor: VgpuVendor;
  readonly capabilities: VendorCapabilities;
}

export interface ScenarioVm {
  readonly name: string;
  readonly vm: PlatformVm;
  readonly spec: VmSpec;
  /** The hypervisor plugin's driver for this VM, when it contributes one. */
  readonly hypervisor: HypervisorDriver | undefined;
  readonly alive: boolean;
}

export interface ScenarioVgpu {
  readonly name: string;
  readonly type: string;
  readonly vm: ScenarioVm;
  readonly vendor: ScenarioVendor;
  /** The vGPU as the platform created it (calls are recorded). */
  readonly vgpu: Vgpu;
  /** Its services as the vendor sees them (calls are recorded). */
  readonly services: VgpuServices;
  /** The vendor's guest driver for it, when the vendor plugin contributes one. */
  readonly driver: GuestDriver | undefined;
  readonly pins: PinView;
  /** False once removed or its VM shut down. */
  readonly alive: boolean;
}

export interface AddVmOptions {
  readonly name: string;
  readonly ramBytes: bigint;
  readonly memlockBytes?: bigint;
  readonly capabilities?: readonly Capability[];
  readonly backing?: VmSpec["backing"];
}

export interface ScenarioContext {
  readonly host: Host;
  readonly platform: VgpuPlatform;
  /** The hypervisor plugin's package name. */
  readonly hypervisorId: string;
  /** Seeded from the stack file: the only source of randomness a scenario may use. */
  readonly rng: SeededRng;
  readonly vms: readonly ScenarioVm[];
  readonly vgpus: readonly ScenarioVgpu[];
  readonly vendors: readonly ScenarioVendor[];
  /** Live vGPUs whose guest driver has every operation in `ops`; the others get a "not supported by" note. */
  vgpusWith(...ops: GuestOp[]): ScenarioVgpu[];
  addVm(options: AddVmOptions): Promise<ScenarioVm>;
  addVgpu(vm: ScenarioVm, vendor: ScenarioVendor, type: string, name: string): Promise<ScenarioVgpu>;
  removeVgpu(vgpu: ScenarioVgpu): Promise<void>;
  shutdownVm(vm: ScenarioVm): Promise<void>;
  /**
   * Runs `action` inside the next dmaUnmap the vGPU receives (type1 has dropped
   * its lock there): before the vendor sees it, or right after it returned.
   */
  interleaveDmaUnmap(vgpu: ScenarioVgpu, when: "before" | "after", action: () => void): void;
  /** Makes the vGPU's vendor ignore dmaUnmap (a buggy vendor), for fault-injection scenarios. */
  setIgnoreDmaUnmap(vgpu: ScenarioVgpu, ignore: boolean): void;
  /** A line in the run's notes (and an instant in the trace). */
  note(text: string): void;
  /** A scenario expectation; a false one is recorded as a violation with `what`. */
  check(ok: boolean, what: string): boolean;
  /** Ends the scenario here: the run reports it skipped with `reason`. */
  skip(reason: string): never;
  /** Records the device address space now, as "the end" the report shows; the last call wins. */
  snapshotIova(label: string): void;
  /** Yields to the event loop between chunks of a long phase (lets interleavings and the progress bar run). */
  tick(): Promise<void>;
}

/** "not supported by <id>" lines use this, so every skip reads alike. */
export const notSupported = (id: string, what: string): string => `not supported by ${id}: ${what}`;
