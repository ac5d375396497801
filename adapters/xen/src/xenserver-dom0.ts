/**
 * Dom0's side of the XenServer PV-IOMMU (xcp-ng/linux
 * arch/x86/xen/pci-swiotlb-xen.c and drivers/xen/pv-iommu-xen.c): detection,
 * the BFN layout, and the foreign-frame addresses.
 *
 * Model:
 * - Detection (pci_xen_swiotlb_detect): a PV Dom0 asks `query_caps`; without
 *   the map capability (AMD, passthrough, IOMMU off, or no PV-IOMMU in Xen) or
 *   when its max_pfn reaches the foreign offset, it falls back to swiotlb-xen
 *   and says why.
 * - Layout: Dom0's own RAM at BFN == PFN: every PFN whose MFN is not an
 *   identity frame gets an unmap + map pair, 64 pairs per 128-op hypercall;
 *   only the maps (odd indexes) are checked, and a failure is a BUG().
 * - All host RAM also at `offset + MFN` (248 GiB by default, so a 40-bit
 *   device reaches it only for machine addresses below 776 GiB, i.e. hosts
 *   under 768 GiB with the MMIO hole and margin): built by a kthread after
 *   boot, 128 ops per hypercall, after first removing Xen's own 1:1 entries
 *   where Dom0 has no RAM or at and above the offset. A failed hypercall
 *   panics; failed ops are only logged (and only odd indexes are checked).
 *   `runSetup(maxBatches)` runs the kthread a few batches at a time.
 * - Until the region is complete, a foreign frame's address is mapped on
 *   demand (xen_pv_iommu_get_foreign_addr); this model batches those maps,
 *   up to 128 per hypercall, so a batch costs one IOTLB flush. A BFN that is
 *   already mapped answers -EPERM: the region is 1:1 by construction, so that
 *   is "already there", as Linux (which ignores the status) assumes.
 *
 * Invariants: once detected, BFN p reaches Dom0's PFN p for every RAM PFN;
 * after setup, BFN offset + m reaches MFN m for every host RAM frame.
 */
import { ERRNO } from "@vgpu-iommu/core";
import type { Xen } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { IOMMU_MAP_OP_no_ref_cnt, IOMMU_OP_readable, IOMMU_OP_writeable, IOMMU_QUERY_map_cap, PvIommuOps } from "./pv-iommu-xenserver.js";

export const IOMMU_BATCH_SIZE = 128;
export const DEFAULT_FOREIGN_OFFSET_GIB = 248;
const RW_NOREF = IOMMU_OP_readable | IOMMU_OP_writeable | IOMMU_MAP_OP_no_ref_cnt;

export class XenServerDom0 {
  readonly offsetPfn: number;
  readonly ops = new PvIommuOps(IOMMU_BATCH_SIZE);
  #active = false;
  #fallbackReason: string | undefined;
  #setupComplete = false;
  #phase: "remove" | "map" | "done" = "remove";
  #cursor = 0;
  /** Failed ops the kthread logged. */
  loggedFailures = 0;
  /** Hypercalls made for the layout at boot. */
  bootBatches = 0;
  /** On-demand foreign maps answered -EPERM (BFN already mapped), taken as done. */
  alreadyMapped = 0;

  constructor(
    private readonly xen: Xen,
    readonly dom0: XenDomain,
    offsetGiB = DEFAULT_FOREIGN_OFFSET_GIB,
  ) {
    this.offsetPfn = offsetGiB * 262144;
  }

  get active(): boolean {
    return this.#active;
  }

  /** Why Dom0 fell back to swiotlb-xen, if it did. */
  get fallbackReason(): string | undefined {
    return this.#fallbackReason;
  }

  /** pv_iommu_1_to_1_setup_complete. */
  get setupComplete(): boolean {
    return this.#setupComplete;
  }

  /** The foreign BFN of a host frame. */
  foreignBfn(mfn: number): number {
    return this.offsetPfn + mfn;
  }

  /** pci_xen_swiotlb_detect: true when PV-IOMMU mode is on, false (with a reason) when Dom0 falls back to swiotlb-xen. */
  detect(): boolean {
    const dom0 = this.dom0;
    const pv = this.xen.xenserver;
    if (dom0.kind !== "pv") return this.#fallback("not a PV Dom0");
    if (pv === undefined) return this.#fallback("Xen has no PV-IOMMU (iommu_op -ENOSYS)");
    const ops = this.ops;
    ops.queryCaps(0);
    const rc = pv.iommuOp(dom0, ops, 1);
    if (rc !== 0 || (ops.flags[0]! & IOMMU_QUERY_map_cap) === 0) return this.#fallback("query_caps: no map capability");
    const maxPfn = dom0.maxGfn;
    if (maxPfn >= this.offsetPfn) return this.#fallback(`bfn_foreign_offset at ${this.offsetPfn / 262144} GiB is too small for Dom0 (max_pfn ${maxPfn})`);
    const p2m = dom0.pvP2m!;
    const limit = Math.min(maxPfn, this.offsetPfn, this.xen.frames.ramFrames);
    let count = 0;
    for (let pfn = 0; pfn < limit; pfn++) {
      if (!p2m.isInvalid(pfn) && !p2m.isIdentity(pfn)) {
        ops.unmapPage(count++, pfn, IOMMU_MAP_OP_no_ref_cnt);
        ops.mapPage(count++, pfn, p2m.mfn(pfn), RW_NOREF);
      }
      if (count === IOMMU_BATCH_SIZE) {
        this.#bootBatch(count);
        count = 0;
      }
    }
    if (count > 0) this.#bootBatch(count);
    this.#active = true;
    return true;
  }

