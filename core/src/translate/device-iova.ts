/**
 * Device addresses the core places, for adapters that let the caller choose
 * them (`coreChoosesIova`: the 2024 PV-IOMMU, where Dom0 supplies the DFN of
 * every map_pages). One placement space per physical device, shared by every
 * VM whose vGPUs map for it: it lives in the platform's DeviceAddressSpaces.
 *
 * Model: dma-iommu's placement (iommu_dma_alloc_iova, hypervisors.md 0.7) on
 * core's IovaDomain, granule 4 KiB. The limit is the device's DMA mask clipped
 * to the adapter's aperture, both read once from `capabilities(device)` when
 * the device is first placed for; the domain starts at page max(1, aperture
 * start), so page 0 is never given. A translation of n pages takes
 * roundup_pow_of_two(n) pages below 32 (the rcache size classes) and n pages
 * otherwise, aligned to roundup_pow_of_two(n), searched top-down from the
 * limit. One placement per translation, never one per page. Placing can fail
 * as alloc_iova_mem's allocation does (the host's fault site "kzalloc").
 *
 * Invariants: every placed range lies in [startPfn, limitPfn] and no two
 * overlap (IovaDomain's); each is freed once, by the translation that placed
 * it, after the adapter unmapped it, or at once when the map failed.
 */
import { IovaDomain, IOVA_RANGE_CACHE_MAX_SIZE, roundupPowOfTwo, type IovaRange } from "../dma-api/iova-domain.js";
import type { FaultInjector } from "../host/fault-injector.js";
import { PAGE_SHIFT, PAGE_SIZE } from "../address/address.js";
import { apertureOfMask, type HypervisorCapabilities } from "../hypervisor/hypervisor-adapter.js";

/** Translations shorter than this many pages are rounded up to a power of two (alloc_iova_fast). */
const RCACHE_LIMIT = 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1);

export interface DeviceIovaOptions {
  /** The host's fault injector: placing fails at site "kzalloc" when it says so. */
  readonly faults?: FaultInjector;
}

export class DeviceIova {
  /** The lowest and highest device page a translation may take. */
  readonly startPfn: number;
  readonly limitPfn: number;
  readonly #domain: IovaDomain;

  constructor(caps: Pick<HypervisorCapabilities, "dmaMaskBits" | "iovaAperture">, options: DeviceIovaOptions = {}) {
    const mask = apertureOfMask(caps.dmaMaskBits).last;
    const { start, last } = caps.iovaAperture;
    const top = mask < last ? mask : last;
    this.startPfn = Math.max(1, Number((start + BigInt(PAGE_SIZE - 1)) >> BigInt(PAGE_SHIFT)));
    this.limitPfn = Number((top + 1n) >> BigInt(PAGE_SHIFT)) - 1;
    this.#domain = new IovaDomain(PAGE_SIZE, this.startPfn, { faults: options.faults });
  }

  /** Places an `npages` translation: its first device page, or -1 when no range fits. */
  place(npages: number): number {
    return this.#domain.allocIova(npages < RCACHE_LIMIT ? roundupPowOfTwo(npages) : npages, this.limitPfn, true);
  }

  /** Frees the range placed at `pfn`. */
  free(pfn: number): void {
    this.#domain.freeIova(pfn);
  }

  /** The ranges placed and not freed, lowest first. */
  ranges(): IovaRange[] {
    const out: IovaRange[] = [];
    this.#domain.forEachRange((pfnLo, pfnHi) => out.push({ pfnLo, pfnHi }));
    return out;
  }
}
