/**
 * The vendor-facing pin API of VFIO (linux-vfio.md sections 2.3-2.5, 4.1, and
 * invariants 13-15): vfioPinPages / vfioUnpinPages (contiguous IOVA, Gen C),
 * the array form with its notifier (Gen A/B), and vfioDmaRw.
 *
 * Suites run over the fixture variants that have an emulated device
 * (mdev-only, mixed, memlock-limited); the numbers differ only where an IOMMU
 * domain exists (mixed): MAP_DMA already pinned and charged every page, so an
 * external pin adds a second host pin and no charge.
 */
import { expect } from "chai";
import { Fixture, VARIANTS, VTD, X86_MSI, type Variant, iovaOf } from "../testing/fixture.js";
import { expectKernelError } from "../testing/errors.js";
import { createHost } from "../host/host.js";

import { VfioError } from "../errors/kernel-error.js";
import { ERRNO } from "../errors/errno.js";
import { pageOf, type Iova } from "../address/address.js";
import {
  IOMMU_READ,
  IOMMU_WRITE,
  VFIO_IOMMU_NOTIFY_DMA_UNMAP,
  VFIO_PIN_PAGES_MAX_ENTRIES,
  vfioDmaRw,
  vfioPinPageRange,
  vfioPinPages,
  vfioPinPagesArray,
  vfioRegisterNotifier,
  vfioUnpinPageRange,
  vfioUnpinPages,
  vfioUnpinPagesArray,
  vfioUnregisterNotifier,
} from "./vendor-api.js";
import {
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_VADDR,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_DMA_UNMAP_FLAG_VADDR,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UPDATE_VADDR,
  type DmaUnmapNotifier,
} from "./type1/type1-iommu.js";
import { VFIO_CHECK_EXTENSION, VFIO_GROUP_GET_DEVICE_FD, VFIO_GROUP_SET_CONTAINER, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, VFIO_SET_IOMMU } from "./uapi.js";

const PAGE = 4096n;
const RW = IOMMU_READ | IOMMU_WRITE;
const MAP_RW = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
/** The fixture's guest RAM: 4 MiB. */
const GUEST_PAGES = 1024;
/** A value no frame has, to see which output slots a failed pin wrote. */
const UNTOUCHED = 0xdeadbeef;

const DEVICE_VARIANTS: readonly Variant[] = VARIANTS.filter((v) => v !== "iommu-backed");

/** Pages that MAP_DMA pins and charges in this variant: only a container with an IOMMU domain pins at map time. */
const atMap = (variant: Variant, npages: number): number => (variant === "mixed" ? npages : 0);
/** What the first external pin of an IOVA charges: 1 only without an IOMMU domain (section 3.1). */
const pinCharge = (variant: Variant): number => (variant === "mixed" ? 0 : 1);

/** The host frame the fixture's process maps at guest RAM page `offset`. */
const frameAt = (f: Fixture, offset: number): number => f.qemu.mm.translate(pageOf(f.guestRam) + offset);

