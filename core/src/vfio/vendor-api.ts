/**
 * The vendor-facing kernel API of VFIO (vfio_main.c front ends).
 *
 * - Gen C/D (Linux 6.0+): vfioPinPages / vfioUnpinPages over a contiguous IOVA
 *   range, invalidation through the device's `dmaUnmap` op.
 * - Gen A/B (4.10-5.19): vfioPinPagesArray / vfioUnpinPagesArray over an
 *   arbitrary array of IOVA page numbers, invalidation through a notifier.
 * - vfioDmaRw: copy to or from guest IOVA with no pin left behind.
 *
 * Failures throw VfioError with the kernel's errno, a stable reason and the
 * offending IOVA; pinning is all or nothing. A WARN of the kernel is a WARN of
 * the host's KernelLog.
 */
import { VfioError } from "../errors/kernel-error.js";
import { pageOf, type Iova } from "../address/address.js";
import type { Process } from "../host/process.js";
import type { VfioDevice } from "./vfio-device.js";
import type { DmaUnmapNotifier, Type1Iommu } from "./type1/type1-iommu.js";
import { VFIO_PIN_PAGES_MAX_ENTRIES } from "./type1/type1-iommu.js";

export { IOMMU_READ, IOMMU_WRITE, VFIO_IOMMU_NOTIFY_DMA_UNMAP, VFIO_PIN_PAGES_MAX_ENTRIES } from "./type1/type1-iommu.js";

function backend(vdev: VfioDevice): Type1Iommu | undefined {
  vdev.kernel.assertAlive();
  return vdev.container?.iommu;
}

/** vfio_pin_pages(vdev, iova, npage, prot, pages): pins and fills `pages` with host frames; returns npage. */
export function vfioPinPages(vdev: VfioDevice, iova: Iova, npage: number, prot: number, pages: Uint32Array): number {
  return vfioPinPageRange(vdev, pageOf(iova), npage, prot, pages, 0);
}

/**
 * vfio_pin_pages as a C caller makes it mid-list: the IOVA as a page number
 * and the output at `&pages[at]`, so a caller pinning run after run builds no
 * u64 and no sub-array per run. Same checks, in the same order.
 */
export function vfioPinPageRange(vdev: VfioDevice, iovaPage: number, npage: number, prot: number, pages: Uint32Array, at: number): number {
  const iommu = backend(vdev);
  if (!(pages instanceof Uint32Array) || !Number.isInteger(npage) || npage <= 0 || !Number.isInteger(at) || at < 0) throw new VfioError("EINVAL", "pin-bad-arguments", { npage, at });
  if (vdev.kernel.warnOn(!vdev.isOpen, "vfio_pin_pages", "device not open", { device: vdev.name })) throw new VfioError("EINVAL", "pin-device-not-open");
  if (vdev.dmaUnmap === undefined) throw new VfioError("EINVAL", "pin-without-dma-unmap");
  if (vdev.container === undefined) throw new VfioError("EINVAL", "pin-no-container");
  if (npage > VFIO_PIN_PAGES_MAX_ENTRIES) throw new VfioError("E2BIG", "pin-too-many-pages", { npage });
  if (iommu === undefined) throw new VfioError("ENOTTY", "pin-no-iommu-driver");
  if (pages.length - at < npage) throw new VfioError("EFAULT", "pin-output-too-short", { npage, length: pages.length - at });
  return iommu.pinPages(vdev, iovaPage, npage, prot, pages, at);
}

/** vfio_unpin_pages(vdev, iova, npage): void; misuse is a WARN, never an error. */
export function vfioUnpinPages(vdev: VfioDevice, iova: Iova, npage: number): void {
  vfioUnpinPageRange(vdev, pageOf(iova), npage);
}

