/**
 * The Xen hypervisor adapter: core's HypervisorAdapter port, run as Dom0's
 * kernel would run it for a vGPU whose parent GPU Dom0 drives.
 *
 * Model:
 * - Guest frames are pinned through privcmd foreign mappings (XenGuestPins):
 *   Xen page references, refcounted per frame, all or nothing.
 * - A device mapping uses one mechanism, chosen at construction from the
 *   configuration, the way Dom0's kernel chooses its DMA ops:
 *   - `identity-mfn` (XenGT): dma = MFN << 12, unmap does nothing; only for a
 *     non-strict (or passthrough) PV Dom0, refused elsewhere;
 *   - `swiotlb-xen`: a PV Dom0 without PV-IOMMU: bus address = MFN, bounced
 *     through the low pool when the device cannot reach it;
 *   - `pviommu-xenserver`: a PV Dom0 with the XenServer PV-IOMMU: BFN =
 *     foreign offset + MFN; while the offset region is being built, the frames'
 *     BFNs are mapped 128 ops per hypercall (one flush each); a frame beyond
 *     the device's mask is bounced; nothing to unmap for direct frames;
 *   - `pviommu-2024`: a PVH Dom0 with the 2024 PV-IOMMU: each device gets its
 *     own context; the core places each translation (`coreChoosesIova`) and
 *     the adapter maps it at the DFN it is given, after checking the range
 *     lies in the device's aperture (below min(mask, 2^39); EFAULT
 *     `dfn-outside-aperture` otherwise, before any hypercall): `map_pages`
 *     over runs of consecutive Dom0 GFNs, at most 256 pages a call (halved
 *     and retried on -E2BIG), one flush per call; a DFN in use is Xen's
 *     -EADDRINUSE, with the pages mapped before it unmapped again; unmap
 *     likewise;
 *   - `pvh-direct`: a PVH Dom0 without PV-IOMMU: its devices see its GFNs, so
 *     bus address = the Dom0 GFN of the foreign mapping; no bounce;
 *   - `grant-dma` (a frontend's grant-dma-ops): each frame is granted to the
 *     backend domain and its address is bit 63 | ref << 12.
 *   A mechanism that is asked for and unavailable falls back as Linux does
 *   (PV-IOMMU -> swiotlb-xen or pvh-direct) and records `fallbackReason`.
 * - Failures are XenErrors in the shared vocabulary with the native status as
 *   `cause` and, where a batch stopped part way, the pages done as `done`; a
 *   failed map leaves nothing mapped that the caller would not know of (the
 *   XenServer region, which is permanent, excepted).
 * - P2M changes of an attached guest (decrease_reservation) are forwarded to
 *   the core as invalidations, synchronously.
 *
 * `capabilities()` describes the mechanism in use; with the 2024 PV-IOMMU its
 * `maxOpsPerBatch` is the chunk in use, which an -E2BIG halves. For a device,
 * `dmaMaskBits` is the device's mask clipped to the mechanism's width.
 *
 * Who chooses the device address (hypervisors.md 2.4, 3.2):
 * - 2024 PV-IOMMU: the caller of `map_pages` names the DFN, in a context of
 *   the device's own, and the 39-bit DFN space is otherwise empty: the core
 *   chooses (`coreChoosesIova: true`, aperture [0, 2^39 - 1]).
 * - XenServer PV-IOMMU: the BFN of a foreign frame is fixed by Dom0's layout,
 *   not chosen per mapping. Linux maps all host RAM once at bfn_foreign_offset
 *   + MFN (a boot-time kthread, on demand until it is done), and the DMA
 *   address of a foreign page is computed from its MFN
 *   (`(MFN << 12) + 248 GiB`), as `lookup_foreign_page` answers it. Mapping a
 *   frame at a BFN the core picked would need a second IOMMU entry that Dom0
 *   never makes (and a map at a BFN of the permanent region is -EPERM). So
 *   the core does not choose there (`coreChoosesIova: false`); the aperture
 *   says what the layout spans: Dom0's own RAM at BFN == PFN (and the bounce
 *   pool in it) up to the end of the offset region.
 * - Every other mechanism computes the address from the frame (MFN, Dom0 GFN,
 *   grant ref): `coreChoosesIova: false`.
 *
 * Invariants: every live XenMapping is unmapped exactly once; after dispose
 * no context, pool slot or subscription of the adapter remains.
 */
