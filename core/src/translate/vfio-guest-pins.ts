/**
 * The GuestPinPort of a vGPU on a VFIO container: guest frames are IOVA pages
 * (QEMU maps guest RAM at iova = GPA), pinned with vfioPinPages in runs of
 * contiguous frames, so the pin and its memlock charge happen once, in type1.
 */
import type { GuestPinPort } from "../hypervisor/guest-pin-port.js";
import type { VfioDevice } from "../vfio/vfio-device.js";
import { vfioPinPageRange, vfioUnpinPageRange, IOMMU_READ, IOMMU_WRITE } from "../vfio/vendor-api.js";

export class VfioGuestPins implements GuestPinPort {
  constructor(readonly vdev: VfioDevice) {}

  pin(gfns: ArrayLike<number>, n: number, write: boolean, out: Uint32Array): void {
    const prot = IOMMU_READ | (write ? IOMMU_WRITE : 0);
    let done = 0;
    try {
      while (done < n) {
        const run = runLength(gfns, done, n);
        vfioPinPageRange(this.vdev, gfns[done]!, run, prot, out, done);
        done += run;
      }
    } catch (e) {
      this.unpin(gfns, done);
      throw e;
    }
  }

  unpin(gfns: ArrayLike<number>, n: number): void {
    for (let done = 0; done < n; ) {
      const run = runLength(gfns, done, n);
      vfioUnpinPageRange(this.vdev, gfns[done]!, run);
      done += run;
    }
  }
}

/** Length of the run of consecutive frames starting at `from`. */
function runLength(gfns: ArrayLike<number>, from: number, n: number): number {
  let k = 1;
  while (from + k < n && gfns[from + k] === gfns[from]! + k) k++;
  return k;
}
