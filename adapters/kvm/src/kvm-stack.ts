/**
 * A KVM stack in a few lines: a host, its parent GPU behind the host DMA API
 * in the chosen mode, the KVM adapter and its platform. The composition root
 * of tests and of the command line when the stack names KVM.
 */
import { container as rootContainer, type DependencyContainer } from "tsyringe";
import {
  DmaDevice,
  DmaIommuDomain,
  IntelIommu2016Domain,
  IommuDomain,
  SwiotlbPool,
  createHost,
  dmaBitMask,
  type DmaMode,
  type Host,
  type HostOptions,
  type IommuHardware,
} from "@vgpu-iommu/core";
import { DmaApiParent } from "./dma-api-parent.js";
import { KvmAdapter } from "./kvm-adapter.js";
import { KvmPlatform } from "./kvm-platform.js";
import type { KvmGeneration } from "./kvm-vm.js";

export interface KvmStackOptions {
  readonly host?: HostOptions;
  /** How the parent GPU's DMA API works: dma-iommu (merging), the 2016 intel-iommu, or direct. */
  readonly dmaMode?: DmaMode;
  /** Strict IOTLB invalidation instead of the flush queue. */
  readonly strict?: boolean;
  readonly generation?: KvmGeneration;
  /** DMA mask bits of the parent GPU (39 for a typical integrated GPU). */
  readonly dmaMaskBits?: number;
  readonly maxSegmentSize?: number;
  readonly parentName?: string;
}

export interface KvmStack {
  readonly host: Host;
  readonly parent: DmaDevice;
  readonly adapter: KvmAdapter;
  readonly platform: KvmPlatform;
}

/** The host's IOMMU for the parent GPU's default DMA domain: VT-d-like, 48-bit. */
const HOST_IOMMU: IommuHardware = {
  driver: "intel-iommu",
  aperture: { start: 0n, last: (1n << 48n) - 1n },
  pgsizeBitmap: 0x1000n | 0x200000n | 0x40000000n,
  msiIsolation: true,
  enforceCacheCoherency: true,
};

export function createKvmStack(options: KvmStackOptions = {}, scope: DependencyContainer = rootContainer): KvmStack {
  return createKvmStackOn(createHost({ ramBytes: 8n << 30n, seed: 1, ...options.host }), options, scope);
}

/** The same on a host the caller composed (a stack's IHost). */
export function createKvmStackOn(host: Host, options: KvmStackOptions = {}, scope: DependencyContainer = rootContainer): KvmStack {
  const mode = options.dmaMode ?? "dma-iommu";
  const strict = options.strict ?? false;
  const domain = new IommuDomain(HOST_IOMMU, host.faults);
  const iommu =
    mode === "dma-iommu"
      ? new DmaIommuDomain({ domain, log: host.kernel, faults: host.faults, strict })
      : mode === "intel-2016"
        ? new IntelIommu2016Domain({ domain, log: host.kernel, faults: host.faults, strict })
        : undefined;
  const parent = new DmaDevice(host, {
    name: options.parentName ?? "0000:00:02.0",
    mode,
    ...(iommu === undefined ? { swiotlb: new SwiotlbPool(host) } : { iommu }),
    dmaMask: dmaBitMask(options.dmaMaskBits ?? 39),
    coherentDmaMask: dmaBitMask(options.dmaMaskBits ?? 39),
    ...(options.maxSegmentSize === undefined ? {} : { maxSegmentSize: options.maxSegmentSize }),
  });
  const adapter = new KvmAdapter({ generation: options.generation ?? "current", parents: [new DmaApiParent(parent)] });
  return { host, parent, adapter, platform: new KvmPlatform(host, adapter, scope) };
}