import {
  DmaDirection,
  ERRNO,
  PAGE_SIZE,
  Scatterlist,
  SwiotlbPool,
  apertureOfMask,
  type DeviceHandle,
  type DeviceMapping,
  type Disposable,
  type GuestInvalidation,
  type GuestPinPort,
  type HypervisorAdapter,
  type HypervisorCapabilities,
  type Range,
} from "@vgpu-iommu/core";
import type { Xen, XenEra } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { Privcmd, REMAP_BATCH_SIZE } from "./privcmd.js";
import { PinTable, XenGuestPins } from "./guest-pins.js";
import { XenGtIdentity } from "./xengt-identity.js";
import { MACHINE_VIEW, machineView, XenSwiotlb, type XenDmaDevice, type XenPhysView } from "./swiotlb-xen.js";
import { DEFAULT_FOREIGN_OFFSET_GIB, IOMMU_BATCH_SIZE, XenServerDom0 } from "./xenserver-dom0.js";
import { IOMMU_OP_readable, IOMMU_OP_writeable, IOMMUOP_alloc_context, IOMMUOP_free_context, IOMMUOP_map_pages, IOMMUOP_query_capabilities, IOMMUOP_reattach_device, IOMMUOP_unmap_pages, PVIOMMU_DFN_LIMIT, PVIOMMU_MAX_IOVA_ADDR, type PvIommuOp2024 } from "./pv-iommu-2024.js";
import { grantDmaAddr, grantRefOfDmaAddr } from "./grant-table.js";
import type { PciSbdf } from "./xen-iommu.js";
import { errnoStatus, xenError, xenErrnoError, type NativeStatus } from "./xen-error.js";
import { fillContiguous, fillFromFrames, fillFromHalves } from "./addr-array.js";

export type XenMechanismRequest = "auto" | "identity-mfn" | "swiotlb-xen" | "pviommu" | "grant-dma";
export type XenMechanism = "identity-mfn" | "swiotlb-xen" | "pviommu-xenserver" | "pviommu-2024" | "pvh-direct" | "grant-dma";

export interface XenAdapterOptions {
  readonly mechanism?: XenMechanismRequest;
  /** Dom0 kernel era: swiotlb-xen's map_sg failure value (0 before 2021, -EIO after); Xen's era when omitted. */
  readonly era?: XenEra;
  /** swiotlb pool size; 64 MiB (IO_TLB_DEFAULT_SIZE) when omitted. */
  readonly swiotlbBytes?: number;
  /** Linux's xen_pviommu_foreign_offset= in GiB (248). */
  readonly foreignOffsetGiB?: number;
  /** grant-dma: the domain whose device maps the grants (the backend); 0 when omitted. */
  readonly backendDomid?: number;
}

export interface XenDeviceOptions {
  readonly name: string;
  readonly sbdf: PciSbdf;
  /** The device's streaming DMA mask width; 64 when omitted. */
  readonly dmaMaskBits?: number;
}

interface DeviceState {
  readonly handle: DeviceHandle;
  readonly sbdf: PciSbdf;
  readonly dma: XenDmaDevice;
  readonly dmaMaskBits: number;
  /** pviommu-2024: the device's context, and the last DFN its mask and the 39-bit DFN space allow. */
  readonly ctxNo: number;
  readonly dfnLimit: number;
  live: number;
}

/** What a mapping carries besides the core's fields, per mechanism. */
export interface XenMappingExtra {
  /** pviommu-2024: the first DFN, the one the core gave. */
  readonly dfnBase?: number;
  /** swiotlb-xen / XenServer: the scatterlist holding the DMA fields, and how many entries bounced. */
  readonly sg?: Scatterlist;
  readonly bounced?: number;
  /** grant-dma: the refs granted and the domain that granted each. */
  readonly refs?: Uint32Array;
  readonly grantDomids?: Uint16Array;
}

/** A device mapping as the adapter made it; the core hands it back to unmap. */
export class XenMapping implements DeviceMapping {
  live = true;
  constructor(
    readonly device: DeviceHandle,
    readonly nents: number,
    readonly count: number,
    readonly segAddr: BigUint64Array,
    readonly segLength: Float64Array,
    readonly mechanism: XenMechanism,
    readonly dir: DmaDirection,
    readonly extra: XenMappingExtra,
  ) {}

  /** Entries that went through a bounce buffer. */
  get bounced(): number {
    return this.extra.bounced ?? 0;
  }
}

/** Counters an integrator reads after a workload. */
export interface XenAdapterStats {
  maps: number;
  unmaps: number;
  /** Pages mapped through a bounce buffer. */
  bounced: number;
  /** Native per-op failures seen (statuses other than 0 in a batch). */
  opFailures: number;
  /** -E2BIG answers that halved the chunk. */
  e2bigRetries: number;
  /** grant-dma refs whose end of access was deferred because the backend still maps them. */
  deferredGrants: number;
}

const ALL_ONES = 0xffff_ffffn;
/** The 2024 PV-IOMMU's DFN space, up to max_iova_addr. */
const PVIOMMU_APERTURE: Range = Object.freeze({ start: 0n, last: PVIOMMU_MAX_IOVA_ADDR });