/** vfio_unpin_pages with the IOVA as a page number. */
export function vfioUnpinPageRange(vdev: VfioDevice, iovaPage: number, npage: number): void {
  const iommu = backend(vdev);
  if (vdev.kernel.warnOn(!vdev.isOpen, "vfio_unpin_pages", "device not open", { device: vdev.name })) return;
  if (vdev.kernel.warnOn(vdev.dmaUnmap === undefined, "vfio_unpin_pages", "device has no dma_unmap", { device: vdev.name })) return;
  if (iommu === undefined) return;
  if (vdev.kernel.warnOn(!Number.isInteger(npage) || npage <= 0 || npage > VFIO_PIN_PAGES_MAX_ENTRIES, "vfio_unpin_pages", "bad npage", { npage })) return;
  iommu.unpinPages(vdev, iovaPage, npage);
}

/** vfio_dma_rw: copies `data.length` bytes at `iova`; `current` undefined is a kthread. */
export function vfioDmaRw(vdev: VfioDevice, iova: Iova, data: Uint8Array, write: boolean, current?: Process): void {
  const iommu = backend(vdev);
  // vfio_assert_device_open() is a WARN_ON_ONCE, evaluated only once the buffer checks pass.
  if (!(data instanceof Uint8Array) || data.length <= 0 || vdev.kernel.warnOnce(!vdev.isOpen, "vfio_assert_device_open", "device not open", { device: vdev.name })) {
    throw new VfioError("EINVAL", "rw-bad-arguments");
  }
  if (iommu === undefined) throw new VfioError(vdev.container === undefined ? "EINVAL" : "ENOTTY", "rw-no-iommu-driver");
  iommu.dmaRw(iova, data, write, current);
}

/** Gen A vfio_pin_pages(dev, user_pfn[], npage, prot, phys_pfn[]): returns npage. */
export function vfioPinPagesArray(vdev: VfioDevice, userPfns: ArrayLike<number>, npage: number, prot: number, physPfns: Uint32Array): number {
  const iommu = backend(vdev);
  if (userPfns === null || typeof userPfns !== "object" || !(physPfns instanceof Uint32Array) || !Number.isInteger(npage) || npage <= 0) throw new VfioError("EINVAL", "pin-bad-arguments", { npage });
  if (npage > VFIO_PIN_PAGES_MAX_ENTRIES) throw new VfioError("E2BIG", "pin-too-many-pages", { npage });
  if (vdev.container === undefined || iommu === undefined) throw new VfioError("EINVAL", "pin-no-container-user");
  if (userPfns.length < npage || physPfns.length < npage) throw new VfioError("EFAULT", "pin-array-too-short", { npage });
  return iommu.pinPagesArray(vdev, userPfns, npage, prot, physPfns);
}

/** Gen A vfio_unpin_pages(dev, user_pfn[], npage): returns the count unpinned. */
export function vfioUnpinPagesArray(vdev: VfioDevice, userPfns: ArrayLike<number>, npage: number): number {
  const iommu = backend(vdev);
  if (userPfns === null || typeof userPfns !== "object" || !Number.isInteger(npage) || npage <= 0) throw new VfioError("EINVAL", "unpin-bad-arguments", { npage });
  if (npage > VFIO_PIN_PAGES_MAX_ENTRIES) throw new VfioError("E2BIG", "unpin-too-many-pages", { npage });
  if (vdev.container === undefined || iommu === undefined) throw new VfioError("EINVAL", "unpin-no-container-user");
  return iommu.unpinPagesArray(vdev, userPfns, Math.min(npage, userPfns.length));
}

/** Gen A vfio_register_notifier(dev, VFIO_IOMMU_NOTIFY, &events, nb); `events.value` keeps unknown bits. */
export function vfioRegisterNotifier(vdev: VfioDevice, events: { value: number }, nb: DmaUnmapNotifier): void {
  const iommu = backend(vdev);
  if (vdev.container === undefined || iommu === undefined) throw new VfioError("EINVAL", "notifier-no-container-user");
  iommu.registerNotifier(events, nb);
}

export function vfioUnregisterNotifier(vdev: VfioDevice, nb: DmaUnmapNotifier): void {
  const iommu = backend(vdev);
  if (iommu === undefined) throw new VfioError("EINVAL", "notifier-no-container-user");
  iommu.unregisterNotifier(nb);
}