  #bootBatch(count: number): void {
    this.bootBatches++;
    const rc = this.xen.xenserver!.iommuOp(this.dom0, this.ops, count);
    const bad = rc !== 0 ? -1 : this.#checkBatch(count);
    this.xen.host.kernel.bugOn(bad !== 0, "pci_xen_swiotlb_detect", "Failed to fully Setup 1-1 mapping of GPFN to MFN.", { rc, failedMaps: bad });
  }

  /** check_batch: counts failed statuses at odd indexes only. */
  #checkBatch(count: number): number {
    let bad = 0;
    for (let op = 1; op < count; op += 2) if (this.ops.status[op] !== 0) bad++;
    return bad;
  }

  #fallback(reason: string): boolean {
    this.#fallbackReason = reason;
    this.xen.host.kernel.prWarn(`XEN-PV-IOMMU: ${reason}; using swiotlb-xen`);
    return false;
  }

  /** The pv_iommu_setup kthread: runs up to `maxBatches` hypercalls; true once the offset region is complete. */
  runSetup(maxBatches = Number.POSITIVE_INFINITY): boolean {
    if (!this.#active || this.#setupComplete) return this.#setupComplete;
    const ops = this.ops;
    const p2m = this.dom0.pvP2m!;
    const maxHostMfn = this.xen.frames.ramFrames;
    let batches = 0;
    while (batches < maxBatches && this.#phase !== "done") {
      let count = 0;
      if (this.#phase === "remove") {
        while (this.#cursor < maxHostMfn && count < IOMMU_BATCH_SIZE) {
          const pfn = this.#cursor++;
          if (p2m.isInvalid(pfn) || pfn >= this.offsetPfn) ops.unmapPage(count++, pfn, IOMMU_MAP_OP_no_ref_cnt);
        }
        if (this.#cursor >= maxHostMfn) {
          this.#phase = "map";
          this.#cursor = 0;
        }
      } else {
        while (this.#cursor < maxHostMfn && count < IOMMU_BATCH_SIZE) {
          const mfn = this.#cursor++;
          ops.mapPage(count++, this.offsetPfn + mfn, mfn, RW_NOREF);
        }
        if (this.#cursor >= maxHostMfn) this.#phase = "done";
      }
      if (count === 0) continue;
      batches++;
      const rc = this.xen.xenserver!.iommuOp(this.dom0, ops, count);
      if (rc !== 0) this.xen.host.kernel.crash({ site: "pv_iommu_setup", message: "Xen PV-IOMMU: failed to setup 1-1 mapping", details: { rc } });
      if (this.#phase !== "remove") {
        const bad = this.#checkBatch(count);
        if (bad > 0) {
          this.loggedFailures += bad;
          this.xen.host.kernel.prWarn("Failed to fully create offset IOMMU mapping.");
        }
      }
    }
    if (this.#phase === "done") this.#setupComplete = true;
    return this.#setupComplete;
  }

  /**
   * Maps the foreign BFNs of `n` frames while the region is incomplete, up to
   * 128 ops per hypercall; writes each op's status to `status[i]` (0 also for
   * -EPERM: already mapped). Returns the number of hypercalls made.
   */
  mapForeignFrames(mfns: ArrayLike<number>, n: number, status: Int32Array): number {
    if (this.#setupComplete) {
      status.fill(0, 0, n);
      return 0;
    }
    const ops = this.ops;
    let calls = 0;
    for (let done = 0; done < n; ) {
      const count = Math.min(IOMMU_BATCH_SIZE, n - done);
      for (let i = 0; i < count; i++) ops.mapPage(i, this.offsetPfn + mfns[done + i]!, mfns[done + i]!, RW_NOREF);
      const rc = this.xen.xenserver!.iommuOp(this.dom0, ops, count);
      calls++;
      for (let i = 0; i < count; i++) {
        const s = rc !== 0 ? rc : ops.status[i]!;
        if (s === -ERRNO.EPERM) this.alreadyMapped++;
        status[done + i] = s === -ERRNO.EPERM ? 0 : s;
      }
      done += count;
    }
    return calls;
  }
}
