/**
 * The simulated host: physical memory, processes, the kernel log, and the VFIO
 * subsystem, composed in one child container per host.
 *
 * Every uapi entry point (open, ioctl, close) returns a non-negative result or
 * a negative errno. No JavaScript exception escapes it: a crashed host answers
 * -EIO, and an unexpected exception inside the model is treated as a kernel
 * oops, crashing the simulated host rather than the process.
 */
import { container as rootContainer, inject, injectable, Lifecycle, type DependencyContainer } from "tsyringe";
import { createToken } from "../di/token.js";
import { KernelLog } from "./kernel-log.js";
import { FaultInjector } from "./fault-injector.js";
import { Accounting } from "./accounting.js";
import { PhysicalMemory } from "./physical-memory.js";
import { Process, type ProcessOptions } from "./process.js";
import { Type1Params } from "../vfio/type1/type1-params.js";
import { VfioSubsystem } from "../vfio/vfio-subsystem.js";
import type { Type1Iommu } from "../vfio/type1/type1-iommu.js";
import { DeviceFile } from "../vfio/vfio-subsystem.js";
import { ERRNO } from "../errors/errno.js";
import { HostCrashedError, isKernelError } from "../errors/kernel-error.js";
import { assertType1Invariants } from "../vfio/type1/type1-invariants.js";

export interface HostOptions {
  /** Host RAM; 64 GiB when omitted. */
  readonly ramBytes?: bigint;
  /** Seed of every random choice (frame placement, fragmentation). */
  readonly seed?: number;
}

export const IHostOptions = createToken<HostOptions>("IHostOptions");

export interface HostStats {
  readonly framesInUse: number;
  readonly pinnedFrames: number;
  readonly warnings: number;
  readonly crashed: boolean;
  readonly containers: number;
  readonly mappings: number;
  readonly externalPins: number;
}

@injectable()
export class Host {
  readonly phys: PhysicalMemory;
  readonly vfio: VfioSubsystem;
  readonly processes: Process[] = [];
  readonly backends: Type1Iommu[] = [];
  #nextPid = 100;

  constructor(
    @inject(IHostOptions) options: HostOptions,
    @inject(KernelLog) readonly kernel: KernelLog,
    @inject(FaultInjector) readonly faults: FaultInjector,
    @inject(Accounting) accounting: Accounting,
    @inject(Type1Params) readonly type1Params: Type1Params,
  ) {
    this.phys = new PhysicalMemory({ ramBytes: options.ramBytes ?? 64n << 30n, seed: options.seed ?? 1 });
    this.vfio = new VfioSubsystem({ log: kernel, faults, accounting, phys: this.phys, params: type1Params }, kernel);
    this.vfio.onBackendCreated((iommu) => this.backends.push(iommu));
  }

  spawn(options: ProcessOptions = {}): Process {
    const p = new Process(this.#nextPid++, this.phys, options);
    this.processes.push(p);
    return p;
  }

  /** open(2): a file descriptor of `current`, or a negative errno. */
  open(current: Process, path: string): number {
    return this.#syscall(() => {
      const file = this.vfio.open(path);
      return typeof file === "number" ? file : current.installFile(file);
    });
  }

  /** ioctl(2). */
  async ioctl(current: Process, fd: number, request: number, arg?: unknown): Promise<number> {
    if (this.kernel.crashed) return -ERRNO.EIO;
    const file = current.files.get(fd);
    if (file === undefined) return -ERRNO.EBADF;
    try {
      return await file.ioctl(request, arg, current);
    } catch (e) {
      return this.#oops(e);
    }
  }

  /** close(2); resolves after the driver's release has run. */
  async close(current: Process, fd: number): Promise<number> {
    if (this.kernel.crashed) return -ERRNO.EIO;
    const file = current.files.get(fd);
    if (file === undefined) return -ERRNO.EBADF;
    current.files.delete(fd);
    try {
      if (file instanceof DeviceFile) await file.close();
      else file.release();
      return 0;
    } catch (e) {
      return this.#oops(e);
    }
  }

  stats(): HostStats {
    let mappings = 0;
    let externalPins = 0;
    for (const b of this.backends) {
      mappings += b.dmas.size;
      for (const dma of b.dmas.values()) externalPins += dma.vpfnCount;
    }
    return {
      framesInUse: this.phys.framesInUse,
      pinnedFrames: this.phys.totalPins,
      warnings: this.kernel.warnings.length,
      crashed: this.kernel.crashed,
      containers: this.vfio.containers.size,
      mappings,
      externalPins,
    };
  }

  /** Checks invariants 1-16 of every live type1 backend; throws an AssertionError-like Error on a violation. */
  assertInvariants(): void {
    const live = this.backends.filter((b) => [...this.vfio.containers].some((c) => c.iommu === b));
    assertType1Invariants(live, this.processes, this.phys);
  }

  #syscall(fn: () => number): number {
    if (this.kernel.crashed) return -ERRNO.EIO;
    try {
      return fn();
    } catch (e) {
      return this.#oops(e);
    }
  }

  #oops(e: unknown): number {
    if (e instanceof HostCrashedError) return -ERRNO.EIO;
    if (isKernelError(e)) return -e.errno;
    try {
      this.kernel.crash({ site: "oops", message: e instanceof Error ? e.message : String(e), details: { stack: e instanceof Error ? e.stack : undefined } });
    } catch {
      // crash() always throws HostCrashedError; the uapi reports it as -EIO.
    }
    return -ERRNO.EIO;
  }
}

/**
 * The composition root of a host: a child container holding this host's
 * services. Pass a parent to override services (a test's fakes, a plugin's).
 */
export function createHost(options: HostOptions = {}, parent: DependencyContainer = rootContainer): Host {
  const c = parent.createChildContainer();
  c.register(IHostOptions, { useValue: options });
  c.register(KernelLog, { useClass: KernelLog }, { lifecycle: Lifecycle.ContainerScoped });
  c.register(FaultInjector, { useClass: FaultInjector }, { lifecycle: Lifecycle.ContainerScoped });
  c.register(Accounting, { useClass: Accounting }, { lifecycle: Lifecycle.ContainerScoped });
  c.register(Type1Params, { useClass: Type1Params }, { lifecycle: Lifecycle.ContainerScoped });
  c.register(Host, { useClass: Host }, { lifecycle: Lifecycle.ContainerScoped });
  return c.resolve(Host);
}
