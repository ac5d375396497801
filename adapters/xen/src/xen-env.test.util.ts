/**
 * Test environments for the Xen adapter's suites: a host, a Xen with Dom0 and
 * one HVM guest, and the leak check every suite ends with (no frame in use,
 * no page reference, no WARN once every domain is destroyed).
 */
import { createHost, isKernelError, type Host, type KernelError } from "@vgpu-iommu/core";
import { Xen, type Dom0Config, type XenOptions } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import type { PciSbdf } from "./xen-iommu.js";

export interface XenEnv {
  readonly host: Host;
  readonly xen: Xen;
  readonly dom0: XenDomain;
  readonly guest: XenDomain;
}

export interface XenEnvOptions {
  readonly xen?: XenOptions;
  readonly dom0?: Partial<Dom0Config>;
  readonly ramBytes?: bigint;
  readonly guestBytes?: bigint;
  readonly guestSuperpages?: boolean;
  readonly seed?: number;
}

export const MiB = 1n << 20n;
export const GPU: PciSbdf = { seg: 0, bus: 1, devfn: 0 };
export const GPU2: PciSbdf = { seg: 0, bus: 2, devfn: 0 };

export function xenEnv(options: XenEnvOptions = {}): XenEnv {
  const host = createHost({ ramBytes: options.ramBytes ?? 1n << 30n, seed: options.seed ?? 7 });
  const xen = new Xen(host, options.xen);
  const dom0 = xen.createDom0({ kind: "pv", memoryBytes: 64n * MiB, ...options.dom0 });
  const guest = xen.createGuest({ name: "vm1", memoryBytes: options.guestBytes ?? 64n * MiB, superpages: options.guestSuperpages });
  return { host, xen, dom0, guest };
}

/** What leaked once every domain is destroyed: frames, references, WARNs. */
export function leaksAfterShutdown(env: XenEnv): { framesInUse: number; pins: number; warnings: number; crashed: boolean } {
  env.xen.shutdown();
  const phys = env.host.phys;
  return { framesInUse: phys.framesInUse, pins: phys.totalPins, warnings: env.host.kernel.warnings.length, crashed: env.host.kernel.crashed };
}

export const NO_XEN_LEAKS = { framesInUse: 0, pins: 0, warnings: 0, crashed: false };

/** Runs `fn` and returns the KernelError it threw (fails the test if it threw nothing or something else). */
export function caught(fn: () => unknown): KernelError {
  try {
    fn();
  } catch (e) {
    if (isKernelError(e)) return e;
    throw e;
  }
  throw new Error("expected a KernelError, nothing was thrown");
}
