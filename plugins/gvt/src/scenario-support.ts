/**
 * The GVT-g vendor's contribution to scenarios: a guest i915-like driver for
 * each vGPU, built on the test guest driver (testing/guest-driver.ts), so the
 * command's scenarios program GVT as a guest does.
 *
 * Slots are the vGPU's GGTT partition in order: its aperture pages, then its
 * hidden GM pages (the guest learns both from the PV info page). `map` is one
 * BAR0 write per run of consecutive entries, `mapHalves` two 4-byte writes;
 * `setPlane` programs primary plane A at the slot's graphics address.
 * `submit` and `mapHuge` build 4-level PPGTTs in the driver's pool of guest
 * frames (one per workload, one per huge entry) and submit a workload on
 * each, which shadows it lazily; clearing a huge entry is a guest write to
 * its write-protected table.
 */
import { ERRNO, KernelError, errnoName, type PlatformVm, type Vgpu } from "@vgpu-iommu/core";
import type { GuestDriver, GuestPool, ScenarioProvider, WorkloadResult } from "@vgpu-iommu/core/scenarios";
import { GvtVgpu } from "./gvt-vgpu.js";
import { GEN8_PAGE_PRESENT, GEN8_PAGE_RW, PAGE_SIZE } from "./gvt-params.js";
import { GuestGfxDriver, pte, type LeafSize } from "./testing/guest-driver.js";

const LEAF: Readonly<Record<number, LeafSize>> = { [4096]: "4K", [64 << 10]: "64K", [2 << 20]: "2M", [1 << 30]: "1G" };

/** A guest driver that counts the page-table pages it takes from its pool. */
class PoolDriver extends GuestGfxDriver {
  tables = 0;
  override newTable(): number {
    this.tables++;
    return super.newTable();
  }
}

export function gvtGuestDriver(vgpu: GvtVgpu, vm: PlatformVm, pool: GuestPool): GuestDriver {
  const gfx = new PoolDriver(vgpu, vm, pool.firstGfn, pool.npages);
  const ap = vgpu.aperture;
  const hi = vgpu.hidden;
  const slots = ap.npages + hi.npages;
  const index = (slot: number): number => (slot < ap.npages ? ap.start + slot : hi.start + (slot - ap.npages));
  /** GGTT writes for slots [first, first + n), one BAR0 write per run of consecutive indexes. */
  const writeRuns = (first: number, gfns: ArrayLike<number>): void => {
    let at = 0;
    while (at < gfns.length) {
      const slot = first + at;
      const run = Math.min(gfns.length - at, slot < ap.npages ? ap.npages - slot : slots - slot);
      gfx.ggttWriteRange(index(slot), Array.prototype.slice.call(gfns, at, at + run) as number[]);
      at += run;
    }
  };
  // Huge entries, by slot: where each was written.
  const huge = new Map<number, { table: number; index: number }>();
  const shadow = (root: number): { status: number; submitted: boolean; copied: number } => vgpu.submitWorkload(root);
  const fail = (status: number, what: string): never => {
    throw new KernelError(errnoName(status) ?? "EIO", what, { status });
  };
  return {
    slots,
    map: (first, gfns) => writeRuns(first, gfns),
    unmap(first, n) {
      for (let slot = first; slot < first + n; slot++) {
        const h = huge.get(slot);
        if (h === undefined) continue;
        huge.delete(slot);
        gfx.writeEntry(h.table, h.index, 0, 0);
      }
      for (let slot = first; slot < first + n; slot++) gfx.ggttWrite(index(slot), undefined);
    },
    mapHalves(slot, gfn) {
      const [lo, hi32] = pte(gfn, GEN8_PAGE_PRESENT | GEN8_PAGE_RW);
      gfx.ggttWriteHalf(index(slot), 0, lo);
      gfx.ggttWriteHalf(index(slot), 4, hi32);
    },
    setPlane(first, _npages, width, height) {
      gfx.setPrimaryPlane(index(first) * PAGE_SIZE, width, height);
    },
    submit(leafGfns): WorkloadResult {
      const tables = gfx.tables;
      const root = gfx.newTable();
      leafGfns.forEach((gfn, i) => gfx.map(root, i * PAGE_SIZE, gfn, "4K"));
      const before = vgpu.ppgtt.counters.leafMaps;
      const r = shadow(root);
      return { protectedPages: gfx.tables - tables, shadowedLeaves: vgpu.ppgtt.counters.leafMaps - before, completed: r.submitted && r.status === 0, copiedBytes: r.copied };
    },
    mapHuge(slot, gfn, pageBytes) {
      const size = LEAF[pageBytes];
      if (size === undefined) throw new KernelError("EINVAL", "gvt-guest-no-such-page-size", { pageBytes });
      // A PPGTT of its own for each huge entry, shadowed by the workload submitted on it.
      const root = gfx.newTable();
      huge.set(slot, gfx.map(root, 0, gfn, size));
      const refused = vgpu.ppgtt.counters.refused1G;
      const r = shadow(root);
      if (vgpu.ppgtt.counters.refused1G > refused) fail(-ERRNO.EINVAL, "gvt-1g-entry-refused");
      if (r.status < 0) fail(r.status, "gvt-guest-huge-entry-failed");
      if (!r.submitted) fail(-ERRNO.EIO, "gvt-guest-in-failsafe");
    },
    writeOutsidePartition(gfn) {
      // The first GGTT entry belongs to the host's share of the aperture.
      gfx.ggttWrite(0, gfn);
    },
    visibleAddresses: () => vgpu.deviceVisibleAddresses(),
  };
}

export const gvtScenarioProvider: ScenarioProvider = {
  guestOps: ["map", "unmap", "mapHalves", "setPlane", "submit", "mapHuge", "writeOutsidePartition", "visibleAddresses"],
  guestDriver: (vgpu: Vgpu, vm: PlatformVm, pool: GuestPool) => (vgpu instanceof GvtVgpu ? gvtGuestDriver(vgpu, vm, pool) : undefined),
};
