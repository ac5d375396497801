/**
 * The XenGT shortcut (intel/gvt-linux xengt.c): on a PV Dom0 whose IOMMU
 * context maps all RAM 1:1, "DMA-mapping" a guest page is a lookup,
 * `dma_addr = mfn << 12`, and unmapping does nothing.
 *
 * Model: valid only where Dom0's devices reach every frame at its MFN (a PV
 * Dom0 in non-strict or passthrough mode); anywhere else the address would
 * fault, so construction is refused with EINVAL (the intent, where XenGT's
 * own check was a no-op on an unsigned value). As in XenGT, `size` is not
 * checked: a multi-page request assumes machine contiguity, so only its first
 * frame is guaranteed to be what the caller meant. There is nothing to unmap
 * and no isolation; the maps and (no-op) unmaps are counted.
 *
 * Invariant: mapGuestPage(mfn) = mfn << 12, and a Dom0 device's DMA there
 * reaches `mfn` (the context is identity over RAM).
 */
import type { Dom0IommuMode } from "./dom0-iommu.js";
import { xenError } from "./xen-error.js";

export class XenGtIdentity {
  maps = 0;
  unmaps = 0;

  constructor(
    mode: Dom0IommuMode,
    readonly dom0Kind: "pv" | "pvh",
  ) {
    if (dom0Kind !== "pv" || !mode.reachesAllRam)
      throw xenError("EINVAL", "xengt-identity-needs-nonstrict-pv-dom0", undefined, { dom0: dom0Kind, strict: mode.strict, passthrough: mode.passthrough });
  }

  /** dma_map_guest_page(gfn -> mfn, size): the MFN's bus address; `size` is ignored, as in XenGT. */
  mapGuestPage(mfn: number, _size: number): bigint {
    this.maps++;
    return BigInt(mfn) << 12n;
  }

  /** dma_unmap_guest_page: nothing to do. */
  unmapGuestPage(_addr: bigint): void {
    this.unmaps++;
  }
}
