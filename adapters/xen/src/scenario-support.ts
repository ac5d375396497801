/**
 * The Xen adapter's contribution to scenarios: the operations on a guest that
 * Xen has and the platform port does not offer, and a scenario of its own that
 * uses them.
 *
 * Operations: the guest's own balloon driver, which on Xen talks to the
 * hypervisor directly (no device model in the loop, unlike the platform's
 * balloonOut, where the device model tells each vGPU first):
 * - `decreaseReservation(gpa, length)`: XENMEM_decrease_reservation of the
 *   range's frames; answers the bytes removed (holes and grant, foreign or
 *   MMIO entries are left alone, as Xen leaves them). The P2M change reaches
 *   the core (which revokes translations of those frames) and the ioreq
 *   server's tracker (which ends their write protection); no vGPU gets a
 *   dmaUnmap, and a frame Dom0 still pins stays allocated.
 * - `populatePhysmap(gpa, length)`: XENMEM_populate_physmap in 4 KiB extents
 *   (extent_order 0, as Linux's balloon driver asks), fresh frames; -ENOMEM
 *   when the host runs out (what was populated is given back).
 * Both answer -EINVAL for a range that is not page-aligned, is empty or leaves
 * the guest's frame space, and populate also for a range holding a frame (the
 * balloon driver only repopulates what it gave back); -ESRCH once the guest is
 * not running. Nothing changes on an error.
 *
 * KVM's memslot operations have no Xen counterpart: an HVM guest's memory is
 * its P2M, not slots of the device model's address space, so deleting and
 * recreating a slot with its contents (an SMRAM or ROM remap) or moving one
 * (a BAR move) is not something Xen does to guest RAM; scenarios that ask for
 * them say "not supported by" this adapter.
 */
import { ERRNO, PAGE_SIZE, type PlatformVm } from "@vgpu-iommu/core";
import type { HypervisorDriver, ScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { XenPlatformVm } from "./xen-platform.js";
import { P2mType } from "./p2m.js";
import { guestBalloon } from "./scenario-guest-balloon.js";

const PAGE = BigInt(PAGE_SIZE);

export function xenHypervisorDriver(vm: XenPlatformVm): HypervisorDriver {
  const guest = vm.guest;
  /** [first, first + n) in frames, or a negative errno. */
  const frames = (gpa: bigint, length: bigint): { first: number; n: number } | number => {
    if (guest.state !== "running") return -ERRNO.ESRCH;
    if (gpa < 0n || length <= 0n || gpa % PAGE !== 0n || length % PAGE !== 0n || (gpa + length) / PAGE > BigInt(guest.maxGfn)) return -ERRNO.EINVAL;
    return { first: Number(gpa / PAGE), n: Number(length / PAGE) };
  };
  return {
    async decreaseReservation(gpa, length) {
      const r = frames(gpa, length);
      if (typeof r === "number") return r;
      return BigInt(guest.decreaseReservation(r.first, r.n)) * PAGE;
    },
    async populatePhysmap(gpa, length) {
      const r = frames(gpa, length);
      if (typeof r === "number") return r;
      const p2m = guest.p2m!;
      for (let gfn = r.first; gfn < r.first + r.n; gfn++) if (p2m.type(gfn) !== P2mType.invalid) return -ERRNO.EINVAL;
      const done = guest.populatePhysmap(r.first, r.n, false);
      if (done === r.n) return 0;
      guest.decreaseReservation(r.first, done);
      return -ERRNO.ENOMEM;
    },
  };
}

export const xenScenarioProvider: ScenarioProvider = {
  hypervisorOps: ["decreaseReservation", "populatePhysmap"],
  hypervisorDriver(vm: PlatformVm) {
    return vm instanceof XenPlatformVm ? xenHypervisorDriver(vm) : undefined;
  },
  scenarios: [guestBalloon],
};
