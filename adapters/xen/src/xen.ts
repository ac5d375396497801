/**
 * The hypervisor: domains, machine frames, grant tables, the IOMMU, and the
 * PV-IOMMU interface its build offers, with the counters an integrator reads.
 *
 * Model: one Xen per simulated host (`createHost`), whose PhysicalMemory
 * supplies every domain's frames. The hardware domain (Dom0, domid 0) is PV
 * or PVH; its default IOMMU context follows `dom0-iommu=`. The PV-IOMMU ABI is
 * a build choice: none, the XenServer generation (an op array with a status
 * per op, preemptible) or the 2024 generation (contexts, page ranges).
 * `preemptEvery` makes Xen find a pending preemption every K ops of a
 * preemptible hypercall, which then continues itself.
 *
 * Invariants: domid 0 is the hardware domain and the only one created by
 * createDom0; every domain has one grant table; destroyDomain releases the
 * domain's frames and IOMMU contexts; `hypercalls` counts every entry,
 * continuations included.
 */
import { type Host } from "@vgpu-iommu/core";
import { MachineFrames } from "./machine-frames.js";
import { XenDomain, type DomainKind } from "./xen-domain.js";
import { XenIommu, type PciSbdf } from "./xen-iommu.js";
import { resolveDom0Iommu, type Dom0IommuMode, type Dom0IommuOptions } from "./dom0-iommu.js";
import type { Backdrop, ReservedRegion } from "./iommu-context.js";
import { DEFAULT_GNTTAB_MAX_FRAMES, DEFAULT_GNTTAB_MAX_MAPTRACK_FRAMES, GrantTable } from "./grant-table.js";
import { XenServerPvIommu } from "./pv-iommu-xenserver.js";
import { PvIommu2024 } from "./pv-iommu-2024.js";

export type PvIommuGeneration = "none" | "xenserver" | "2024";
/** Behaviour that changed over time: "2016" or "current". */
export type XenEra = "2016" | "current";
export type CpuVendor = "intel" | "amd";

export interface XenOptions {
  readonly cpuVendor?: CpuVendor;
  /** iommu= on (default) or off. */
  readonly iommu?: boolean;
  readonly dom0Iommu?: Dom0IommuOptions;
  readonly pvIommu?: PvIommuGeneration;
  /** xen_pviommu_foreign_offset= in GiB (XenServer; default 248). */
  readonly foreignOffsetGiB?: number;
  /** A preemption is pending every K ops of a preemptible hypercall; 0 = never. */
  readonly preemptEvery?: number;
  readonly gnttabMaxFrames?: number;
  readonly gnttabMaxMaptrackFrames?: number;
  readonly era?: XenEra;
  /** The page limit a 2024 map_pages/unmap_pages enforces (PVIOMMU_MAX_PAGES, 256). */
  readonly pvIommuMaxPages?: number;
  /** Frames one XEN_DOMCTL_memory_mapping may take before -E2BIG (64). */
  readonly memoryMappingMaxFrames?: number;
  /** IOMMU contexts a domain may allocate besides context 0 (2024 PV-IOMMU). */
  readonly iommuContexts?: number;
  /** Reserved regions (RMRRs) identity-mapped in Dom0's context when map-reserved is on. */
  readonly reservedRegions?: readonly ReservedRegion[];
}

export interface ResolvedXenOptions {
  readonly cpuVendor: CpuVendor;
  readonly iommu: boolean;
  readonly pvIommu: PvIommuGeneration;
  readonly foreignOffsetGiB: number;
  readonly preemptEvery: number;
  readonly gnttabMaxFrames: number;
  readonly gnttabMaxMaptrackFrames: number;
  readonly era: XenEra;
  readonly pvIommuMaxPages: number;
  readonly memoryMappingMaxFrames: number;
}

export interface Dom0Config {
  readonly kind: "pv" | "pvh";
  readonly memoryBytes: bigint;
  /** Pseudo-physical room left unpopulated for grant and foreign maps (PV: balloon pages; PVH: unpopulated-alloc). Default 256 MiB. */
  readonly balloonBytes?: bigint;
  /** Give Dom0 2 MiB machine-contiguous blocks instead of scattered frames. */
  readonly superpages?: boolean;
}