describe("vendor API: vfioPinPages (contiguous form)", () => {
  for (const variant of DEVICE_VARIANTS) {
    describe(variant, () => {
      it("returns npage and fills pages with the frames the mapping's mm maps at that HVA", async () => {
        const f = await Fixture.create({ variant });
        // IOVA page 256 maps guest RAM from page 8: the pin must follow vaddr + (iova - dma.iova).
        expect(await f.map(256n * PAGE, 256n * PAGE, 8n * PAGE)).to.equal(0);
        f.check();
        const base = atMap(variant, 256);
        expect(f.host.phys.totalPins).to.equal(base);
        const pages = f.pin(256 + 3, 16);
        for (let i = 0; i < 16; i++) {
          const frame = frameAt(f, 8 + 3 + i);
          expect(pages[i]).to.equal(frame);
          expect(f.host.phys.pins[frame]).to.equal(1 + atMap(variant, 1));
        }
        expect(new Set(pages).size).to.equal(16);
        const dma = f.dmaAt(256);
        expect(dma.vpfnCount).to.equal(16);
        expect(dma.lockedVm).to.equal(base + 16 * pinCharge(variant));
        expect(f.qemu.mm.lockedVm).to.equal(base + 16 * pinCharge(variant));
        expect(f.host.phys.totalPins).to.equal(base + 16);
        await f.unmapAll();
        expect(f.host.phys.totalPins).to.equal(0);
        expect(f.qemu.mm.lockedVm).to.equal(0);
        await f.finish();
      });

      it("counts references per IOVA: one vfio_pfn, one host pin and one charge however often it is pinned", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const base = atMap(variant, GUEST_PAGES);
        const first = f.pin(5, 1);
        const again = f.pin(4, 3);
        const dma = f.dmaAt(0);
        expect(again[1]).to.equal(first[0]);
        expect([dma.refsAt(4), dma.refsAt(5), dma.refsAt(6)]).to.deep.equal([1, 2, 1]);
        expect(dma.vpfnCount).to.equal(3);
        expect(f.host.phys.pins[first[0]!]).to.equal(1 + atMap(variant, 1));
        expect(f.host.phys.totalPins).to.equal(base + 3);
        expect(f.qemu.mm.lockedVm).to.equal(base + 3 * pinCharge(variant));
        expect(dma.lockedVm).to.equal(base + 3 * pinCharge(variant));
        f.unpin(4, 3);
        expect([dma.refsAt(4), dma.refsAt(5), dma.refsAt(6)]).to.deep.equal([0, 1, 0]);
        expect(f.host.phys.pins[first[0]!]).to.equal(1 + atMap(variant, 1));
        expect(f.qemu.mm.lockedVm).to.equal(base + pinCharge(variant));
        f.unpin(5, 1);
        expect(dma.vpfnCount).to.equal(0);
        expect(f.host.phys.pins[first[0]!]).to.equal(atMap(variant, 1));
        expect(f.host.phys.totalPins).to.equal(base);
        expect(f.qemu.mm.lockedVm).to.equal(base);
        await f.finish();
      });

      it(`takes at most ${VFIO_PIN_PAGES_MAX_ENTRIES} pages a call: ${VFIO_PIN_PAGES_MAX_ENTRIES + 1} is -E2BIG`, async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const base = atMap(variant, GUEST_PAGES);
        const big = new Uint32Array(513).fill(UNTOUCHED);
        expectKernelError(() => vfioPinPages(f.device!, iovaOf(0), 513, RW, big), "E2BIG", "pin-too-many-pages", VfioError);
        expect(big.every((x) => x === UNTOUCHED)).to.equal(true);
        expect(f.host.stats().externalPins).to.equal(0);
        if (variant === "memlock-limited") {
          // 512 fresh pages exceed the 64-page RLIMIT_MEMLOCK: pages 0-63 pin and charge, page 64 fails, all undone.
          const pages = new Uint32Array(512).fill(UNTOUCHED);
          const err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(0), 512, RW, pages), "ENOMEM", "pin-external-failed", VfioError);
          expect(err.fields.done).to.equal(64);
          expect(pages.subarray(0, 65).every((x) => x === 0)).to.equal(true);
          expect(pages.subarray(65).every((x) => x === UNTOUCHED)).to.equal(true);
          expect(f.qemu.mm.lockedVm).to.equal(0);
          expect(f.host.phys.totalPins).to.equal(0);
          expect(f.host.kernel.messages).to.deep.equal(["vfio_pin_page_external: Task qemu (100) RLIMIT_MEMLOCK (262144) exceeded"]);
        } else {
          f.pin(0, 512);
          expect(f.host.phys.totalPins).to.equal(base + 512);
          expect(f.qemu.mm.lockedVm).to.equal(base + 512 * pinCharge(variant));
          expect(f.dmaAt(0).vpfnCount).to.equal(512);
          f.unpin(0, 512);
        }
        f.check();
        expect(f.host.phys.totalPins).to.equal(base);
        await f.finish();
      });

      it("rejects npage 0 and an output that is not a Uint32Array with -EINVAL, a short output with -EFAULT", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const dev = f.device!;
        expectKernelError(() => vfioPinPages(dev, iovaOf(0), 0, RW, new Uint32Array(1)), "EINVAL", "pin-bad-arguments", VfioError);
        expectKernelError(() => vfioPinPages(dev, iovaOf(0), 1, RW, [0] as unknown as Uint32Array), "EINVAL", "pin-bad-arguments", VfioError);
        expectKernelError(() => vfioPinPages(dev, iovaOf(0), 1, RW, new Uint8Array(4) as unknown as Uint32Array), "EINVAL", "pin-bad-arguments", VfioError);
        // Model convention: an output array shorter than npage is a fault on the caller's buffer.
        expectKernelError(() => vfioPinPages(dev, iovaOf(0), 4, RW, new Uint32Array(2)), "EFAULT", "pin-output-too-short", VfioError);
        f.check();
        expect(f.host.stats().externalPins).to.equal(0);
        expect(f.host.phys.totalPins).to.equal(atMap(variant, GUEST_PAGES));
        expect(f.host.kernel.warnings).to.deep.equal([]);
        await f.finish();
      });

      it("by page number into pages[at..]: the same pins as vfioPinPages, nothing written outside; a bad offset is -EINVAL, one past the end -EFAULT", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const dev = f.device!;
        const pages = new Uint32Array(6);
        expect(vfioPinPageRange(dev, pageOf(iovaOf(0)) + 5, 3, RW, pages, 2)).to.equal(3);
        expect([...pages]).to.deep.equal([0, 0, frameAt(f, 5), frameAt(f, 6), frameAt(f, 7), 0]);
        expect(f.host.stats().externalPins).to.equal(3);
        for (const at of [-1, 0.5]) expectKernelError(() => vfioPinPageRange(dev, pageOf(iovaOf(0)), 1, RW, pages, at), "EINVAL", "pin-bad-arguments", VfioError);
        expectKernelError(() => vfioPinPageRange(dev, pageOf(iovaOf(0)), 2, RW, pages, 5), "EFAULT", "pin-output-too-short", VfioError);
        expect(f.host.stats().externalPins).to.equal(3);
        vfioUnpinPageRange(dev, pageOf(iovaOf(0)) + 5, 3);
        f.check();
        expect(f.host.stats().externalPins).to.equal(0);
        expect(f.host.phys.totalPins).to.equal(atMap(variant, GUEST_PAGES));
        expect(f.host.kernel.warnings).to.deep.equal([]);
        await f.finish();
      });

      it("on a device that is not open: -EINVAL and one WARN per call; npage 0 is refused before the WARN", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        f.pin(0, 2);
        f.unpin(0, 2);
        expect(await f.host.close(f.qemu, f.deviceFd!)).to.equal(0);
        expect(f.device!.isOpen).to.equal(false);
        const pages = new Uint32Array(4);
        expectKernelError(() => vfioPinPages(f.device!, iovaOf(0), 4, RW, pages), "EINVAL", "pin-device-not-open", VfioError);
        expect(f.host.kernel.warnings.map((w) => w.site)).to.deep.equal(["vfio_pin_pages"]);
        expect([...pages]).to.deep.equal([0, 0, 0, 0]);
        expectKernelError(() => vfioPinPages(f.device!, iovaOf(0), 0, RW, pages), "EINVAL", "pin-bad-arguments", VfioError);
        expect(f.host.kernel.warnings.length).to.equal(1);
        // vfio_unpin_pages returns void: a closed device is a WARN and nothing else.
        vfioUnpinPages(f.device!, iovaOf(0), 1);
        expect(f.host.kernel.warnings.map((w) => w.site)).to.deep.equal(["vfio_pin_pages", "vfio_unpin_pages"]);
        f.check();
        expect(f.host.stats().externalPins).to.equal(0);
        expect(f.host.phys.totalPins).to.equal(atMap(variant, GUEST_PAGES));
        expect(f.qemu.mm.lockedVm).to.equal(atMap(variant, GUEST_PAGES));
        await f.finish({ warnings: 2 });
      });

      it("refuses a device without dmaUnmap (-EINVAL); its unpin is a WARN; a Gen A notifier still lets it pin by array", async () => {
        const f = await Fixture.create({ variant, deviceOps: {} });
        expect(await f.map()).to.equal(0);
        const dev = f.device!;
        expect(dev.dmaUnmap).to.equal(undefined);
        expect(f.iommu.devices.length).to.equal(0);
        expectKernelError(() => vfioPinPages(dev, iovaOf(0), 1, RW, new Uint32Array(1)), "EINVAL", "pin-without-dma-unmap", VfioError);
        expect(f.host.kernel.warnings).to.deep.equal([]);
        vfioUnpinPages(dev, iovaOf(0), 1);
        expect(f.host.kernel.warnings.map((w) => w.message)).to.deep.equal(["device has no dma_unmap"]);
        // Gen A/B: the notifier chain, not dma_unmap, is what allows pinning.
        const nb: DmaUnmapNotifier = () => {};
        vfioRegisterNotifier(dev, { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP }, nb);
        const phys = new Uint32Array(2);
        expect(vfioPinPagesArray(dev, [3, 9], 2, RW, phys)).to.equal(2);
        expect([...phys]).to.deep.equal([frameAt(f, 3), frameAt(f, 9)]);
        f.check();
        expect(f.qemu.mm.lockedVm).to.equal(atMap(variant, GUEST_PAGES) + 2 * pinCharge(variant));
        expect(vfioUnpinPagesArray(dev, [3, 9], 2)).to.equal(2);
        vfioUnregisterNotifier(dev, nb);
        f.check();
        expect(f.host.stats().externalPins).to.equal(0);
        await f.finish({ warnings: 1 });
      });

      // The memlock-limited variant is mdev-only with a limit: nothing more to see on v1.
      if (variant !== "memlock-limited") {
        it("refuses a TYPE1 (v1) container with -EACCES; unpin there is a WARN", async () => {
          const f = await Fixture.create({ variant, v1: true });
          expect(f.iommu.v2).to.equal(false);
          expect(await f.map()).to.equal(0);
          const pages = new Uint32Array(1);
          expectKernelError(() => vfioPinPages(f.device!, iovaOf(0), 1, RW, pages), "EACCES", "pin-on-type1-v1", VfioError);
          const nb: DmaUnmapNotifier = () => {};
          vfioRegisterNotifier(f.device!, { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP }, nb);
          expectKernelError(() => vfioPinPagesArray(f.device!, [0], 1, RW, pages), "EACCES", "pin-on-type1-v1", VfioError);
          expectKernelError(() => vfioUnpinPagesArray(f.device!, [0], 1), "EACCES", "unpin-on-type1-v1", VfioError);
          vfioUnregisterNotifier(f.device!, nb);
          expect(f.host.kernel.warnings).to.deep.equal([]);
          vfioUnpinPages(f.device!, iovaOf(0), 1);
          expect(f.host.kernel.warnings.map((w) => w.message)).to.deep.equal(["unpin on a type1 v1 container"]);
          f.check();
          expect(f.host.stats().externalPins).to.equal(0);
          expect(f.qemu.mm.lockedVm).to.equal(atMap(variant, GUEST_PAGES));
          await f.finish({ warnings: 1 });
        });
      }

      it("refuses an IOVA outside every mapping with -EINVAL", async () => {
        const f = await Fixture.create({ variant });
        const pages = new Uint32Array(1);
        let err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(0), 1, RW, pages), "EINVAL", "pin-outside-mappings", VfioError);
        expect(err.fields).to.deep.equal({ iova: 0n, done: 0 });
        expect(await f.map(0n, 16n * PAGE)).to.equal(0);
        err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(16), 1, RW, pages), "EINVAL", "pin-outside-mappings", VfioError);
        expect(err.fields).to.deep.equal({ iova: 16n * PAGE, done: 0 });
        expectKernelError(() => vfioPinPages(f.device!, iovaOf(100_000), 1, RW, pages), "EINVAL", "pin-outside-mappings", VfioError);
        f.check();
        expect(f.host.stats().externalPins).to.equal(0);
        expect(f.qemu.mm.lockedVm).to.equal(atMap(variant, 16));
        await f.finish();
      });

      it("refuses a prot the mapping does not allow with -EPERM", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map(0n, 16n * PAGE, 0n, VFIO_DMA_MAP_FLAG_READ)).to.equal(0);
        expect(await f.map(16n * PAGE, 16n * PAGE, 16n * PAGE, VFIO_DMA_MAP_FLAG_WRITE)).to.equal(0);
        f.check();
        const pages = new Uint32Array(1);
        let err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(1), 1, IOMMU_WRITE, pages), "EPERM", "pin-prot-not-allowed", VfioError);
        expect(err.fields).to.deep.equal({ iova: PAGE, prot: IOMMU_WRITE, mappingProt: IOMMU_READ, done: 0 });
        expectKernelError(() => vfioPinPages(f.device!, iovaOf(1), 1, RW, pages), "EPERM", "pin-prot-not-allowed", VfioError);
        err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(17), 1, IOMMU_READ, pages), "EPERM", "pin-prot-not-allowed", VfioError);
        expect(err.fields["mappingProt"]).to.equal(IOMMU_WRITE);
        expect(f.host.stats().externalPins).to.equal(0);
        expect(f.pin(1, 1, IOMMU_READ)[0]).to.equal(frameAt(f, 1));
        expect(f.pin(17, 1, IOMMU_WRITE)[0]).to.equal(frameAt(f, 17));
        expect(f.qemu.mm.lockedVm).to.equal(atMap(variant, 32) + 2 * pinCharge(variant));
        f.unpin(1, 1);
        f.unpin(17, 1);
        expect(f.qemu.mm.lockedVm).to.equal(atMap(variant, 32));
        await f.finish();
      });

      it("is all or nothing: a last page outside the mapping undoes every pin, reference and charge of the call", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map(0n, 16n * PAGE)).to.equal(0);
        const held = f.pin(5, 1)[0]!;
        const dma = f.dmaAt(0);
        const pins = f.host.phys.totalPins;
        const charged = f.qemu.mm.lockedVm;
        expect(charged).to.equal(atMap(variant, 16) + pinCharge(variant));
        // Pages 3..15 are in the mapping (page 5 already pinned once), page 16 is not.
        const pages = new Uint32Array(14).fill(UNTOUCHED);
        const err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(3), 14, RW, pages), "EINVAL", "pin-outside-mappings", VfioError);
        expect(err.fields).to.deep.equal({ iova: 16n * PAGE, done: 13 });
        f.check();
        expect([...pages]).to.deep.equal(new Array<number>(14).fill(0));
        expect(dma.refsAt(5)).to.equal(1);
        expect(dma.vpfnCount).to.equal(1);
        expect(f.host.phys.totalPins).to.equal(pins);
        expect(f.qemu.mm.lockedVm).to.equal(charged);
        expect(dma.lockedVm).to.equal(charged);
        expect(f.host.phys.pins[held]).to.equal(1 + atMap(variant, 1));
        for (let p = 3; p < 16; p++) if (p !== 5) expect(f.host.phys.pins[frameAt(f, p)], `page ${p}`).to.equal(atMap(variant, 1));
        f.unpin(5, 1);
        await f.finish();
      });

      it("is all or nothing: a failure in the middle leaves the slots after it untouched and undoes references taken before", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map(0n, 16n * PAGE)).to.equal(0);
        expect(await f.map(16n * PAGE, 16n * PAGE, 16n * PAGE, VFIO_DMA_MAP_FLAG_READ)).to.equal(0);
        f.pin(15, 1);
        const dma = f.dmaAt(0);
        const pins = f.host.phys.totalPins;
        const charged = f.qemu.mm.lockedVm;
        // Pages 14 and 15 (already pinned) succeed, page 16 is in a READ-only mapping.
        const pages = new Uint32Array(4).fill(UNTOUCHED);
        const err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(14), 4, RW, pages), "EPERM", "pin-prot-not-allowed", VfioError);
        expect(err.fields["done"]).to.equal(2);
        f.check();
        expect([...pages]).to.deep.equal([0, 0, 0, UNTOUCHED]);
        expect([dma.refsAt(14), dma.refsAt(15)]).to.deep.equal([0, 1]);
        expect(f.host.phys.totalPins).to.equal(pins);
        expect(f.qemu.mm.lockedVm).to.equal(charged);
        f.unpin(15, 1);
        await f.finish();
      });

      it("refuses a PFNMAP (MMIO) mapping with -EINVAL: no struct page to return, nothing pinned or charged", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const bar = f.qemu.mmap({ length: 16n * PAGE, backing: "pfnmap" });
        // The BAR is mapped right after guest RAM, so a pin can run from RAM into it.
        expect(await f.mapFrom(f.qemu, f.containerFd, bar, BigInt(GUEST_PAGES) * PAGE, 16n * PAGE)).to.equal(0);
        f.check();
        const base = atMap(variant, GUEST_PAGES);
        expect(f.qemu.mm.lockedVm).to.equal(base);
        expect(f.host.phys.totalPins).to.equal(base);
        let err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(GUEST_PAGES), 1, RW, new Uint32Array(1)), "EINVAL", "pin-pfn-without-struct-page", VfioError);
        expect(err.fields).to.deep.equal({ iova: BigInt(GUEST_PAGES) * PAGE, done: 0 });
        const pages = new Uint32Array(4).fill(UNTOUCHED);
        err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(GUEST_PAGES - 2), 4, RW, pages), "EINVAL", "pin-pfn-without-struct-page", VfioError);
        expect(err.fields["done"]).to.equal(2);
        f.check();
        expect([...pages]).to.deep.equal([0, 0, 0, UNTOUCHED]);
        expect(f.host.stats().externalPins).to.equal(0);
        expect(f.qemu.mm.lockedVm).to.equal(base);
        expect(f.host.phys.totalPins).to.equal(base);
        expect(f.dmaAt(GUEST_PAGES).lockedVm).to.equal(0);
        await f.finish();
      });

      it("cannot reach -EBUSY: UNMAP_DMA with VADDR is refused while an emulated group exists", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR)).to.equal(0);
        const inval = { argsz: 24, flags: VFIO_DMA_UNMAP_FLAG_VADDR, iova: 0n, size: BigInt(GUEST_PAGES) * PAGE };
        expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, inval)).to.equal(-ERRNO.EBUSY);
        expect(f.iommu.vaddrInvalidCount).to.equal(0);
        expect(f.dmaAt(0).vaddrInvalid).to.equal(false);
        f.pin(0, 1);
        f.unpin(0, 1);
        expect(f.host.kernel.warnings).to.deep.equal([]);
        await f.finish();
      });
    });
  }

  it("-EBUSY with one WARN_ONCE while a vaddr is invalid (an IOMMU-backed device with dma_unmap, no emulated group)", async () => {
    const host = createHost({ ramBytes: 1n << 30n, seed: 7 });
    const qemu = host.spawn({ comm: "qemu" });
    const ram = qemu.mmap({ length: 64n * PAGE });
    const containerFd = host.open(qemu, "/dev/vfio/vfio");
    const node = host.vfio.addIommuGroup(VTD, [X86_MSI]);
    const held = new Map<number, number>();
    const vdev = host.vfio.addDevice(node, "0000:01:00.0", {
      dmaUnmap(d, iova, length) {
        const first = pageOf(iova);
        for (const [page, refs] of [...held]) {
          if (page < first || page >= first + Number(length / PAGE)) continue;
          for (let r = 0; r < refs; r++) vfioUnpinPages(d, iovaOf(page), 1);
          held.delete(page);
        }
      },
    });
    const groupFd = host.open(qemu, `/dev/vfio/${node.number}`);
    expect(await host.ioctl(qemu, groupFd, VFIO_GROUP_SET_CONTAINER, containerFd)).to.equal(0);
    expect(await host.ioctl(qemu, containerFd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    const deviceFd = await host.ioctl(qemu, groupFd, VFIO_GROUP_GET_DEVICE_FD, "0000:01:00.0");
    expect(deviceFd).to.equal(5);
    const iommu = host.backends[0]!;
    expect(iommu.devices).to.deep.equal([vdev]);
    expect(await host.ioctl(qemu, containerFd, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR)).to.equal(1);
    const map = { argsz: 32, flags: MAP_RW, vaddr: ram, iova: 0n, size: 64n * PAGE };
    expect(await host.ioctl(qemu, containerFd, VFIO_IOMMU_MAP_DMA, map)).to.equal(0);
    host.assertInvariants();
    expect(qemu.mm.lockedVm).to.equal(64);
    // An IOMMU domain exists: the external pin adds a host pin and no charge.
    const pages = new Uint32Array(4);
    expect(vfioPinPages(vdev, iovaOf(0), 4, RW, pages)).to.equal(4);
    expect(host.phys.totalPins).to.equal(68);
    expect(qemu.mm.lockedVm).to.equal(64);
    vfioUnpinPages(vdev, iovaOf(0), 4);
    host.assertInvariants();

    const inval = { argsz: 24, flags: VFIO_DMA_UNMAP_FLAG_VADDR, iova: 0n, size: 64n * PAGE };
    expect(await host.ioctl(qemu, containerFd, VFIO_IOMMU_UNMAP_DMA, inval)).to.equal(0);
    expect(inval.size).to.equal(64n * PAGE);
    expect(iommu.vaddrInvalidCount).to.equal(1);
    host.assertInvariants();
    pages.fill(UNTOUCHED);
    expectKernelError(() => vfioPinPages(vdev, iovaOf(0), 4, RW, pages), "EBUSY", "pin-while-vaddr-invalid", VfioError);
    expect(host.kernel.warnings.map((w) => [w.site, w.message])).to.deep.equal([["vfio_pin_pages", "vfio_pin_pages not allowed with VFIO_UPDATE_VADDR"]]);
    expectKernelError(() => vfioPinPages(vdev, iovaOf(0), 4, RW, pages), "EBUSY", "pin-while-vaddr-invalid", VfioError);
    // The array form shares the check (5.12-6.1 kernels blocked there instead; current type1 fails).
    expectKernelError(() => vfioPinPagesArray(vdev, [0, 1], 2, RW, pages), "EBUSY", "pin-while-vaddr-invalid", VfioError);
    expect(host.kernel.warnings.length).to.equal(1);
    expectKernelError(() => vfioDmaRw(vdev, iovaOf(0), new Uint8Array(8), false), "EBUSY", "rw-while-vaddr-invalid", VfioError);
    expect(host.kernel.warnings.map((w) => w.site)).to.deep.equal(["vfio_pin_pages", "vfio_dma_rw"]);
    // Refused before the loop: the output is not written.
    expect([...pages]).to.deep.equal([UNTOUCHED, UNTOUCHED, UNTOUCHED, UNTOUCHED]);
    expect(host.phys.totalPins).to.equal(64);
    expect(qemu.mm.lockedVm).to.equal(64);
    host.assertInvariants();

    // Re-supplying the vaddr lifts the refusal.
    expect(await host.ioctl(qemu, containerFd, VFIO_IOMMU_MAP_DMA, { argsz: 32, flags: VFIO_DMA_MAP_FLAG_VADDR, vaddr: ram, iova: 0n, size: 64n * PAGE })).to.equal(0);
    expect(iommu.vaddrInvalidCount).to.equal(0);
    expect(vfioPinPages(vdev, iovaOf(2), 1, RW, pages)).to.equal(1);
    held.set(2, 1);
    host.assertInvariants();
    // UNMAP_DMA invalidates the device's pin through its dma_unmap before removing the mapping.
    expect(await host.ioctl(qemu, containerFd, VFIO_IOMMU_UNMAP_DMA, { argsz: 24, flags: VFIO_DMA_UNMAP_FLAG_ALL, iova: 0n, size: 0n })).to.equal(0);
    expect(held.size).to.equal(0);
    expect(await host.close(qemu, deviceFd)).to.equal(0);
    expect(await host.close(qemu, groupFd)).to.equal(0);
    expect(await host.close(qemu, containerFd)).to.equal(0);
    qemu.exit();
    expect(host.stats()).to.deep.include({ pinnedFrames: 0, warnings: 2, mappings: 0, externalPins: 0, crashed: false });
    expect(qemu.mm.lockedVm).to.equal(0);
  });

  it("-ENODEV once the mapping's mm is gone; an IOVA already pinned still takes a reference", async () => {
    const f = await Fixture.create({ variant: "mdev-only" });
    // A helper process receives the container fd (SCM_RIGHTS) and maps its own memory.
    const helper = f.host.spawn({ comm: "helper" });
    const fd = helper.installFile(f.qemu.files.get(f.containerFd)!);
    const hva = helper.mmap({ length: 16n * PAGE });
    expect(await f.mapFrom(helper, fd, hva, 0n, 16n * PAGE)).to.equal(0);
    const held = f.pin(3, 1)[0]!;
    expect(held).to.equal(helper.mm.translate(pageOf(hva) + 3));
    expect(helper.mm.lockedVm).to.equal(1);
    expect(f.qemu.mm.lockedVm).to.equal(0);
    helper.exit();
    expect(helper.alive).to.equal(false);
    // The mapping outlives its mm until the container goes.
    expect(f.host.stats().mappings).to.equal(1);
    const pages = new Uint32Array(2);
    const err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(4), 2, RW, pages), "ENODEV", "pin-external-failed", VfioError);
    expect(err.fields).to.deep.equal({ iova: 4n * PAGE, done: 0 });
    expect([...pages]).to.deep.equal([0, 0]);
    // A vfio_pfn needs no mm: the reference is taken on the pin that exists.
    expect(f.pin(3, 1)[0]).to.equal(held);
    expect(f.dmaAt(0).refsAt(3)).to.equal(2);
    expectKernelError(() => vfioDmaRw(f.device!, iovaOf(0), new Uint8Array(8), false), "EPERM", "rw-mm-gone", VfioError);
    f.unpin(3, 1);
    f.unpin(3, 1);
    expect(f.host.phys.totalPins).to.equal(0);
    f.check();
    // The uncharge of the last unpin found no mm (-ESRCH): the exited mm keeps its stale count of 1,
    // which the kernel frees along with the mm.
    expect(helper.mm.lockedVm).to.equal(1);
    await f.finish({ lockedVm: 1 });
  });
});