export class XenAdapter implements HypervisorAdapter {
  readonly mechanism: XenMechanism;
  readonly fallbackReason: string | undefined;
  readonly dom0: XenDomain;
  readonly privcmd: Privcmd;
  readonly era: XenEra;
  readonly xenserver: XenServerDom0 | undefined;
  readonly swiotlb: XenSwiotlb | undefined;
  readonly identity: XenGtIdentity | undefined;
  readonly stats: XenAdapterStats = { maps: 0, unmaps: 0, bounced: 0, opFailures: 0, e2bigRetries: 0, deferredGrants: 0 };
  readonly backendDomid: number;
  readonly #devices = new Map<DeviceHandle, DeviceState>();
  readonly #vgpus = new Map<object, XenGuestPins>();
  readonly #pinTables = new Map<number, PinTable>();
  readonly #subscriptions = new Map<number, Disposable>();
  readonly #listeners: ((inv: GuestInvalidation) => void)[] = [];
  readonly #poolPfns: number[] = [];
  #chunk2024 = IOMMU_BATCH_SIZE * 2;
  #foreignView: XenPhysView | undefined;
  #deferred: { domid: number; ref: number }[] = [];
  #statusScratch = new Int32Array(IOMMU_BATCH_SIZE);
  #xenserverLayout: { readonly aperture: Range; readonly bits: number } | undefined;
  #disposed = false;

  constructor(
    readonly xen: Xen,
    options: XenAdapterOptions = {},
  ) {
    const dom0 = xen.hardwareDomain;
    if (dom0 === undefined) throw xenError("ENODEV", "no-dom0", undefined);
    this.dom0 = dom0;
    this.era = options.era ?? xen.options.era;
    this.backendDomid = options.backendDomid ?? 0;
    this.privcmd = new Privcmd(xen, dom0);
    const want = options.mechanism ?? "auto";
    const pv = dom0.kind === "pv";
    let mechanism: XenMechanism;
    let reason: string | undefined;
    if (want === "identity-mfn") {
      this.identity = new XenGtIdentity(xen.dom0Iommu, dom0.kind === "pv" ? "pv" : "pvh");
      mechanism = "identity-mfn";
    } else if (want === "grant-dma") {
      if (xen.domain(this.backendDomid) === undefined) throw xenError("ESRCH", "grant-dma-no-backend", undefined, { backendDomid: this.backendDomid });
      mechanism = "grant-dma";
    } else if (want === "swiotlb-xen") {
      if (!pv) throw xenError("EINVAL", "swiotlb-xen-needs-pv-dom0", undefined);
      mechanism = "swiotlb-xen";
    } else if (pv) {
      if (xen.options.pvIommu === "2024") {
        mechanism = "swiotlb-xen";
        reason = "the 2024 PV-IOMMU maps frames of the caller's physmap only; a PV Dom0 cannot name foreign frames";
      } else if (xen.options.pvIommu === "xenserver" || want === "pviommu") mechanism = "pviommu-xenserver";
      else mechanism = "swiotlb-xen";
    } else {
      const probe: PvIommuOp2024 = { subop_id: IOMMUOP_query_capabilities, ctx_no: 0, flags: 0 };
      const rc = xen.pvIommu2024 === undefined ? -ERRNO.ENOSYS : xen.pvIommu2024.iommuOp(dom0, probe);
      if (rc === 0) mechanism = "pviommu-2024";
      else {
        mechanism = "pvh-direct";
        if (want === "pviommu" || xen.options.pvIommu !== "none") reason = `PV-IOMMU query_capabilities: ${rc}`;
      }
      if (probe.cap !== undefined) this.#chunk2024 = probe.cap.max_nr_pages;
    }
    if (mechanism === "swiotlb-xen" || mechanism === "pviommu-xenserver") {
      const pool = this.#createPool(options.swiotlbBytes);
      if (mechanism === "pviommu-xenserver") {
        const layout = new XenServerDom0(xen, dom0, options.foreignOffsetGiB ?? DEFAULT_FOREIGN_OFFSET_GIB);
        if (layout.detect()) this.xenserver = layout;
        else {
          mechanism = "swiotlb-xen";
          reason = layout.fallbackReason;
        }
      }
      const m2p = xen.frames.m2p;
      this.swiotlb =
        mechanism === "swiotlb-xen"
          ? new XenSwiotlb(pool, xen.host.phys, this.era)
          : new XenSwiotlb(pool, xen.host.phys, this.era, (tlb) => m2p[Math.floor(tlb / PAGE_SIZE)]! * PAGE_SIZE + (tlb % PAGE_SIZE), false);
    }
    this.mechanism = mechanism;
    this.fallbackReason = reason;
  }

  // ------------------------------------------------------------ configuration

