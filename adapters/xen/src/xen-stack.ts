/**
 * A Xen stack in a few lines: a host, Xen on it with Dom0 in one of the three
 * configurations a vGPU integrator meets, the Xen adapter with the parent GPU
 * registered, and its platform. The composition root of tests and of the
 * command line when the stack names Xen.
 *
 * Configurations:
 * - `pv-identity`: PV Dom0, dom0-iommu non-strict, no PV-IOMMU: XenGT's
 *   identity shortcut (dma = MFN << 12, nothing to unmap, no flush);
 * - `pv-xenserver`: PV Dom0 with the XenServer PV-IOMMU: BFN = 248 GiB + MFN,
 *   foreign BFNs mapped on demand 128 ops a hypercall (a flush each) while the
 *   offset region is incomplete (`xenserverSetup` completes it first);
 * - `pvh-2024`: PVH Dom0 with the 2024 PV-IOMMU: the parent GPU in a context of
 *   its own, DFNs the core places top-down below 2^39, map_pages of up to 256
 *   pages with a flush per call.
 * The adapter must end up with the configuration's mechanism; a fallback is
 * refused with EINVAL (reason `xen-config-unavailable`).
 */
import { container as rootContainer, type DependencyContainer } from "tsyringe";
import { KernelError, createHost, type DeviceHandle, type Host, type HostOptions } from "@vgpu-iommu/core";
import { Xen, type PvIommuGeneration, type XenEra } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { XenAdapter, type XenMechanism, type XenMechanismRequest } from "./xen-adapter.js";
import { XenPlatform } from "./xen-platform.js";
import type { PciSbdf } from "./xen-iommu.js";

export type XenStackConfig = "pv-identity" | "pv-xenserver" | "pvh-2024";
export const XEN_STACK_CONFIGS: readonly XenStackConfig[] = ["pv-identity", "pv-xenserver", "pvh-2024"];

export interface XenStackOptions {
  readonly host?: HostOptions;
  /** Which Dom0 and PV-IOMMU; pvh-2024 when omitted. */
  readonly config?: XenStackConfig;
  /** Dom0's RAM; 128 MiB when omitted. */
  readonly dom0MemoryBytes?: bigint;
  /** DMA mask bits of the parent GPU (39 for a typical integrated GPU). */
  readonly dmaMaskBits?: number;
  /** The parent GPU's PCI address, e.g. "0000:00:02.0". */
  readonly parentName?: string;
  /** Dom0's swiotlb pool (PV configurations); 64 MiB when omitted. */
  readonly swiotlbBytes?: number;
  readonly era?: XenEra;
  /** pv-xenserver: run the kthread that builds the foreign BFN region to completion before returning. */
  readonly xenserverSetup?: boolean;
}

export interface XenStack {
  readonly config: XenStackConfig;
  readonly host: Host;
  readonly xen: Xen;
  readonly dom0: XenDomain;
  readonly adapter: XenAdapter;
  readonly parent: DeviceHandle;
  readonly platform: XenPlatform;
  /** DMA mappings made for the parent GPU and not yet unmapped. */
  liveMappings(): number;
}

interface ConfigShape {
  readonly dom0: "pv" | "pvh";
  readonly pvIommu: PvIommuGeneration;
  readonly request: XenMechanismRequest;
  readonly mechanism: XenMechanism;
}

const CONFIGS: Readonly<Record<XenStackConfig, ConfigShape>> = {
  "pv-identity": { dom0: "pv", pvIommu: "none", request: "identity-mfn", mechanism: "identity-mfn" },
  "pv-xenserver": { dom0: "pv", pvIommu: "xenserver", request: "auto", mechanism: "pviommu-xenserver" },
  "pvh-2024": { dom0: "pvh", pvIommu: "2024", request: "auto", mechanism: "pviommu-2024" },
};

const MiB = 1n << 20n;

/** "SSSS:BB:DD.F" as a PCI SBDF. */
export function parsePciAddress(name: string): PciSbdf {
  const m = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/.exec(name);
  if (m === null) throw new KernelError("EINVAL", "bad-pci-address", { name });
  return { seg: parseInt(m[1]!, 16), bus: parseInt(m[2]!, 16), devfn: (parseInt(m[3]!, 16) << 3) | parseInt(m[4]!, 10) };
}

export function createXenStack(options: XenStackOptions = {}, scope: DependencyContainer = rootContainer): XenStack {
  return createXenStackOn(createHost({ ramBytes: 8n << 30n, seed: 1, ...options.host }), options, scope);
}

/** The same on a host the caller composed (a stack's IHost). */
export function createXenStackOn(host: Host, options: XenStackOptions = {}, scope: DependencyContainer = rootContainer): XenStack {
  const config = options.config ?? "pvh-2024";
  const shape = CONFIGS[config];
  if (shape === undefined) throw new KernelError("EINVAL", "xen-config-unknown", { config });
  const xen = new Xen(host, { pvIommu: shape.pvIommu, ...(options.era === undefined ? {} : { era: options.era }) });
  const dom0 = xen.createDom0({ kind: shape.dom0, memoryBytes: options.dom0MemoryBytes ?? 128n * MiB });
  const adapter = new XenAdapter(xen, { mechanism: shape.request, ...(options.swiotlbBytes === undefined ? {} : { swiotlbBytes: options.swiotlbBytes }) });
  if (adapter.mechanism !== shape.mechanism) {
    const fallbackReason = adapter.fallbackReason;
    adapter.dispose();
    throw new KernelError("EINVAL", "xen-config-unavailable", { config, mechanism: adapter.mechanism, fallbackReason });
  }
  if (options.xenserverSetup === true) adapter.xenserver!.runSetup();
  const name = options.parentName ?? "0000:00:02.0";
  const parent = adapter.registerDevice({ name, sbdf: parsePciAddress(name), dmaMaskBits: options.dmaMaskBits ?? 39 });
  const platform = new XenPlatform(host, xen, adapter, parent, scope);
  return { config, host, xen, dom0, adapter, parent, platform, liveMappings: () => adapter.liveMappings(parent) };
}
