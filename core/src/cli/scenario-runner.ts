/**
 * Runs a scenario on a composed stack and records what happened.
 *
 * Order: subscribe to the core's events (kernel WARN and BUG, each type1
 * container's mappings, invalidations and charges); boot the stack's VMs and
 * add its vGPUs through the platform, each vGPU's vendor instrumented; check
 * the scenario's requirements (unmet: skipped, with the plugin and operation
 * named); run its phases, checking the host's invariants after each; take the
 * IOVA snapshot if the scenario took none; shut down every VM still running;
 * then check that nothing leaked: no host frame pinned, no locked_vm charged,
 * no pin or mapping held by any vGPU.
 *
 * A BUG stops the scenario (the simulated host is dead and answers nothing);
 * a phase that throws stops it and is reported as an error. Nothing here
 * reads the wall clock: the progress callback gets phase counts only.
 */
import { HostCrashedError, isKernelError } from "../errors/kernel-error.js";
import { SeededRng } from "../host/rng.js";
import { RLIM_INFINITY } from "../host/process.js";
import type { WarnRecord } from "../host/kernel-log.js";
import type { Type1Iommu } from "../vfio/type1/type1-iommu.js";
import type { PlatformVm, VmSpec } from "../vendor/vgpu-platform.js";
import { InstrumentedVendor, type InstrumentedVgpu } from "./instrumented-vendor.js";
import { RunRecorder } from "./run-recorder.js";
import { GUEST_DRIVER_POOL, ScenarioSkipped, notSupported, type AddVmOptions, type GuestOp, type ScenarioContext, type ScenarioDefinition, type ScenarioVendor, type ScenarioVgpu, type ScenarioVm } from "./scenario-api.js";
import type { Composition } from "./stack-composer.js";
import type { Stack } from "./stack-loader.js";

export interface RunProgress {
  readonly done: number;
  readonly total: number;
  readonly phase: string;
}

export interface RunOptions {
  readonly onProgress?: (p: RunProgress) => void | Promise<void>;
}