  capabilities(device?: DeviceHandle): HypervisorCapabilities {
    const dev = device === undefined ? undefined : this.#devices.get(device);
    if (device !== undefined && dev === undefined) throw xenError("ENODEV", "device-not-registered", undefined, { device: device?.name });
    const mask = dev?.dmaMaskBits ?? 64;
    const base = { mergesSegments: false, maxSegmentSize: PAGE_SIZE, segmentBoundaryMask: ALL_ONES, maxPinPerCall: 512, isolationPerVgpu: false, supportsWriteTrack: true } as const;
    const wide = apertureOfMask(64);
    switch (this.mechanism) {
      case "identity-mfn":
      case "swiotlb-xen":
        return { ...base, addressModel: "identity-mfn", coreChoosesIova: false, dmaMaskBits: mask, iovaAperture: wide, maxOpsPerBatch: REMAP_BATCH_SIZE, flushModel: "explicit" };
      case "pviommu-xenserver": {
        const layout = (this.#xenserverLayout ??= xenserverLayout(this.xenserver!.offsetPfn + this.xen.frames.ramFrames));
        return { ...base, addressModel: "pviommu-bfn", coreChoosesIova: false, dmaMaskBits: Math.min(layout.bits, mask), iovaAperture: layout.aperture, maxOpsPerBatch: IOMMU_BATCH_SIZE, flushModel: "end-of-batch" };
      }
      case "pviommu-2024":
        return { ...base, addressModel: "pviommu-bfn", coreChoosesIova: true, dmaMaskBits: Math.min(39, mask), iovaAperture: PVIOMMU_APERTURE, maxOpsPerBatch: this.#chunk2024, flushModel: "per-call" };
      case "pvh-direct":
        return { ...base, addressModel: "host-dma-api", coreChoosesIova: false, dmaMaskBits: mask, iovaAperture: wide, maxOpsPerBatch: 1, flushModel: "explicit" };
      case "grant-dma":
        return { ...base, addressModel: "grant-dma", coreChoosesIova: false, dmaMaskBits: mask, iovaAperture: wide, maxOpsPerBatch: 1, flushModel: "explicit" };
    }
  }

  /**
   * Registers a physical device Dom0 drives (the vendor's parent GPU): it is
   * assigned to Dom0 and, with the 2024 PV-IOMMU, moved to a context of its own.
   */
  registerDevice(options: XenDeviceOptions): DeviceHandle {
    const bits = options.dmaMaskBits ?? 64;
    if (!(Number.isInteger(bits) && bits >= 12 && bits <= 64)) throw xenError("EINVAL", "bad-dma-mask", undefined, { bits });
    const xen = this.xen;
    if (xen.iommu.device(options.sbdf) === undefined) xen.assignDevice(options.sbdf, 0);
    else if (xen.iommu.device(options.sbdf)!.domid !== 0) throw xenError("EBUSY", "device-not-dom0s", undefined, { sbdf: options.sbdf });
    const handle: DeviceHandle = Object.freeze({ name: options.name });
    const dmaMask = bits >= 64 ? (1n << 64n) - 1n : (1n << BigInt(bits)) - 1n;
    let ctxNo = 0;
    let dfnLimit = 0;
    if (this.mechanism === "pviommu-2024") {
      const pv = xen.pvIommu2024!;
      const alloc: PvIommuOp2024 = { subop_id: IOMMUOP_alloc_context, ctx_no: 0, flags: 0 };
      let rc = pv.iommuOp(this.dom0, alloc);
      if (rc !== 0) throw xenErrnoError("pv-iommu", rc, "alloc-context-failed");
      ctxNo = alloc.ctx_no;
      rc = pv.iommuOp(this.dom0, { subop_id: IOMMUOP_reattach_device, ctx_no: ctxNo, flags: 0, reattach_device: { dev: options.sbdf } });
      if (rc !== 0) {
        pv.iommuOp(this.dom0, { subop_id: IOMMUOP_free_context, ctx_no: ctxNo, flags: 0 });
        throw xenErrnoError("pv-iommu", rc, "reattach-device-failed");
      }
      dfnLimit = Math.min(PVIOMMU_DFN_LIMIT, 2 ** (bits - 12)) - 1;
    }
    this.#devices.set(handle, { handle, sbdf: options.sbdf, dma: { name: options.name, dmaMask, segmentBoundaryMask: ALL_ONES }, dmaMaskBits: bits, ctxNo, dfnLimit, live: 0 });
    return handle;
  }

  /** Unregisters a device: EBUSY while it has live mappings; its 2024 context is freed. */
  unregisterDevice(handle: DeviceHandle): void {
    const dev = this.#devices.get(handle);
    if (dev === undefined) return;
    if (dev.live > 0) throw xenError("EBUSY", "device-has-mappings", undefined, { live: dev.live });
    if (dev.ctxNo !== 0) {
      const pv = this.xen.pvIommu2024!;
      pv.iommuOp(this.dom0, { subop_id: IOMMUOP_reattach_device, ctx_no: 0, flags: 0, reattach_device: { dev: dev.sbdf } });
      pv.iommuOp(this.dom0, { subop_id: IOMMUOP_free_context, ctx_no: dev.ctxNo, flags: 0 });
    }
    this.#devices.delete(handle);
  }

  /** Device mappings of a registered device made and not yet unmapped (0 for an unknown handle). */
  liveMappings(handle: DeviceHandle): number {
    return this.#devices.get(handle)?.live ?? 0;
  }

  /** The device context number a registered device uses (2024), for inspection. */
  deviceContext(handle: DeviceHandle): number {
    return this.#devices.get(handle)?.ctxNo ?? -1;
  }

  /** What a registered device's DMA to `addr` reaches (an MFN, a bounce frame, or -1 for an IOMMU fault). */
  deviceReaches(handle: DeviceHandle, addr: bigint, write = false): number {
    const dev = this.#devices.get(handle);
    if (dev === undefined) return -1;
    if (this.mechanism === "grant-dma") {
      const ref = grantRefOfDmaAddr(addr);
      if (ref < 0) return -1;
      return this.#grantOwnerFrame(ref);
    }
    return this.xen.iommu.deviceTranslate(dev.sbdf, addr, write);
  }

  /**
   * Declares that vGPU `vdev` serves guest `domid`; returns the name the core
   * uses for the VM (`TranslateApi.attach(vm, vdev)`), so the guest's P2M
   * changes reach that vGPU's translations.
   */
  attachVgpu(vdev: object, domid: number): string {
    const d = this.xen.domain(domid);
    if (d === undefined || d.isHardwareDomain) throw xenError("ESRCH", "no-such-guest", undefined, { domid });
    let table = this.#pinTables.get(domid);
    if (table === undefined) {
      this.#pinTables.set(domid, (table = new PinTable(d)));
      this.#subscriptions.set(
        domid,
        d.on("p2mChanged", (e) => this.#invalidate({ vm: d.name, firstGfn: e.firstGfn, npages: e.npages, reason: e.reason })),
      );
    }
    this.#vgpus.set(vdev, new XenGuestPins(this.privcmd, table));
    return d.name;
  }

  detachVgpu(vdev: object): void {
    this.#vgpus.delete(vdev);
  }

  /** The pin table of a guest (counts and MFNs held), for inspection. */
  pinTable(domid: number): PinTable | undefined {
    return this.#pinTables.get(domid);
  }

  guestPins(vdev: unknown): GuestPinPort {
    const pins = typeof vdev === "object" && vdev !== null ? this.#vgpus.get(vdev) : undefined;
    if (pins === undefined) throw xenError("ESRCH", "vgpu-not-attached", undefined, { vdev: (vdev as { name?: unknown } | null)?.name });
    return pins;
  }

  onInvalidate(listener: (inv: GuestInvalidation) => void): Disposable {
    this.#listeners.push(listener);
    return {
      dispose: () => {
        const i = this.#listeners.indexOf(listener);
        if (i >= 0) this.#listeners.splice(i, 1);
      },
    };
  }

  get listenerCount(): number {
    return this.#listeners.length;
  }

  #invalidate(inv: GuestInvalidation): void {
    for (const l of [...this.#listeners]) l(inv);
  }

  // ----------------------------------------------------------------- mapping

  mapForDevice(device: DeviceHandle, frames: Uint32Array, n: number, write: boolean, dfn?: number): DeviceMapping {
    const dev = this.#devices.get(device);
    if (dev === undefined) throw xenError("ENODEV", "device-not-registered", undefined, { device: device?.name });
    if (!(Number.isInteger(n) && n >= 1 && n <= frames.length)) throw xenError("EINVAL", "bad-frame-count", undefined, { n });
    const ram = this.xen.frames.ramFrames;
    for (let i = 0; i < n; i++) if (frames[i]! >= ram) throw xenError("EINVAL", "not-a-ram-frame", undefined, { index: i, frame: frames[i] });
    const dir = write ? DmaDirection.BIDIRECTIONAL : DmaDirection.TO_DEVICE;
    let m: XenMapping;
    switch (this.mechanism) {
      case "identity-mfn":
        m = this.#mapIdentity(dev, frames, n, dir);
        break;
      case "swiotlb-xen":
        m = this.#mapSwiotlb(dev, frames, n, dir, MACHINE_VIEW, "swiotlb-xen");
        break;
      case "pviommu-xenserver":
        m = this.#mapXenServer(dev, frames, n, dir);
        break;
      case "pviommu-2024":
        m = this.#map2024(dev, frames, n, dir, write, dfn);
        break;
      case "pvh-direct":
        m = this.#mapPvhDirect(dev, frames, n, dir);
        break;
      case "grant-dma":
        m = this.#mapGrant(dev, frames, n, dir, write);
        break;
    }
    dev.live++;
    this.stats.maps++;
    return m;
  }

  unmapForDevice(mapping: DeviceMapping): void {
    const kernel = this.xen.host.kernel;
    if (kernel.warnOn(!(mapping instanceof XenMapping) || !mapping.live, "xen_unmap", "unmap of a mapping this adapter did not make, or twice", { device: mapping.device?.name })) return;
    const m = mapping as XenMapping;
    const dev = this.#devices.get(m.device);
    m.live = false;
    if (dev !== undefined) dev.live--;
    this.stats.unmaps++;
    switch (m.mechanism) {
      case "identity-mfn":
        for (let i = 0; i < m.count; i++) this.identity!.unmapGuestPage(m.segAddr[i]!);
        return;
      case "swiotlb-xen":
      case "pviommu-xenserver":
        if (m.bounced > 0) this.swiotlb!.unmapSg(dev!.dma, m.extra.sg!, m.nents, m.dir);
        return;
      case "pviommu-2024":
        this.#unmap2024(dev!, m.extra.dfnBase!, m.nents);
        return;
      case "pvh-direct":
        return;
      case "grant-dma":
        this.#endGrants(m.extra.refs!, m.extra.grantDomids!, m.nents);
    }
  }

  #mapping(dev: DeviceState, n: number, mech: XenMechanism, dir: DmaDirection, segAddr: BigUint64Array, extra: XenMappingExtra = {}): XenMapping {
    const segLength = new Float64Array(n).fill(PAGE_SIZE);
    return new XenMapping(dev.handle, n, n, segAddr, segLength, mech, dir, extra);
  }

  #mapIdentity(dev: DeviceState, frames: Uint32Array, n: number, dir: DmaDirection): XenMapping {
    const addr = new BigUint64Array(n);
    fillFromFrames(addr, frames, n);
    const id = this.identity!;
    id.maps += n;
    return this.#mapping(dev, n, "identity-mfn", dir, addr);
  }

  #mapSwiotlb(dev: DeviceState, frames: Uint32Array, n: number, dir: DmaDirection, view: XenPhysView, mech: XenMechanism): XenMapping {
    if (this.#sg.origNents < n) this.#sg = new Scatterlist(n);
    const sg = this.#sg;
    sg.page.set(frames.subarray(0, n));
    sg.offset.fill(0, 0, n);
    sg.length.fill(PAGE_SIZE, 0, n);
    const sw = this.swiotlb!;
    const before = sw.bounced;
    const r = sw.mapSg(dev.dma, view, sg, n, dir);
    if (r <= 0) {
      const status: NativeStatus = r === 0 ? { api: "swiotlb", status: 0, name: "0 (dma_map_sg failed)" } : errnoStatus("swiotlb", r);
      throw xenError("EIO", "dma-mapping-error", status, { done: 0, bytes: n * PAGE_SIZE });
    }
    const bounced = sw.bounced - before;
    this.stats.bounced += bounced;
    const addr = new BigUint64Array(n);
    fillFromHalves(addr, sg.dmaAddrHi, sg.dmaAddrLo, n);
    // Only a mapping with bounces has unmap work; it keeps its own copy of the list's DMA fields.
    let kept: Scatterlist | undefined;
    if (bounced > 0) {
      kept = new Scatterlist(n);
      kept.page.set(sg.page.subarray(0, n));
      kept.length.set(sg.length.subarray(0, n));
      kept.dmaAddrHi.set(sg.dmaAddrHi.subarray(0, n));
      kept.dmaAddrLo.set(sg.dmaAddrLo.subarray(0, n));
      kept.dmaLength.set(sg.dmaLength.subarray(0, n));
    }
    return this.#mapping(dev, n, mech, dir, addr, { sg: kept, bounced });
  }

  /** The scatterlist map_sg fills; reused across calls. */
  #sg = new Scatterlist(512);

  #mapXenServer(dev: DeviceState, frames: Uint32Array, n: number, dir: DmaDirection): XenMapping {
    const layout = this.xenserver!;
    if (!layout.setupComplete) {
      if (this.#statusScratch.length < n) this.#statusScratch = new Int32Array(n);
      const status = this.#statusScratch;
      layout.mapForeignFrames(frames, n, status);
      let ok = 0;
      let firstBad = -1;
      for (let i = 0; i < n; i++) {
        if (status[i] === 0) ok++;
        else {
          this.stats.opFailures++;
          if (firstBad < 0) firstBad = i;
        }
      }
      if (firstBad >= 0) throw xenErrnoError("pv-iommu", status[firstBad]!, "foreign-bfn-map-failed", { done: ok, index: firstBad, frame: frames[firstBad] });
    }
    return this.#mapSwiotlb(dev, frames, n, dir, this.#foreignView ??= machineView(layout.offsetPfn), "pviommu-xenserver");
  }

  #mapPvhDirect(dev: DeviceState, frames: Uint32Array, n: number, dir: DmaDirection): XenMapping {
    const table = this.privcmd.dom0GfnTable;
    const addr = new BigUint64Array(n);
    for (let i = 0; i < n; i++) {
      const g = table[frames[i]!]!;
      if (g === 0) throw xenError("EINVAL", "frame-not-foreign-mapped", undefined, { index: i, frame: frames[i] });
      const bus = (g - 1) * PAGE_SIZE;
      if (!XenSwiotlb.dmaCapable(dev.dma, bus, PAGE_SIZE)) throw xenError("EIO", "dma-mapping-error", { api: "swiotlb", status: -1, name: "DMA_MAPPING_ERROR" }, { index: i, done: 0 });
      addr[i] = BigInt(g - 1) << 12n;
    }
    return this.#mapping(dev, n, "pvh-direct", dir, addr);
  }

