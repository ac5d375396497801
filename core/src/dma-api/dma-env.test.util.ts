/**
 * Test environment for the DMA-API suites: a host, an IOMMU domain or a
 * swiotlb pool as the mode needs, one device, and the leak check every test
 * ends with. Not part of the package (the name matches `*.test.*`).
 */
import { expect } from "chai";
import { createHost, type Host } from "../host/host.js";
import { IommuDomain } from "../iommu/iommu-domain.js";
import { VTD, X86_MSI } from "../testing/fixture.js";
import { DmaIommuDomain, type DmaIommuOptions } from "./dma-iommu.js";
import { IntelIommu2016Domain, type IntelIommu2016Options } from "./intel-iommu-2016.js";
import { SwiotlbPool, type SwiotlbOptions } from "./swiotlb.js";
import { DmaDevice, type DmaDeviceOptions, type DmaMode } from "./dma-device.js";
import { BLOCK_PAGES } from "../host/physical-memory.js";

export interface DmaEnvOptions {
  readonly mode: DmaMode;
  readonly device?: Partial<DmaDeviceOptions>;
  readonly iommu?: Partial<DmaIommuOptions & IntelIommu2016Options>;
  /** A swiotlb pool of this many bytes (direct mode). */
  readonly swiotlb?: SwiotlbOptions | false;
  readonly ramBytes?: bigint;
}

export interface DmaLeaks {
  readonly liveMappings: number;
  readonly iommuMappedPages: number;
  readonly swiotlbSlots: number;
  readonly warnings: number;
  readonly framesInUse: number;
}

export const DMA_NO_LEAKS: DmaLeaks = { liveMappings: 0, iommuMappedPages: 0, swiotlbSlots: 0, warnings: 0, framesInUse: 0 };

export class DmaEnv {
  readonly host: Host;
  readonly iommu: DmaIommuDomain | IntelIommu2016Domain | undefined;
  readonly pool: SwiotlbPool | undefined;
  readonly dev: DmaDevice;
  /** WARNs the test expects; teardown reports the others. */
  expectedWarnings = 0;
  readonly #baseFrames: number;
  readonly #taken: number[] = [];

  constructor(options: DmaEnvOptions) {
    this.host = createHost({ ramBytes: options.ramBytes ?? 8n << 30n, seed: 7 });
    this.#baseFrames = this.host.phys.framesInUse;
    const log = this.host.kernel;
    const faults = this.host.faults;
    if (options.mode === "dma-iommu") {
      this.iommu = new DmaIommuDomain({ domain: new IommuDomain(VTD, faults), log, faults, reservedRegions: [X86_MSI], ...options.iommu });
    } else if (options.mode === "intel-2016") {
      this.iommu = new IntelIommu2016Domain({ domain: new IommuDomain(VTD, faults), log, faults, reservedRegions: [X86_MSI], ...options.iommu });
    }
    this.pool = options.swiotlb === undefined || options.swiotlb === false ? undefined : new SwiotlbPool(this.host, options.swiotlb);
    this.dev = new DmaDevice(this.host, { name: "0000:01:00.0", mode: options.mode, iommu: this.iommu, swiotlb: this.pool, ...options.device });
  }

  /** A frame of host RAM (held by the test until teardown), optionally at or above `minPfn`. */
  frame(minPfn = 0): number {
    for (;;) {
      const pfn = this.host.phys.allocFrame();
      if (pfn === 0) throw new Error("host memory exhausted");
      this.#taken.push(pfn);
      if (pfn >= minPfn) return pfn;
    }
  }

  /** A 2 MiB physically contiguous run (held until teardown), optionally at or above `minPfn`. */
  block(minPfn = 0): number {
    for (;;) {
      const base = this.host.phys.allocBlock();
      if (base === 0) throw new Error("no free 2 MiB block");
      for (let k = 0; k < BLOCK_PAGES; k++) this.#taken.push(base + k);
      if (base >= minPfn) return base;
    }
  }

  /** Invariants of everything the environment holds. */
  check(): void {
    if (this.iommu !== undefined) this.iommu.iovad.assertInvariants();
    this.pool?.assertInvariants();
    expect(this.host.kernel.crashed, "host crashed").to.equal(false);
  }

  /** Flushes lazily freed IOVAs, checks invariants, returns what is left over. */
  teardown(): DmaLeaks {
    this.check();
    this.iommu?.flushTimeout();
    const leaks: DmaLeaks = {
      liveMappings: this.dev.liveMappings,
      iommuMappedPages: this.iommu?.domain.mappedPages ?? 0,
      swiotlbSlots: this.pool?.used ?? 0,
      warnings: this.host.kernel.warnings.length - this.expectedWarnings,
      framesInUse: 0,
    };
    if (leaks.swiotlbSlots === 0) this.pool?.destroy();
    this.iommu?.destroy();
    for (const pfn of this.#taken) this.host.phys.release(pfn);
    this.#taken.length = 0;
    return { ...leaks, framesInUse: this.host.phys.framesInUse - this.#baseFrames };
  }
}

/** Fills `n` bytes with a recognisable pattern seeded by `seed`. */
export function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed + i * 7) & 0xff;
  return b;
}