describe("vendor API: vfioUnpinPages", () => {
  for (const variant of DEVICE_VARIANTS) {
    describe(variant, () => {
      it("drops one reference; at zero releases the host pin, uncharging 1 only without an IOMMU domain", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const base = atMap(variant, GUEST_PAGES);
        const frame = f.pin(7, 1)[0]!;
        f.pin(7, 1);
        const dma = f.dmaAt(0);
        f.unpin(7, 1);
        expect(dma.refsAt(7)).to.equal(1);
        expect(f.host.phys.pins[frame]).to.equal(1 + atMap(variant, 1));
        expect(f.qemu.mm.lockedVm).to.equal(base + pinCharge(variant));
        f.unpin(7, 1);
        expect(dma.refsAt(7)).to.equal(0);
        expect(dma.vpfnCount).to.equal(0);
        expect(f.host.phys.pins[frame]).to.equal(atMap(variant, 1));
        expect(f.host.phys.totalPins).to.equal(base);
        expect(f.qemu.mm.lockedVm).to.equal(base);
        expect(dma.lockedVm).to.equal(base);
        expect(f.host.kernel.warnings).to.deep.equal([]);
        await f.finish();
      });

      it("ignores, silently, an IOVA inside a mapping that has no pin", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        f.pin(3, 1);
        const dma = f.dmaAt(0);
        const pins = f.host.phys.totalPins;
        const charged = f.qemu.mm.lockedVm;
        f.unpin(10, 4);
        expect(dma.refsAt(3)).to.equal(1);
        expect(f.host.phys.totalPins).to.equal(pins);
        expect(f.qemu.mm.lockedVm).to.equal(charged);
        // Pages 2 and 4 have no pin and are skipped; page 3 is released.
        f.unpin(2, 3);
        expect(dma.vpfnCount).to.equal(0);
        expect(f.host.phys.totalPins).to.equal(pins - 1);
        expect(f.qemu.mm.lockedVm).to.equal(charged - pinCharge(variant));
        expect(f.host.kernel.warnings).to.deep.equal([]);
        await f.finish();
      });

      it("stops with a WARN at the first IOVA outside every mapping", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map(0n, 16n * PAGE)).to.equal(0);
        expect(await f.map(32n * PAGE, 16n * PAGE, 32n * PAGE)).to.equal(0);
        f.pin(15, 1);
        f.pin(32, 1);
        const base = atMap(variant, 32);
        vfioUnpinPages(f.device!, iovaOf(15), 18);
        f.pinned.delete(15);
        f.check();
        expect(f.host.kernel.warnings).to.deep.equal([{ site: "vfio_unpin_pages", message: "unpin outside every mapping", details: { iova: 15n * PAGE, npage: 18, done: 1 } }]);
        expect(f.dmaAt(0).vpfnCount).to.equal(0);
        expect(f.dmaAt(32).refsAt(0)).to.equal(1);
        expect(f.qemu.mm.lockedVm).to.equal(base + pinCharge(variant));
        expect(f.host.phys.totalPins).to.equal(base + 1);
        f.unpin(32, 1);
        expect(f.qemu.mm.lockedVm).to.equal(base);
        await f.finish({ warnings: 1 });
      });

      it("WARNs and does nothing for npage 0 or above the maximum", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        f.pin(0, 1);
        vfioUnpinPages(f.device!, iovaOf(0), 0);
        vfioUnpinPages(f.device!, iovaOf(0), VFIO_PIN_PAGES_MAX_ENTRIES + 1);
        f.check();
        expect(f.host.kernel.warnings.map((w) => [w.site, w.message])).to.deep.equal([
          ["vfio_unpin_pages", "bad npage"],
          ["vfio_unpin_pages", "bad npage"],
        ]);
        expect(f.dmaAt(0).refsAt(0)).to.equal(1);
        f.unpin(0, 1);
        await f.finish({ warnings: 2 });
      });
    });
  }
});