  #map2024(dev: DeviceState, frames: Uint32Array, n: number, dir: DmaDirection, write: boolean, dfnBase: number | undefined): XenMapping {
    if (dfnBase === undefined) throw xenError("EINVAL", "dfn-required", undefined, { npages: n });
    if (!(Number.isSafeInteger(dfnBase) && dfnBase >= 0 && dfnBase + n - 1 <= dev.dfnLimit)) throw xenError("EFAULT", "dfn-outside-aperture", undefined, { dfn: dfnBase, npages: n, lastDfn: dev.dfnLimit });
    const table = this.privcmd.dom0GfnTable;
    if (this.#gfnScratch.length < n) this.#gfnScratch = new Uint32Array(n);
    const gfns = this.#gfnScratch;
    for (let i = 0; i < n; i++) {
      const g = table[frames[i]!]!;
      if (g === 0) throw xenError("EINVAL", "frame-not-foreign-mapped", undefined, { index: i, frame: frames[i] });
      gfns[i] = g - 1;
    }
    const pv = this.xen.pvIommu2024!;
    const flags = IOMMU_OP_readable | (write ? IOMMU_OP_writeable : 0);
    const op: PvIommuOp2024 = { subop_id: IOMMUOP_map_pages, ctx_no: dev.ctxNo, flags, map_pages: { gfn: 0, dfn: 0, nr_pages: 0, mapped: 0 } };
    const args = op.map_pages!;
    let done = 0;
    while (done < n) {
      const gfn = gfns[done]!;
      let run = 1;
      const max = Math.min(this.#chunk2024, n - done);
      while (run < max && gfns[done + run] === gfn + run) run++;
      args.gfn = gfn;
      args.dfn = dfnBase + done;
      args.nr_pages = run;
      args.mapped = 0;
      const rc = pv.iommuOp(this.dom0, op);
      if (rc === -ERRNO.E2BIG && this.#chunk2024 > 1) {
        this.#chunk2024 >>= 1;
        this.stats.e2bigRetries++;
        continue;
      }
      done += args.mapped;
      if (rc !== 0) {
        this.stats.opFailures++;
        if (done > 0) this.#unmap2024(dev, dfnBase, done);
        throw xenErrnoError("pv-iommu", rc, "map-pages-failed", { done, index: done, frame: frames[done] });
      }
    }
    const addr = new BigUint64Array(n);
    fillContiguous(addr, dfnBase, n);
    return this.#mapping(dev, n, "pviommu-2024", dir, addr, { dfnBase });
  }

  #gfnScratch = new Uint32Array(512);

  #unmap2024(dev: DeviceState, dfnBase: number, n: number): void {
    const pv = this.xen.pvIommu2024!;
    const op: PvIommuOp2024 = { subop_id: IOMMUOP_unmap_pages, ctx_no: dev.ctxNo, flags: 0, unmap_pages: { dfn: 0, nr_pages: 0, unmapped: 0 } };
    const args = op.unmap_pages!;
    for (let done = 0; done < n; ) {
      args.dfn = dfnBase + done;
      args.nr_pages = Math.min(this.#chunk2024, n - done);
      const rc = pv.iommuOp(this.dom0, op);
      if (rc === -ERRNO.E2BIG && this.#chunk2024 > 1) {
        this.#chunk2024 >>= 1;
        this.stats.e2bigRetries++;
        continue;
      }
      if (this.xen.host.kernel.warnOn(rc !== 0, "xen_iommu_unmap", "PV-IOMMU unmap_pages failed", { rc, dfn: args.dfn, unmapped: args.unmapped })) {
        done += Math.max(1, args.unmapped);
        continue;
      }
      done += args.nr_pages;
    }
  }

  #mapGrant(dev: DeviceState, frames: Uint32Array, n: number, dir: DmaDirection, write: boolean): XenMapping {
    const refs = new Uint32Array(n);
    const grantDomids = new Uint16Array(n);
    const addr = new BigUint64Array(n);
    const owner = this.xen.frames;
    for (let i = 0; i < n; i++) {
      const mfn = frames[i]!;
      const domid = owner.ownerOf(mfn);
      const ref = domid < 0 ? -ERRNO.EINVAL : this.xen.grantTable(domid).grantAccess(this.backendDomid, owner.m2p[mfn]!, !write);
      if (ref < 0) {
        this.#endGrants(refs, grantDomids, i);
        throw xenErrnoError("grant", ref, "grant-access-failed", { done: i, index: i, frame: mfn });
      }
      refs[i] = ref;
      grantDomids[i] = domid;
      this.#liveGrants.set(ref, domid);
      addr[i] = grantDmaAddr(ref);
    }
    return this.#mapping(dev, n, "grant-dma", dir, addr, { refs, grantDomids });
  }

