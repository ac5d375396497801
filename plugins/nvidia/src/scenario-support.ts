/**
 * The NVIDIA-like vendor's contribution to scenarios: a guest driver standing
 * for the guest's RM, which asks the host for device addresses of its memory
 * in batches (nv_vgpu_translate_gfn_to_pfn in GET_IOVA mode) and releases them
 * (nv_vgpu_unpin_pages). A slot is one page of a guest memory descriptor;
 * pointing a slot at another frame releases the old one first, and a frame
 * several slots use is asked for once (RM refuses a frame already pinned).
 */
import type { PlatformVm, Vgpu } from "@vgpu-iommu/core";
import type { GuestDriver, ScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { NvidiaVgpu } from "./nvidia-vgpu.js";

/** Memory-descriptor pages a guest driver may hold at once. */
export const GUEST_SLOTS = 1 << 16;

export function nvidiaGuestDriver(vgpu: NvidiaVgpu): GuestDriver {
  // slot -> gfn + 1 (0: empty); the guest's own count of slots per frame, so a frame is asked for once.
  const held = new Float64Array(GUEST_SLOTS);
  const users = new Map<number, number>();
  const release = (first: number, n: number): void => {
    const gfns: number[] = [];
    for (let s = first; s < first + n; s++) {
      if (held[s] === 0) continue;
      const gfn = held[s]! - 1;
      held[s] = 0;
      const left = users.get(gfn)! - 1;
      if (left > 0) users.set(gfn, left);
      else {
        users.delete(gfn);
        gfns.push(gfn);
      }
    }
    if (gfns.length > 0) vgpu.unpinGfns(gfns, "GET_IOVA");
  };
  return {
    slots: GUEST_SLOTS,
    /** All or nothing, as RM's request is: on an error (ENOMEM, EINVAL) no slot changes. */
    map(first, gfns) {
      release(first, gfns.length);
      const fresh = [...new Set(Array.from(gfns).filter((g) => !users.has(g)))];
      if (fresh.length > 0) vgpu.translateGfns(fresh, "GET_IOVA");
      for (let i = 0; i < gfns.length; i++) {
        const gfn = gfns[i]!;
        held[first + i] = gfn + 1;
        users.set(gfn, (users.get(gfn) ?? 0) + 1);
      }
    },
    unmap: release,
    visibleAddresses: () => vgpu.deviceVisibleAddresses(),
  };
}

export const nvidiaScenarioProvider: ScenarioProvider = {
  guestOps: ["map", "unmap", "visibleAddresses"],
  guestDriver: (vgpu: Vgpu, _vm: PlatformVm) => (vgpu instanceof NvidiaVgpu ? nvidiaGuestDriver(vgpu) : undefined),
};