describe("vendor API: array form with a notifier (Gen A/B)", () => {
  /** A Gen A vendor: pins by IOVA pfn array and unpins every reference it holds when notified. */
  function vendor(f: Fixture) {
    const held = new Map<number, number>();
    const calls: { action: number; iova: bigint; size: bigint }[] = [];
    const nb: DmaUnmapNotifier = (action, data) => {
      calls.push({ action, iova: data.iova, size: data.size });
      const first = pageOf(data.iova);
      const end = first + Number(data.size / PAGE);
      const pfns: number[] = [];
      for (const [pfn, refs] of [...held]) {
        if (pfn < first || pfn >= end) continue;
        for (let r = 0; r < refs; r++) pfns.push(pfn);
        held.delete(pfn);
      }
      if (pfns.length > 0) vfioUnpinPagesArray(f.device!, pfns, pfns.length);
    };
    const pinArray = (pfns: number[], prot = RW): Uint32Array => {
      const phys = new Uint32Array(pfns.length);
      expect(vfioPinPagesArray(f.device!, pfns, pfns.length, prot, phys)).to.equal(pfns.length);
      for (const p of pfns) held.set(p, (held.get(p) ?? 0) + 1);
      f.check();
      return phys;
    };
    const unpinArray = (pfns: number[]): number => {
      const n = vfioUnpinPagesArray(f.device!, pfns, pfns.length);
      for (const p of pfns.slice(0, n)) {
        const refs = (held.get(p) ?? 0) - 1;
        if (refs > 0) held.set(p, refs);
        else held.delete(p);
      }
      f.check();
      return n;
    };
    return { held, calls, nb, pinArray, unpinArray };
  }

  for (const variant of DEVICE_VARIANTS) {
    describe(variant, () => {
      it("pins arbitrary IOVA pfns; a duplicate in one call takes two references; unpin returns the count", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const v = vendor(f);
        const events = { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP };
        vfioRegisterNotifier(f.device!, events, v.nb);
        expect(events.value).to.equal(0);
        const base = atMap(variant, GUEST_PAGES);
        const phys = v.pinArray([7, 300, 7, 42]);
        expect([...phys]).to.deep.equal([frameAt(f, 7), frameAt(f, 300), frameAt(f, 7), frameAt(f, 42)]);
        const dma = f.dmaAt(0);
        expect([dma.refsAt(7), dma.refsAt(300), dma.refsAt(42)]).to.deep.equal([2, 1, 1]);
        expect(dma.vpfnCount).to.equal(3);
        expect(f.host.phys.pins[frameAt(f, 7)]).to.equal(1 + atMap(variant, 1));
        expect(f.host.phys.totalPins).to.equal(base + 3);
        expect(f.qemu.mm.lockedVm).to.equal(base + 3 * pinCharge(variant));
        expect(v.unpinArray([7, 300])).to.equal(2);
        expect([dma.refsAt(7), dma.refsAt(300), dma.refsAt(42)]).to.deep.equal([1, 0, 1]);
        expect(f.qemu.mm.lockedVm).to.equal(base + 2 * pinCharge(variant));
        expect(v.unpinArray([42, 7])).to.equal(2);
        expect(dma.vpfnCount).to.equal(0);
        expect(f.host.phys.totalPins).to.equal(base);
        expect(f.qemu.mm.lockedVm).to.equal(base);
        vfioUnregisterNotifier(f.device!, v.nb);
        await f.finish();
      });

      it("refuses without a registered notifier (-EINVAL) and above the maximum (-E2BIG)", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const phys = new Uint32Array(VFIO_PIN_PAGES_MAX_ENTRIES + 1);
        // dma_unmap does not stand in for the notifier in the array form.
        expect(f.iommu.devices.length).to.equal(1);
        expectKernelError(() => vfioPinPagesArray(f.device!, [1], 1, RW, phys), "EINVAL", "pin-without-notifier", VfioError);
        const v = vendor(f);
        vfioRegisterNotifier(f.device!, { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP }, v.nb);
        const pfns = Array.from({ length: VFIO_PIN_PAGES_MAX_ENTRIES + 1 }, (_, i) => i);
        expectKernelError(() => vfioPinPagesArray(f.device!, pfns, pfns.length, RW, phys), "E2BIG", "pin-too-many-pages", VfioError);
        expectKernelError(() => vfioUnpinPagesArray(f.device!, pfns, pfns.length), "E2BIG", "unpin-too-many-pages", VfioError);
        expectKernelError(() => vfioPinPagesArray(f.device!, [1], 0, RW, phys), "EINVAL", "pin-bad-arguments", VfioError);
        f.check();
        expect(f.host.stats().externalPins).to.equal(0);
        expect(f.qemu.mm.lockedVm).to.equal(atMap(variant, GUEST_PAGES));
        vfioUnregisterNotifier(f.device!, v.nb);
        await f.finish();
      });

      it("refuses a notifier with unknown event bits (-EINVAL) and leaves those bits in events", async () => {
        const f = await Fixture.create({ variant });
        const events = { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP | 0x6 };
        expectKernelError(() => vfioRegisterNotifier(f.device!, events, () => {}), "EINVAL", "notifier-unknown-events", VfioError);
        expect(events.value).to.equal(0x6);
        expect(f.iommu.notifiers.length).to.equal(0);
        expectKernelError(() => vfioUnregisterNotifier(f.device!, () => {}), "ENOENT", "notifier-not-registered", VfioError);
        f.check();
        await f.finish();
      });

      it("unpin stops at the first pfn outside every mapping: -EINVAL when that is the first; unpinned pfns count", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const v = vendor(f);
        vfioRegisterNotifier(f.device!, { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP }, v.nb);
        v.pinArray([3, 4]);
        const dma = f.dmaAt(0);
        expectKernelError(() => vfioUnpinPagesArray(f.device!, [5000], 1), "EINVAL", "unpin-outside-mappings", VfioError);
        expect(dma.vpfnCount).to.equal(2);
        // Page 3 is released, 5000 stops the walk, page 4 keeps its pin.
        expect(vfioUnpinPagesArray(f.device!, [3, 5000, 4], 3)).to.equal(1);
        v.held.delete(3);
        f.check();
        expect([dma.refsAt(3), dma.refsAt(4)]).to.deep.equal([0, 1]);
        // A pfn inside a mapping with no pin is walked over and counted.
        expect(vfioUnpinPagesArray(f.device!, [9], 1)).to.equal(1);
        expect(dma.vpfnCount).to.equal(1);
        expect(f.qemu.mm.lockedVm).to.equal(atMap(variant, GUEST_PAGES) + pinCharge(variant));
        expect(v.unpinArray([4])).to.equal(1);
        expect(f.host.kernel.warnings).to.deep.equal([]);
        vfioUnregisterNotifier(f.device!, v.nb);
        await f.finish();
      });

      it("is all or nothing: a pfn outside every mapping undoes the references taken before it", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const v = vendor(f);
        vfioRegisterNotifier(f.device!, { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP }, v.nb);
        v.pinArray([7]);
        const dma = f.dmaAt(0);
        const pins = f.host.phys.totalPins;
        const charged = f.qemu.mm.lockedVm;
        const phys = new Uint32Array(4).fill(UNTOUCHED);
        const err = expectKernelError(() => vfioPinPagesArray(f.device!, [7, 8, 5000, 9], 4, RW, phys), "EINVAL", "pin-outside-mappings", VfioError);
        expect(err.fields).to.deep.equal({ iova: 5000n * PAGE, done: 2 });
        f.check();
        expect([...phys]).to.deep.equal([0, 0, 0, UNTOUCHED]);
        expect([dma.refsAt(7), dma.refsAt(8), dma.refsAt(9)]).to.deep.equal([1, 0, 0]);
        expect(f.host.phys.totalPins).to.equal(pins);
        expect(f.qemu.mm.lockedVm).to.equal(charged);
        expect(v.unpinArray([7])).to.equal(1);
        vfioUnregisterNotifier(f.device!, v.nb);
        await f.finish();
      });

      it("UNMAP_DMA notifies VFIO_IOMMU_NOTIFY_DMA_UNMAP with the whole mapping; the vendor unpins and the unmap completes", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const v = vendor(f);
        vfioRegisterNotifier(f.device!, { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP }, v.nb);
        v.pinArray([1, 2, 2]);
        const unmap = { argsz: 24, flags: 0, iova: 0n, size: BigInt(GUEST_PAGES) * PAGE };
        expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, unmap)).to.equal(0);
        expect(unmap.size).to.equal(BigInt(GUEST_PAGES) * PAGE);
        expect(v.calls).to.deep.equal([{ action: VFIO_IOMMU_NOTIFY_DMA_UNMAP, iova: 0n, size: BigInt(GUEST_PAGES) * PAGE }]);
        expect(v.held.size).to.equal(0);
        f.check();
        expect(f.host.stats().mappings).to.equal(0);
        expect(f.host.phys.totalPins).to.equal(0);
        expect(f.qemu.mm.lockedVm).to.equal(0);
        vfioUnregisterNotifier(f.device!, v.nb);
        await f.finish();
      });
    });
  }
});