export interface GuestConfig {
  readonly name: string;
  readonly kind?: "hvm" | "pv";
  /** RAM from GFN 0, when `regions` is omitted. */
  readonly memoryBytes: bigint;
  readonly superpages?: boolean;
  /** RAM as runs of GFNs instead (a layout with the MMIO hole below 4 GiB, memory above it); the frame space ends with the last run. */
  readonly regions?: readonly GuestRamRegion[];
}

export interface GuestRamRegion {
  readonly firstGfn: number;
  readonly npages: number;
}

/** The legacy VGA/BIOS hole a PV Dom0's P2M marks IDENTITY_FRAME: PFNs [0xa0, 0x100). */
export const DOM0_IDENTITY_HOLE = { first: 0xa0, end: 0x100 } as const;

export class Xen {
  readonly frames: MachineFrames;
  readonly iommu: XenIommu;
  readonly options: ResolvedXenOptions;
  readonly xenserver: XenServerPvIommu | undefined;
  readonly pvIommu2024: PvIommu2024 | undefined;
  readonly #domains = new Map<number, XenDomain>();
  readonly #grantTables = new Map<number, GrantTable>();
  readonly #hypercalls = new Map<string, number>();
  #nextDomid = 1;
  #dom0Mode: Dom0IommuMode | undefined;
  /** Hypercall continuations created after a preemption. */
  continuations = 0;

  constructor(
    readonly host: Host,
    options: XenOptions = {},
  ) {
    this.options = {
      cpuVendor: options.cpuVendor ?? "intel",
      iommu: options.iommu ?? true,
      pvIommu: options.pvIommu ?? "none",
      foreignOffsetGiB: options.foreignOffsetGiB ?? 248,
      preemptEvery: options.preemptEvery ?? 0,
      gnttabMaxFrames: options.gnttabMaxFrames ?? DEFAULT_GNTTAB_MAX_FRAMES,
      gnttabMaxMaptrackFrames: options.gnttabMaxMaptrackFrames ?? DEFAULT_GNTTAB_MAX_MAPTRACK_FRAMES,
      era: options.era ?? "current",
      pvIommuMaxPages: options.pvIommuMaxPages ?? 256,
      memoryMappingMaxFrames: options.memoryMappingMaxFrames ?? 64,
    };
    this.frames = new MachineFrames(host.phys);
    this.iommu = new XenIommu(this.options.iommu, this.frames, host.faults, options.iommuContexts ?? 16, options.reservedRegions ?? []);
    this.#dom0IommuOptions = options.dom0Iommu ?? {};
    this.xenserver = this.options.pvIommu === "xenserver" ? new XenServerPvIommu(this) : undefined;
    this.pvIommu2024 = this.options.pvIommu === "2024" ? new PvIommu2024(this) : undefined;
  }

  readonly #dom0IommuOptions: Dom0IommuOptions;