export interface RunOutcome {
  readonly recorder: RunRecorder;
  readonly skipped: string | undefined;
  readonly crashed: boolean;
  readonly vms: readonly { readonly name: string; readonly process: string; readonly limitPages: number | undefined }[];
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;
const describe = (e: unknown): string => (isKernelError(e) ? `${e.code} (${e.reason})` : e instanceof Error ? e.message : String(e));

/** Seed of a scenario's own generator: the stack's seed mixed with the scenario's name. */
function scenarioSeed(seed: number, name: string): number {
  let h = seed | 0;
  for (let i = 0; i < name.length; i++) h = (Math.imul(h, 31) + name.charCodeAt(i)) | 0;
  return h >>> 0;
}

class VmHandle implements ScenarioVm {
  alive = true;
  constructor(
    readonly name: string,
    readonly vm: PlatformVm,
    readonly spec: VmSpec,
    readonly hypervisor: ScenarioVm["hypervisor"],
  ) {}
}

class VgpuHandle implements ScenarioVgpu {
  alive = true;
  constructor(
    readonly vm: VmHandle,
    readonly vendor: ScenarioVendor,
    readonly instrumented: InstrumentedVgpu,
    readonly driver: ScenarioVgpu["driver"],
  ) {}
  get name(): string {
    return this.instrumented.name;
  }
  get type(): string {
    return this.instrumented.type;
  }
  get vgpu(): InstrumentedVgpu {
    return this.instrumented;
  }
  get services(): ScenarioVgpu["services"] {
    return this.instrumented.services;
  }
  get pins(): ScenarioVgpu["pins"] {
    return this.instrumented.ledger;
  }
}

export async function runScenario(stack: Stack, composition: Composition, definition: ScenarioDefinition, params: Record<string, unknown>, options: RunOptions = {}): Promise<RunOutcome> {
  const { host, platform } = composition;
  const rec = new RunRecorder();
  rec.setHostPins(() => host.phys.totalPins);
  const vmHandles: VmHandle[] = [];
  const vgpuHandles: VgpuHandle[] = [];
  const vmLimits: { name: string; process: string; limitPages: number | undefined }[] = [];

  // ---------------------------------------------------------------- the core's events
  const rowOf = (details: Readonly<Record<string, unknown>>): string => {
    for (const key of ["vgpu", "device", "vdev", "mdev"]) {
      const v = details[key];
      if (typeof v === "string" && vgpuHandles.some((g) => g.name === v)) return v;
    }
    return "host";
  };
  host.kernel.on("warned", (w: WarnRecord) => {
    rec.warn(rowOf(w.details), `WARN at ${w.site}: ${w.message}`);
    rec.instant("kernel", `WARN ${w.site}`, "warn", { message: w.message });
  });
  host.kernel.on("crashed", (bug) => {
    rec.bug(rowOf(bug.details), `BUG at ${bug.site}: ${bug.message}`);
    rec.instant("kernel", `BUG ${bug.site}`, "bug", { message: bug.message });
  });
  let containers = 0;
  host.vfio.onBackendCreated((iommu: Type1Iommu) => {
    const track = `type1 container ${++containers}`;
    const c = containers;
    iommu.on("dmaMapped", (e) => rec.beginAsync(`${track} MAP_DMA`, "MAP_DMA", "type1", `c${c}:${hex(e.iova)}`, { iova: hex(e.iova), length: Number(e.length), pinned: e.pinned }));
    iommu.on("dmaUnmapped", (e) => rec.endAsync(`${track} MAP_DMA`, "MAP_DMA", "type1", `c${c}:${hex(e.iova)}`, { unpinned: e.unpinned }));
    iommu.on("invalidationSent", (e) => rec.instant(track, "invalidation sent", "invalidation", { iova: hex(e.iova), length: Number(e.length), retry: e.retry, devices: e.devices }));
    iommu.on("lockedVmCharged", () => rec.sample());
  });

  // ---------------------------------------------------------------- vendors, instrumented
  const vendors: { handle: ScenarioVendor; wrapped: InstrumentedVendor; provider: Composition["vendors"][number]["provider"] }[] = composition.vendors.map((v) => {
    const wrapped = new InstrumentedVendor(v.vendor, v.id, rec, (vm) => vmHandles.find((h) => h.name === vm)?.vm.translate);
    return { handle: { id: v.id, vendor: wrapped, capabilities: v.vendor.capabilities }, wrapped, provider: v.provider };
  });

  const addVm = async (o: AddVmOptions & { process?: string; balloon?: VmSpec["balloon"] }): Promise<VmHandle> => {
    const caps = o.capabilities ?? [];
    const spec: VmSpec = {
      name: o.name,
      ramBytes: o.ramBytes,
      ...(o.backing === undefined ? {} : { backing: o.backing }),
      ...(o.memlockBytes === undefined ? {} : { memlockBytes: o.memlockBytes }),
      capIpcLock: caps.includes("CAP_IPC_LOCK"),
      ...(o.balloon === undefined ? {} : { balloon: o.balloon }),
    };
    const vm = await platform.createVm(spec);
    for (const cap of caps) vm.vmm.setCapability(cap, true);
    const handle = new VmHandle(o.name, vm, spec, composition.hypervisorProvider?.hypervisorDriver?.(vm));
    vmHandles.push(handle);
    const limit = (): number | undefined => (vm.vmm.rlimitMemlock === RLIM_INFINITY ? undefined : vm.vmm.memlockLimitPages);
    vmLimits.push({ name: o.name, process: o.process ?? vm.vmm.comm, limitPages: limit() });
    rec.addVm({ name: o.name, process: o.process ?? vm.vmm.comm, lockedVm: () => vm.vmm.mm.lockedVm, limit, capIpcLock: () => vm.vmm.capable("CAP_IPC_LOCK"), peakLockedVm: 0, lastLockedVm: 0 });
    rec.instant(`vm ${o.name}`, "booted", "vm", { ram: Number(o.ramBytes), memlock: o.memlockBytes === undefined ? "unlimited" : Number(o.memlockBytes) });
    rec.sample();
    return handle;
  };

  const addVgpu = async (vm: ScenarioVm, vendor: ScenarioVendor, type: string, name: string): Promise<VgpuHandle> => {
    const v = vendors.find((x) => x.handle === vendor || x.handle.id === vendor.id);
    if (v === undefined) throw new RangeError(`no vendor ${vendor.id} in the stack`);
    const vmh = vm as VmHandle;
    const vgpu = (await vmh.vm.addVgpu(v.wrapped, type, name)) as InstrumentedVgpu;
    const driver = v.provider?.guestDriver?.(vgpu.inner, vmh.vm, GUEST_DRIVER_POOL);
    const handle = new VgpuHandle(vmh, v.handle, vgpu, driver);
    vgpuHandles.push(handle);
    rec.sample();
    return handle;
  };

  const noted = new Set<string>();
  const ctx: ScenarioContext = {
    host,
    platform,
    hypervisorId: composition.hypervisorId,
    rng: new SeededRng(scenarioSeed(stack.seed, definition.name)),
    vms: vmHandles,
    vgpus: vgpuHandles,
    vendors: vendors.map((v) => v.handle),
    vgpusWith(...ops: GuestOp[]) {
      return vgpuHandles.filter((g) => {
        if (!g.alive) return false;
        const missing = ops.filter((op) => g.driver?.[op] === undefined);
        if (missing.length === 0) return true;
        const line = `${g.name}: ${notSupported(g.vendor.id, g.driver === undefined ? "it contributes no guest driver" : `its guest driver has no ${missing.join(", ")}`)}`;
        if (!noted.has(line)) {
          noted.add(line);
          rec.note(line);
        }
        return false;
      });
    },
    addVm: (o) => addVm(o),
    addVgpu: (vm, vendor, type, name) => addVgpu(vm, vendor, type, name),
    async removeVgpu(g) {
      const h = g as VgpuHandle;
      await h.vm.vm.removeVgpu(h.instrumented);
      h.alive = false;
      rec.sample();
    },
    async shutdownVm(vm) {
      const h = vm as VmHandle;
      if (!h.alive) return;
      await h.vm.shutdown();
      h.alive = false;
      for (const g of vgpuHandles) if (g.vm === h) g.alive = false;
      rec.instant(`vm ${h.name}`, "shut down", "vm");
      rec.sample();
    },
    interleaveDmaUnmap(g, when, action) {
      (g as VgpuHandle).instrumented.interleave(when, action);
    },
    setIgnoreDmaUnmap(g, ignore) {
      (g as VgpuHandle).instrumented.ignoreDmaUnmap = ignore;
      rec.note(`${g.name}: the vendor now ${ignore ? "ignores" : "honours"} dmaUnmap`);
    },
    note: (text) => rec.note(text),
    check(ok, what) {
      if (!ok) rec.violation("host", `scenario check failed: ${what}`);
      return ok;
    },
    skip(reason): never {
      throw new ScenarioSkipped(reason);
    },
    snapshotIova(label) {
      rec.snapshot = {
        label,
        at: rec.tick(),
        segments: rec.ledgers.flatMap((l) => l.liveSegments().map((s) => ({ device: s.device, owner: l.vgpu, addr: s.addr, length: s.length }))),
      };
    },
    tick: () => new Promise<void>((resolve) => setImmediate(resolve)),
  };

  // ---------------------------------------------------------------- boot
  const phases = definition.phases(params);
  const total = phases.length + 2;
  let done = 0;
  const progress = async (phase: string): Promise<void> => {
    done++;
    await options.onProgress?.({ done, total, phase });
  };
  let skipped: string | undefined;
  let stopped = false;
  const bootStart = rec.tick();
  try {
    for (const vm of stack.vms) {
      await addVm({
        name: vm.name,
        ramBytes: vm.ramBytes,
        backing: vm.backing,
        capabilities: vm.process.capabilities,
        process: vm.process.name,
        ...(vm.process.memlockBytes === undefined ? {} : { memlockBytes: vm.process.memlockBytes }),
        ...(vm.balloon === undefined ? {} : { balloon: vm.balloon }),
      });
    }
    for (const g of stack.vgpus) {
      const vendor = vendors.find((v) => v.handle.id === g.vendor)!.handle;
      await addVgpu(vmHandles.find((h) => h.name === g.vm)!, vendor, g.type, g.name);
    }
    rec.complete("scenario", "boot", "phase", bootStart);
    rec.phases.push({ name: "boot", start: bootStart, end: rec.now, status: "ok" });
  } catch (e) {
    stopped = true;
    const crashed = e instanceof HostCrashedError || host.kernel.crashed;
    rec.error("host", `boot failed: ${describe(e)}`);
    rec.complete("scenario", "boot", "phase", bootStart, { error: describe(e) });
    rec.phases.push({ name: "boot", start: bootStart, end: rec.now, status: crashed ? "crashed" : "failed", detail: describe(e) });
  }
  await progress("boot");

  // ---------------------------------------------------------------- requirements
  if (!stopped) {
    const unmet = unmetRequirement(definition, vgpuHandles, vmHandles, composition);
    if (unmet !== undefined) {
      skipped = unmet;
      stopped = true;
      rec.note(`skipped ${definition.name}: ${unmet}`);
    }
  }

  // ---------------------------------------------------------------- phases
  for (const phase of phases) {
    if (stopped) break;
    const start = rec.tick();
    let status: "ok" | "skipped" | "failed" | "crashed" = "ok";
    let detail: string | undefined;
    try {
      await phase.run(ctx);
    } catch (e) {
      if (e instanceof ScenarioSkipped) {
        status = "skipped";
        detail = e.reason;
        skipped = e.reason;
        rec.note(`skipped ${definition.name} at ${phase.name}: ${e.reason}`);
      } else if (e instanceof HostCrashedError || host.kernel.crashed) {
        status = "crashed";
        detail = describe(e);
      } else {
        status = "failed";
        detail = describe(e);
        rec.error("host", `phase ${phase.name} failed: ${detail}`);
      }
      stopped = true;
    }
    if (host.kernel.crashed) {
      status = "crashed";
      stopped = true;
    }
    rec.sample();
    if (!host.kernel.crashed) checkInvariants(rec, host, `after ${phase.name}`);
    rec.complete("scenario", phase.name, "phase", start, detail === undefined ? undefined : { [status]: detail });
    rec.phases.push({ name: phase.name, start, end: rec.now, status, ...(detail === undefined ? {} : { detail }) });
    await progress(phase.name);
  }
  if (rec.snapshot === undefined) ctx.snapshotIova("end of the workload");

  // ---------------------------------------------------------------- teardown and leak checks
  const crashed = host.kernel.crashed;
  if (!crashed) {
    const start = rec.tick();
    try {
      for (const vm of vmHandles) await ctx.shutdownVm(vm);
      rec.complete("scenario", "shutdown", "phase", start);
      rec.phases.push({ name: "teardown", start, end: rec.now, status: "ok" });
      leakChecks(rec, host);
      checkInvariants(rec, host, "after teardown");
    } catch (e) {
      rec.error("host", `teardown failed: ${describe(e)}`);
      rec.complete("scenario", "shutdown", "phase", start, { error: describe(e) });
      rec.phases.push({ name: "teardown", start, end: rec.now, status: host.kernel.crashed ? "crashed" : "failed", detail: describe(e) });
    }
  }
  if (host.backends.length === 0) rec.note(`no VFIO type1 container on ${composition.hypervisorId}: the type1 invariants do not apply, the leak checks do`);
  rec.sample();
  await progress("teardown");
  return { recorder: rec, skipped, crashed: host.kernel.crashed, vms: vmLimits };
}

/**
 * The type1 invariants hold where pins come from type1 (a platform that made
 * VFIO containers, such as KVM's); elsewhere (Xen's P2M references) they do
 * not apply. locked_vm within RLIMIT_MEMLOCK holds on every platform.
 */
function checkInvariants(rec: RunRecorder, host: Composition["host"], when: string): void {
  if (host.backends.length > 0) {
    try {
      host.assertInvariants();
    } catch (e) {
      rec.violation("host", `type1 invariant ${when}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  for (const vm of rec.vms) {
    const limit = vm.limit();
    const locked = vm.lockedVm();
    if (limit !== undefined && locked > limit && !vm.capIpcLock()) rec.violation(vm.name, `locked_vm of ${vm.name} is ${locked} pages, above RLIMIT_MEMLOCK of ${limit} ${when}`);
  }
}

function leakChecks(rec: RunRecorder, host: Composition["host"]): void {
  if (host.phys.totalPins !== 0) rec.violation("host", `${host.phys.totalPins} host frames still pinned after every VM shut down`);
  for (const vm of rec.vms) {
    const locked = vm.lockedVm();
    if (locked !== 0) rec.violation(vm.name, `locked_vm of ${vm.name} is still ${locked} pages after shutdown`);
  }
  for (const l of rec.ledgers) {
    if (l.mappingsLive !== 0) rec.violation(l.vgpu, `${l.vgpu} still holds ${l.mappingsLive} device mappings after shutdown`);
  }
}

function unmetRequirement(definition: ScenarioDefinition, vgpus: readonly VgpuHandle[], vms: readonly VmHandle[], composition: Composition): string | undefined {
  const req = definition.requires;
  if (req === undefined) return undefined;
  if (req.balloon === true && !vms.some((v) => v.spec.balloon !== undefined)) return "no VM in the stack has balloon memory: give one a balloon (vms[].balloon)";
  const ops = req.guestOps ?? [];
  if (ops.length > 0 && !vgpus.some((g) => ops.every((op) => g.driver?.[op] !== undefined))) {
    if (vgpus.length === 0) return "the stack has no vGPU";
    const lines = new Set<string>();
    for (const g of vgpus) {
      const missing = ops.filter((op) => g.driver?.[op] === undefined);
      lines.add(notSupported(g.vendor.id, g.driver === undefined ? "it contributes no guest driver" : `its guest driver has no ${missing.join(", ")}`));
    }
    return [...lines].join("; ");
  }
  const cap = req.vendorCapability;
  if (cap !== undefined && !composition.vendors.some((v) => v.vendor.capabilities[cap])) {
    return composition.vendors.map((v) => notSupported(v.id, `it does not declare ${cap}`)).join("; ");
  }
  const hops = req.hypervisorOps ?? [];
  if (hops.length > 0 && !vms.some((v) => hops.every((op) => v.hypervisor?.[op] !== undefined))) {
    return notSupported(composition.hypervisorId, `no hypervisor operation ${hops.join(", ")}`);
  }
  return undefined;
}