describe("vendor API: vfioDmaRw", () => {
  const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

  /** The bytes at guest RAM page `offset`, byte `at`, as host memory holds them. */
  function hostBytes(f: Fixture, offset: number, at: number, n: number): Uint8Array {
    const out = new Uint8Array(n);
    f.host.phys.read(frameAt(f, offset), at, out);
    return out;
  }

  for (const variant of DEVICE_VARIANTS) {
    describe(variant, () => {
      it("writes then reads back the same bytes; they land in the host frames behind the HVA; no pin, no charge", async () => {
        const f = await Fixture.create({ variant });
        // IOVA page 256 maps guest RAM page 8.
        expect(await f.map(256n * PAGE, 256n * PAGE, 8n * PAGE)).to.equal(0);
        const pins = f.host.phys.totalPins;
        const charged = f.qemu.mm.lockedVm;
        // 6000 bytes from IOVA page 259, byte 0x900: guest pages 11, 12 and 13.
        const data = pattern(6000, 7);
        vfioDmaRw(f.device!, ((259n << 12n) + 0x900n) as Iova, data, true);
        f.check();
        expect(hostBytes(f, 11, 0x900, 4096 - 0x900)).to.deep.equal(data.subarray(0, 4096 - 0x900));
        expect(hostBytes(f, 12, 0, 4096)).to.deep.equal(data.subarray(4096 - 0x900, 8192 - 0x900));
        expect(hostBytes(f, 13, 0, 6000 - (8192 - 0x900))).to.deep.equal(data.subarray(8192 - 0x900));
        const back = new Uint8Array(6000);
        vfioDmaRw(f.device!, ((259n << 12n) + 0x900n) as Iova, back, false, f.qemu);
        expect(back).to.deep.equal(data);
        expect(f.host.phys.totalPins).to.equal(pins);
        expect(f.qemu.mm.lockedVm).to.equal(charged);
        expect(f.host.stats().externalPins).to.equal(0);
        await f.finish();
      });

      it("cuts a copy into chunks at mapping boundaries: two adjacent IOVA mappings of distant HVAs", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map(0n, 16n * PAGE, 0n)).to.equal(0);
        expect(await f.map(16n * PAGE, 16n * PAGE, 64n * PAGE)).to.equal(0);
        const data = pattern(8192, 3);
        vfioDmaRw(f.device!, ((15n << 12n) + 0x800n) as Iova, data, true);
        f.check();
        expect(hostBytes(f, 15, 0x800, 0x800)).to.deep.equal(data.subarray(0, 0x800));
        expect(hostBytes(f, 64, 0, 4096)).to.deep.equal(data.subarray(0x800, 0x1800));
        expect(hostBytes(f, 65, 0, 0x800)).to.deep.equal(data.subarray(0x1800));
        // Guest page 16 (right after page 15 in the HVA) is not where the second chunk went.
        expect(hostBytes(f, 16, 0, 4096)).to.deep.equal(new Uint8Array(4096));
        const back = new Uint8Array(8192);
        vfioDmaRw(f.device!, ((15n << 12n) + 0x800n) as Iova, back, false);
        expect(back).to.deep.equal(data);
        expect(f.host.stats().externalPins).to.equal(0);
        expect(f.host.phys.totalPins).to.equal(atMap(variant, 32));
        await f.finish();
      });

      it("-EINVAL outside every mapping; a chunk copied before the hole stays copied", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map(0n, 16n * PAGE)).to.equal(0);
        const data = pattern(8192, 11);
        let err = expectKernelError(() => vfioDmaRw(f.device!, iovaOf(15), data, true), "EINVAL", "rw-outside-mappings", VfioError);
        expect(err.fields).to.deep.equal({ iova: 16n * PAGE, done: 4096 });
        expect(hostBytes(f, 15, 0, 4096)).to.deep.equal(data.subarray(0, 4096));
        err = expectKernelError(() => vfioDmaRw(f.device!, iovaOf(100), new Uint8Array(1), false), "EINVAL", "rw-outside-mappings", VfioError);
        expect(err.fields).to.deep.equal({ iova: 100n * PAGE, done: 0 });
        f.check();
        expect(f.host.phys.totalPins).to.equal(atMap(variant, 16));
        await f.finish();
      });

      it("-EPERM: a write to a READ-only mapping, and any access to a WRITE-only one", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map(0n, 16n * PAGE, 0n, VFIO_DMA_MAP_FLAG_READ)).to.equal(0);
        expect(await f.map(16n * PAGE, 16n * PAGE, 16n * PAGE, VFIO_DMA_MAP_FLAG_WRITE)).to.equal(0);
        const buf = pattern(64, 5);
        expectKernelError(() => vfioDmaRw(f.device!, iovaOf(1), buf, true), "EPERM", "rw-prot-not-allowed", VfioError);
        expect(hostBytes(f, 1, 0, 64)).to.deep.equal(new Uint8Array(64));
        const out = new Uint8Array(64);
        vfioDmaRw(f.device!, iovaOf(1), out, false);
        expect(out).to.deep.equal(new Uint8Array(64));
        expectKernelError(() => vfioDmaRw(f.device!, iovaOf(17), buf, true), "EPERM", "rw-prot-not-allowed", VfioError);
        expectKernelError(() => vfioDmaRw(f.device!, iovaOf(17), out, false), "EPERM", "rw-prot-not-allowed", VfioError);
        f.check();
        expect(f.host.phys.totalPins).to.equal(atMap(variant, 32));
        await f.finish();
      });

      it("-EFAULT from another process's context; the mapping's own process and a kthread succeed", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        const other = f.host.spawn({ comm: "other" });
        const buf = pattern(32, 9);
        const err = expectKernelError(() => vfioDmaRw(f.device!, iovaOf(2), buf, true, other), "EFAULT", "rw-foreign-mm", VfioError);
        expect(err.fields).to.deep.equal({ iova: 2n * PAGE, done: 0 });
        expect(hostBytes(f, 2, 0, 32)).to.deep.equal(new Uint8Array(32));
        vfioDmaRw(f.device!, iovaOf(2), buf, true, f.qemu);
        expect(hostBytes(f, 2, 0, 32)).to.deep.equal(buf);
        const out = new Uint8Array(32);
        vfioDmaRw(f.device!, iovaOf(2), out, false);
        expect(out).to.deep.equal(buf);
        f.check();
        expect(other.mm.lockedVm).to.equal(0);
        expect(f.qemu.mm.lockedVm).to.equal(atMap(variant, GUEST_PAGES));
        expect(f.host.phys.totalPins).to.equal(atMap(variant, GUEST_PAGES));
        await f.finish({}, [other]);
      });

      it("-EINVAL for an empty or non-byte buffer, and for a closed device with one WARN_ON_ONCE", async () => {
        const f = await Fixture.create({ variant });
        expect(await f.map()).to.equal(0);
        expectKernelError(() => vfioDmaRw(f.device!, iovaOf(0), new Uint8Array(0), false), "EINVAL", "rw-bad-arguments", VfioError);
        expectKernelError(() => vfioDmaRw(f.device!, iovaOf(0), new Uint32Array(4) as unknown as Uint8Array, false), "EINVAL", "rw-bad-arguments", VfioError);
        expect(f.host.kernel.warnings).to.deep.equal([]);
        expect(await f.host.close(f.qemu, f.deviceFd!)).to.equal(0);
        expectKernelError(() => vfioDmaRw(f.device!, iovaOf(0), new Uint8Array(4), false), "EINVAL", "rw-bad-arguments", VfioError);
        expectKernelError(() => vfioDmaRw(f.device!, iovaOf(0), new Uint8Array(4), true), "EINVAL", "rw-bad-arguments", VfioError);
        expect(f.host.kernel.warnings.map((w) => w.site)).to.deep.equal(["vfio_assert_device_open"]);
        f.check();
        await f.finish({ warnings: 1 });
      });
    });
  }
});