  /** The resolved dom0-iommu= mode (after createDom0). */
  get dom0Iommu(): Dom0IommuMode {
    if (this.#dom0Mode === undefined) throw new Error("Xen: no Dom0 yet");
    return this.#dom0Mode;
  }

  get hardwareDomain(): XenDomain | undefined {
    return this.#domains.get(0);
  }

  /** rcu_lock_domain_by_id: a live or crashed domain (not a destroyed one). */
  domain(domid: number): XenDomain | undefined {
    const d = this.#domains.get(domid);
    return d?.state === "destroyed" ? undefined : d;
  }

  get domains(): readonly XenDomain[] {
    return [...this.#domains.values()];
  }

  /** Builds Dom0: its RAM, its P2M (PV array with an identity hole, or PVH P2M) and its IOMMU context 0. */
  createDom0(config: Dom0Config): XenDomain {
    if (this.#domains.has(0)) throw new Error("Xen: Dom0 exists already");
    const mode = resolveDom0Iommu(config.kind, this.#dom0IommuOptions);
    this.#dom0Mode = mode;
    const pages = Number(config.memoryBytes >> 12n);
    const balloon = Number((config.balloonBytes ?? 256n << 20n) >> 12n);
    const kind: DomainKind = config.kind;
    if (kind === "pv") {
      const ramEnd = pages > DOM0_IDENTITY_HOLE.first ? pages + (DOM0_IDENTITY_HOLE.end - DOM0_IDENTITY_HOLE.first) : pages;
      const d = new XenDomain(this.frames, { domid: 0, name: "Domain-0", kind, isHardwareDomain: true, maxGfn: ramEnd + balloon });
      const low = Math.min(pages, DOM0_IDENTITY_HOLE.first);
      this.#populateOrThrow(d, 0, low, config.superpages === true);
      if (pages > low) {
        for (let pfn = DOM0_IDENTITY_HOLE.first; pfn < DOM0_IDENTITY_HOLE.end; pfn++) d.pvP2m!.setIdentity(pfn);
        this.#populateOrThrow(d, DOM0_IDENTITY_HOLE.end, pages - low, config.superpages === true);
      }
      this.#domains.set(0, d);
      const backdrop: Backdrop = !this.options.iommu || mode.passthrough ? { kind: "bypass" } : mode.strict ? { kind: "identity-owned", domid: 0 } : { kind: "identity-ram" };
      this.iommu.createDefault(0, backdrop);
      return d;
    }
    const foreignBase = alignUp(pages, 1 << 18);
    const d = new XenDomain(this.frames, { domid: 0, name: "Domain-0", kind, isHardwareDomain: true, maxGfn: foreignBase + Math.max(balloon, this.frames.ramFrames) });
    this.#populateOrThrow(d, 0, pages, config.superpages === true);
    this.#domains.set(0, d);
    this.iommu.createDefault(0, this.options.iommu ? { kind: "p2m", p2m: d.p2m! } : { kind: "bypass" });
    return d;
  }

  /** Builds a guest (HVM by default) with its RAM populated from GFN 0, or in the given regions. */
  createGuest(config: GuestConfig): XenDomain {
    const regions = config.regions ?? [{ firstGfn: 0, npages: Number(config.memoryBytes >> 12n) }];
    const maxGfn = regions.reduce((end, r) => Math.max(end, r.firstGfn + r.npages), 0);
    const domid = this.#nextDomid++;
    const d = new XenDomain(this.frames, { domid, name: config.name, kind: config.kind ?? "hvm", isHardwareDomain: false, maxGfn });
    for (const r of regions) this.#populateOrThrow(d, r.firstGfn, r.npages, config.superpages === true);
    this.#domains.set(domid, d);
    return d;
  }

  #populateOrThrow(d: XenDomain, first: number, npages: number, superpages: boolean): void {
    const done = d.populatePhysmap(first, npages, superpages);
    if (done !== npages) {
      d.destroy();
      throw new RangeError(`Xen: host memory exhausted building ${d.name} (${done} of ${npages} frames)`);
    }
  }

  /** Assigns a PCI device to a domain (its devices DMA through that domain's context 0). */
  assignDevice(sbdf: PciSbdf, domid: number): void {
    this.iommu.assignDevice(sbdf, domid);
  }

  /** Destroys a domain: its frames go back (or with their last reference), its contexts and grant table go. */
  destroyDomain(domid: number): void {
    const d = this.#domains.get(domid);
    if (d === undefined) return;
    this.iommu.dropDomain(domid);
    d.destroy();
    this.#grantTables.delete(domid);
    this.#domains.delete(domid);
  }

  /** Destroys every domain, guests first. */
  shutdown(): void {
    for (const d of [...this.#domains.values()].reverse()) this.destroyDomain(d.domid);
  }

  grantTable(domid: number): GrantTable {
    let gt = this.#grantTables.get(domid);
    if (gt === undefined) this.#grantTables.set(domid, (gt = new GrantTable(domid, this.options.gnttabMaxFrames, this.options.gnttabMaxMaptrackFrames)));
    return gt;
  }

  /** Counts one hypercall entry of `name`. */
  countHypercall(name: string): void {
    this.#hypercalls.set(name, (this.#hypercalls.get(name) ?? 0) + 1);
  }

  /** Hypercall entries of `name` (continuations included), or of all names. */
  hypercalls(name?: string): number {
    if (name !== undefined) return this.#hypercalls.get(name) ?? 0;
    let n = 0;
    for (const v of this.#hypercalls.values()) n += v;
    return n;
  }

  /** IOTLB flushes of every context of the hardware domain. */
  get dom0Flushes(): number {
    return this.iommu.flushes(0);
  }
}

const alignUp = (v: number, a: number): number => Math.ceil(v / a) * a;
