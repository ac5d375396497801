/**
 * Xen's IOMMU: the contexts it programs for each domain and which context each
 * PCI device uses.
 *
 * Model: a domain has a default context 0 and, with the 2024 PV-IOMMU, up to
 * `maxContexts` more, numbered from 1. A PCI device (segment/bus/devfn) is
 * assigned to one domain and attached to one of its contexts; its DMA is
 * translated by that context. `dontFlush` is Xen's per-CPU
 * iommu_dont_flush_iotlb: while set, map and unmap leave flushing to the caller.
 *
 * Invariants: context 0 exists for every domain given one and is never freed;
 * a device always points at a live context of its domain (freeing a context
 * reattaches its devices to context 0).
 */
import { ERRNO, type FaultInjector } from "@vgpu-iommu/core";
import { IommuContext, type Backdrop, type ReservedRegion } from "./iommu-context.js";
import type { MachineFrames } from "./machine-frames.js";

export interface PciSbdf {
  readonly seg: number;
  readonly bus: number;
  readonly devfn: number;
}

/** "ssss:bb:dd.f". */
export const sbdfName = (s: PciSbdf): string =>
  `${s.seg.toString(16).padStart(4, "0")}:${s.bus.toString(16).padStart(2, "0")}:${(s.devfn >> 3).toString(16).padStart(2, "0")}.${s.devfn & 7}`;

export interface PciDeviceState {
  readonly sbdf: PciSbdf;
  readonly domid: number;
  ctxNo: number;
}

export class XenIommu {
  readonly #contexts = new Map<number, Map<number, IommuContext>>();
  readonly #devices = new Map<string, PciDeviceState>();
  /** this_cpu(iommu_dont_flush_iotlb). */
  dontFlush = false;

  constructor(
    readonly enabled: boolean,
    private readonly frames: MachineFrames,
    private readonly faults: FaultInjector,
    readonly maxContexts: number,
    readonly reserved: readonly ReservedRegion[],
  ) {}

  /** Creates the default context of a domain. */
  createDefault(domid: number, backdrop: Backdrop): IommuContext {
    const ctx = new IommuContext(0, domid, backdrop, this.frames, this.faults, this.reserved);
    this.#contexts.set(domid, new Map([[0, ctx]]));
    return ctx;
  }

  context(domid: number, ctxNo: number): IommuContext | undefined {
    return this.#contexts.get(domid)?.get(ctxNo);
  }

  /** Contexts of a domain other than 0. */
  extraContexts(domid: number): number {
    return Math.max(0, (this.#contexts.get(domid)?.size ?? 1) - 1);
  }

  /** iommu_context_alloc: the new context number, or -ENOSPC when all are in use, -EINVAL without a default context. */
  allocContext(domid: number, clone: boolean): number {
    const ctxs = this.#contexts.get(domid);
    if (ctxs === undefined) return -ERRNO.EINVAL;
    for (let n = 1; n <= this.maxContexts; n++) {
      if (ctxs.has(n)) continue;
      const backdrop: Backdrop = clone ? ctxs.get(0)!.backdrop : { kind: "none" };
      ctxs.set(n, new IommuContext(n, domid, backdrop, this.frames, this.faults, this.reserved));
      return n;
    }
    return -ERRNO.ENOSPC;
  }

  /**
   * iommu_context_free: -EINVAL for context 0 or an unknown one. Its devices go
   * back to context 0 and the page references its entries held are dropped.
   */
  freeContext(domid: number, ctxNo: number): number {
    const ctxs = this.#contexts.get(domid);
    if (ctxNo === 0 || ctxs?.has(ctxNo) !== true) return -ERRNO.EINVAL;
    for (const d of this.#devices.values()) if (d.domid === domid && d.ctxNo === ctxNo) d.ctxNo = 0;
    this.#teardown(ctxs.get(ctxNo)!);
    ctxs.delete(ctxNo);
    return 0;
  }

  #teardown(ctx: IommuContext): void {
    const held: number[] = [];
    ctx.entries.forEachIn(0, Number.MAX_SAFE_INTEGER, (bfn, mfn) => {
      if (ctx.holdsRef(bfn)) held.push(mfn);
    });
    for (const mfn of held) this.frames.putPage(mfn);
    ctx.entries.reset();
    ctx.flush();
  }

  /** Assigns a PCI device to a domain, attached to its context 0 (boot or toolstack). */
  assignDevice(sbdf: PciSbdf, domid: number): void {
    this.#devices.set(sbdfName(sbdf), { sbdf, domid, ctxNo: 0 });
  }

  device(sbdf: PciSbdf): PciDeviceState | undefined {
    return this.#devices.get(sbdfName(sbdf));
  }

  /** Moves a device of `domid` to another of its contexts: -ENOENT for a device it does not have, -EINVAL for an unknown context. */
  reattach(domid: number, sbdf: PciSbdf, ctxNo: number): number {
    const dev = this.#devices.get(sbdfName(sbdf));
    if (dev === undefined || dev.domid !== domid) return -ERRNO.ENOENT;
    if (this.context(domid, ctxNo) === undefined) return -ERRNO.EINVAL;
    dev.ctxNo = ctxNo;
    return 0;
  }

  /** What the device's DMA to byte address `addr` reaches: the MFN, or -1 (an IOMMU fault). */
  deviceTranslate(sbdf: PciSbdf, addr: bigint, write: boolean): number {
    const dev = this.#devices.get(sbdfName(sbdf));
    if (dev === undefined) return -1;
    const ctx = this.context(dev.domid, dev.ctxNo);
    if (ctx === undefined || addr < 0n || addr >= 1n << 64n) return -1;
    return ctx.translate(Number(addr >> 12n), write);
  }

  /** IOTLB flushes of every context of `domid`. */
  flushes(domid: number): number {
    let n = 0;
    for (const ctx of this.#contexts.get(domid)?.values() ?? []) n += ctx.flushes;
    return n;
  }

  /** Domain destruction: every context is torn down (references dropped) and its devices deassigned. */
  dropDomain(domid: number): void {
    for (const ctx of this.#contexts.get(domid)?.values() ?? []) this.#teardown(ctx);
    this.#contexts.delete(domid);
    for (const [k, d] of this.#devices) if (d.domid === domid) this.#devices.delete(k);
  }
}