  /** grant-dma: ref -> granting domain of live grants (one frontend per backend device is assumed). */
  readonly #liveGrants = new Map<number, number>();

  #endGrants(refs: Uint32Array, domids: Uint16Array, n: number): void {
    for (let i = 0; i < n; i++) {
      this.#liveGrants.delete(refs[i]!);
      if (this.xen.domain(domids[i]!) === undefined) continue;
      if (!this.xen.grantTable(domids[i]!).endAccess(refs[i]!)) {
        this.#deferred.push({ domid: domids[i]!, ref: refs[i]! });
        this.stats.deferredGrants++;
      }
    }
  }

  /** Retries the deferred ends of access (gnttab's deferred list); returns how many remain. */
  retryDeferredGrants(): number {
    this.#deferred = this.#deferred.filter(({ domid, ref }) => this.xen.domain(domid) !== undefined && !this.xen.grantTable(domid).endAccess(ref));
    return this.#deferred.length;
  }

  #grantOwnerFrame(ref: number): number {
    const domid = this.#liveGrants.get(ref);
    const d = domid === undefined ? undefined : this.xen.domain(domid);
    if (d === undefined) return -1;
    const gfn = this.xen.grantTable(d.domid).shFrame[ref]!;
    return d.p2m !== undefined ? d.p2m.mfn(gfn) : gfn;
  }

  // ----------------------------------------------------------------- the pool

  /**
   * Dom0's swiotlb buffer: core's SwiotlbPool placed as low as Xen can give it
   * (XENMEM_exchange with address bits rising from 21 to 32), owned by Dom0
   * and given PFNs in its balloon room so the boot-time BFN layout covers it.
   */
  #createPool(bytes: number | undefined): SwiotlbPool {
    let pool: SwiotlbPool | undefined;
    for (let bits = 21; bits <= 32 && pool === undefined; bits++) {
      try {
        pool = new SwiotlbPool(this.xen.host, { bytes, belowPfn: 2 ** (bits - 12) });
      } catch (e) {
        if (bits === 32) throw xenError("ENOMEM", "swiotlb-xen-no-low-memory", { api: "memory-op", status: -ERRNO.ENOMEM, name: "-ENOMEM" }, { error: String(e) });
      }
    }
    const p2m = this.dom0.pvP2m!;
    for (const block of pool!.blocks) {
      const pfn = findInvalidRun(p2m, 512);
      if (pfn < 0) {
        pool!.destroy();
        throw xenError("ENOMEM", "dom0-balloon-room-exhausted", undefined, { need: pool!.blocks.length * 512 });
      }
      for (let i = 0; i < 512; i++) {
        p2m.set(pfn + i, block + i);
        this.xen.frames.assign(block + i, 0, pfn + i);
      }
      this.#poolPfns.push(pfn);
    }
    return pool!;
  }

  // ----------------------------------------------------------------- teardown

  /** Frees the adapter's contexts, pool and subscriptions; EBUSY while mappings are live. */
  dispose(): void {
    if (this.#disposed) return;
    for (const dev of this.#devices.values()) if (dev.live > 0) throw xenError("EBUSY", "device-has-mappings", undefined, { device: dev.handle.name, live: dev.live });
    for (const handle of [...this.#devices.keys()]) this.unregisterDevice(handle);
    for (const s of this.#subscriptions.values()) s.dispose();
    this.#subscriptions.clear();
    const sw = this.swiotlb;
    if (sw !== undefined) {
      const p2m = this.dom0.pvP2m!;
      for (const pfn of this.#poolPfns) {
        for (let i = 0; i < 512; i++) {
          this.xen.frames.owner[p2m.mfn(pfn + i)] = 0;
          p2m.clear(pfn + i);
        }
      }
      sw.pool.destroy();
    }
    this.#disposed = true;
  }
}

/** The XenServer BFN layout ending at BFN `endBfn` (the end of the foreign offset region): its span and address width. */
function xenserverLayout(endBfn: number): { readonly aperture: Range; readonly bits: number } {
  const last = (BigInt(endBfn) << 12n) - 1n;
  return { aperture: Object.freeze({ start: 0n, last }), bits: last.toString(2).length };
}

/** The first run of `len` INVALID entries in a PV P2M, from its end downwards; -1 when none. */
function findInvalidRun(p2m: import("./pv-p2m.js").PvP2m, len: number): number {
  let run = 0;
  for (let pfn = p2m.maxPfn - 1; pfn >= 0; pfn--) {
    if (p2m.isInvalid(pfn)) {
      if (++run === len) return pfn;
    } else run = 0;
  }
  return -1;
}
