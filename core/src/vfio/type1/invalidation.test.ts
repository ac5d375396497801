/**
 * The invalidation contract between type1 and vendor drivers (linux-vfio.md
 * sections 4.1 and 4.2): UNMAP_DMA over externally pinned pages calls every
 * registered device's dma_unmap with the whole mapping, with the container
 * lock dropped, re-scans until no pin is left, and BUG()s after 10 retries.
 */
import { expect } from "chai";
import { Fixture, NO_LEAKS, VARIANTS, type Variant } from "../../testing/fixture.js";
import { vfioPinPages, vfioPinPagesArray, vfioRegisterNotifier, vfioUnpinPages, vfioUnpinPagesArray, vfioUnregisterNotifier, vfioDmaRw } from "../vendor-api.js";
import { IOMMU_READ, IOMMU_WRITE, VFIO_DMA_UNMAP_FLAG_VADDR, VFIO_DMA_MAP_FLAG_VADDR, VFIO_IOMMU_NOTIFY_DMA_UNMAP, type Type1Events } from "./type1-iommu.js";
import { VFIO_GROUP_GET_DEVICE_FD, VFIO_GROUP_SET_CONTAINER, VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA } from "../uapi.js";
import { addrOfPage, pageOf, type Iova } from "../../address/address.js";
import { HostCrashedError } from "../../errors/kernel-error.js";
import type { Disposable } from "../../events/emitter.js";
import type { VfioDevice, VfioDeviceOps } from "../vfio-device.js";

const RW = IOMMU_READ | IOMMU_WRITE;
const MIB = 1n << 20n;
/** Mapping A: IOVA [0, 2 MiB) over the first half of guest RAM; mapping B: [2 MiB, 4 MiB) over the second. */
const A = { iova: 0n, size: 2n * MIB, offset: 0n, pages: 512 };
const B = { iova: 2n * MIB, size: 2n * MIB, offset: 2n * MIB, pages: 512 };
const DMA_ENTRY_LIMIT = 65535;
const EINVAL = -22;
const EBUSY = -16;
const EIO = -5;

/** Variants with an emulated device, the only ones that can pin. */
const WITH_DEVICE = VARIANTS.filter((v) => v !== "iommu-backed");

/** Pages MAP_DMA pins and charges: all of them when an IOMMU domain exists. */
const mapCost = (variant: Variant, pages: number): number => (variant === "mixed" ? pages : 0);
/** Pages external pins charge: none when MAP_DMA already charged them. */
const pinCharge = (variant: Variant, pins: number): number => (variant === "mixed" ? 0 : pins);

interface UnmapCall {
  readonly device: string;
  readonly iova: bigint;
  readonly length: bigint;
}

/**
 * A vendor driver's pin cache shared by its devices (kvmgt-like): IOVA page ->
 * references, per device. Its dma_unmap records every call and, unless a test
 * swaps `behaviour`, unpins what the device holds in the range.
 */
class Vendor {
  readonly calls: UnmapCall[] = [];
  readonly #held = new Map<VfioDevice, Map<number, number>>();
  behaviour: (vdev: VfioDevice, iova: Iova, length: bigint) => void | Promise<void> = (vdev, iova, length) => this.unpinRange(vdev, iova, length);
  readonly ops: VfioDeviceOps = {
    dmaUnmap: (vdev, iova, length) => {
      this.calls.push({ device: vdev.name, iova, length });
      return this.behaviour(vdev, iova, length);
    },
  };

  pin(vdev: VfioDevice, page: number, npage = 1): void {
    const out = new Uint32Array(npage);
    expect(vfioPinPages(vdev, addrOfPage(page) as Iova, npage, RW, out)).to.equal(npage);
    expect(out.every((pfn) => pfn !== 0)).to.equal(true);
    const held = this.held(vdev);
    for (let i = 0; i < npage; i++) held.set(page + i, (held.get(page + i) ?? 0) + 1);
  }

  unpinRange(vdev: VfioDevice, iova: bigint, length: bigint): void {
    const first = pageOf(iova);
    const end = first + pageOf(length);
    const held = this.held(vdev);
    for (const [page, refs] of [...held]) {
      if (page < first || page >= end) continue;
      for (let r = 0; r < refs; r++) vfioUnpinPages(vdev, addrOfPage(page) as Iova, 1);
      held.delete(page);
    }
  }

  held(vdev: VfioDevice): Map<number, number> {
    let m = this.#held.get(vdev);
    if (m === undefined) this.#held.set(vdev, (m = new Map()));
    return m;
  }

  /** References `vdev` holds on pages of [iova, iova + length). */
  heldIn(vdev: VfioDevice, iova: bigint, length: bigint): number {
    let n = 0;
    for (const [page, refs] of this.held(vdev)) if (page >= pageOf(iova) && page < pageOf(iova + length)) n += refs;
    return n;
  }
}

/** A second mediated device of the same vendor, opened in the fixture's container (QEMU opening a second vGPU). */
async function openMdev(f: Fixture, name: string, ops: VfioDeviceOps): Promise<{ device: VfioDevice; close(): Promise<void> }> {
  const device = f.host.vfio.registerEmulatedDevice(name, ops);
  const groupFd = f.host.open(f.qemu, `/dev/vfio/${device.node.number}`);
  expect(groupFd).to.be.greaterThan(0);
  expect(await f.host.ioctl(f.qemu, groupFd, VFIO_GROUP_SET_CONTAINER, f.containerFd)).to.equal(0);
  const deviceFd = await f.host.ioctl(f.qemu, groupFd, VFIO_GROUP_GET_DEVICE_FD, name);
  expect(deviceFd).to.be.greaterThan(0);
  return {
    device,
    async close() {
      expect(await f.host.close(f.qemu, deviceFd)).to.equal(0);
      expect(await f.host.close(f.qemu, groupFd)).to.equal(0);
    },
  };
}

function counters(f: Fixture): { lockedVm: number; totalPins: number; dmaAvail: number; externalPins: number } {
  return { lockedVm: f.qemu.mm.lockedVm, totalPins: f.host.phys.totalPins, dmaAvail: f.iommu.dmaAvail, externalPins: f.host.stats().externalPins };
}

type Sent = Parameters<Type1Events["invalidationSent"]>[0];
type Answered = Parameters<Type1Events["invalidationAnswered"]>[0];

/** Records invalidationSent / invalidationAnswered until disposed. */
function watchInvalidations(f: Fixture): { sent: Sent[]; answered: Answered[]; sub: Disposable } {
  const sent: Sent[] = [];
  const answered: Answered[] = [];
  const a = f.iommu.on("invalidationSent", (e) => sent.push(e));
  const b = f.iommu.on("invalidationAnswered", (e) => answered.push(e));
  return { sent, answered, sub: { dispose: () => (a.dispose(), b.dispose()) } };
}

/** A promise with its resolver, to park a callback or the test at a chosen point. */
function latch(): { promise: Promise<void>; open(): void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

for (const variant of WITH_DEVICE) {
  describe(`type1 invalidation contract (${variant})`, () => {
    let f: Fixture;
    let vendor: Vendor;
    let mdev0: VfioDevice;

    beforeEach(async () => {
      vendor = new Vendor();
      f = await Fixture.create({ variant, deviceOps: vendor.ops });
      mdev0 = f.device!;
      expect(await f.map(A.iova, A.size, A.offset)).to.equal(0);
      expect(await f.map(B.iova, B.size, B.offset)).to.equal(0);
      f.check();
      expect(counters(f)).to.deep.equal({ lockedVm: mapCost(variant, 1024), totalPins: mapCost(variant, 1024), dmaAvail: DMA_ENTRY_LIMIT - 2, externalPins: 0 });
    });

    it("broadcasts the whole mapping to every device, also those that never pinned there", async () => {
      const mdev1 = await openMdev(f, "mdev1", vendor.ops);
      vendor.pin(mdev0, 5, 4);
      vendor.pin(mdev1.device, B.pages + 88);
      f.check();
      expect(counters(f)).to.deep.equal({ lockedVm: mapCost(variant, 1024) + pinCharge(variant, 5), totalPins: mapCost(variant, 1024) + 5, dmaAvail: DMA_ENTRY_LIMIT - 2, externalPins: 5 });
      const w = watchInvalidations(f);
      // The request spans both mappings and a hole after them; each callback names one whole mapping.
      const r = await f.unmap(0n, 8n * MIB);
      w.sub.dispose();
      expect(r).to.deep.equal({ ret: 0, size: 4n * MIB });
      f.check();
      expect(vendor.calls).to.deep.equal([
        { device: "mdev0", iova: A.iova, length: A.size },
        { device: "mdev1", iova: A.iova, length: A.size },
        { device: "mdev0", iova: B.iova, length: B.size },
        { device: "mdev1", iova: B.iova, length: B.size },
      ]);
      expect(w.sent).to.deep.equal([
        { iova: A.iova, length: A.size, retry: 0, devices: 2 },
        { iova: B.iova, length: B.size, retry: 0, devices: 2 },
      ]);
      expect(w.answered).to.deep.equal([
        { iova: A.iova, length: A.size, retry: 0, pinsLeft: 0 },
        { iova: B.iova, length: B.size, retry: 0, pinsLeft: 0 },
      ]);
      expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, dmaAvail: DMA_ENTRY_LIMIT, externalPins: 0 });
      await mdev1.close();
      f.check();
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    it("notifies only mappings that hold pins", async () => {
      vendor.pin(mdev0, B.pages + 1);
      f.check();
      expect((await f.unmap(A.iova, A.size)).ret).to.equal(0);
      f.check();
      expect(vendor.calls).to.deep.equal([]);
      expect(await f.unmap(B.iova, B.size)).to.deep.equal({ ret: 0, size: B.size });
      f.check();
      expect(vendor.calls).to.deep.equal([{ device: "mdev0", iova: B.iova, length: B.size }]);
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    it("refuses a bisecting unmap before notifying anyone", async () => {
      vendor.pin(mdev0, 5, 2);
      f.check();
      const before = counters(f);
      expect(await f.unmap(4096n, A.size)).to.deep.equal({ ret: EINVAL, size: A.size });
      expect(await f.unmap(0n, A.size + 4096n)).to.deep.equal({ ret: EINVAL, size: A.size + 4096n });
      f.check();
      expect(vendor.calls).to.deep.equal([]);
      expect(counters(f)).to.deep.equal(before);
      expect(vendor.heldIn(mdev0, A.iova, A.size)).to.equal(2);
      expect((await f.unmap(0n, 4n * MIB)).ret).to.equal(0);
      f.check();
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    it("leaves no pin and the pre-pin counters behind once the callback has answered", async () => {
      const before = counters(f);
      vendor.pin(mdev0, 7, 3);
      vendor.pin(mdev0, 8); // a second reference on page 8
      f.check();
      expect(f.iommu.findDma(7, 1)!.vpfnCount).to.equal(3);
      expect(counters(f)).to.deep.equal({ ...before, lockedVm: before.lockedVm + pinCharge(variant, 3), totalPins: before.totalPins + 3, externalPins: 3 });
      // Observed when type1 retakes its lock after the callbacks, before it removes the mapping.
      const seen: { pinsLeft: number; held: number; counters: ReturnType<typeof counters>; mapped: boolean }[] = [];
      const sub = f.iommu.on("invalidationAnswered", (e) => {
        seen.push({ pinsLeft: e.pinsLeft, held: vendor.heldIn(mdev0, A.iova, A.size), counters: counters(f), mapped: f.iommu.findDma(0, 1) !== undefined });
      });
      expect(await f.unmap(A.iova, A.size)).to.deep.equal({ ret: 0, size: A.size });
      sub.dispose();
      f.check();
      expect(seen).to.deep.equal([{ pinsLeft: 0, held: 0, counters: before, mapped: true }]);
      expect(counters(f)).to.deep.equal({ lockedVm: mapCost(variant, B.pages), totalPins: mapCost(variant, B.pages), dmaAvail: DMA_ENTRY_LIMIT - 1, externalPins: 0 });
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    it("drops the lock during an asynchronous callback: a MAP_DMA and a pin elsewhere run meanwhile", async () => {
      expect((await f.unmap(B.iova, B.size)).ret).to.equal(0);
      const mdev1 = await openMdev(f, "mdev1", vendor.ops);
      vendor.pin(mdev0, 10, 2);
      f.check();
      const order: string[] = [];
      const entered = latch();
      const gate = latch();
      vendor.behaviour = async (vdev, iova, length) => {
        if (vdev === mdev0) {
          order.push("callback entered");
          entered.open();
          await gate.promise;
          vendor.unpinRange(vdev, iova, length);
          order.push("callback unpinned");
        } else vendor.unpinRange(vdev, iova, length);
      };
      const pending = f.unmap(A.iova, A.size).then((r) => (order.push("unmap returned"), r));
      await entered.promise;
      // type1's lock is free: another MAP_DMA and a pin in that new mapping both succeed.
      expect(await f.map(B.iova, B.size, B.offset)).to.equal(0);
      order.push("map B done");
      vendor.pin(mdev1.device, B.pages + 3);
      order.push("pin in B done");
      f.check();
      expect(f.iommu.dmas.size).to.equal(2);
      expect(counters(f)).to.deep.equal({
        lockedVm: mapCost(variant, 1024) + pinCharge(variant, 3),
        totalPins: mapCost(variant, 1024) + 3,
        dmaAvail: DMA_ENTRY_LIMIT - 2,
        externalPins: 3,
      });
      gate.open();
      expect(await pending).to.deep.equal({ ret: 0, size: A.size });
      f.check();
      expect(order).to.deep.equal(["callback entered", "map B done", "pin in B done", "callback unpinned", "unmap returned"]);
      expect(vendor.calls).to.deep.equal([
        { device: "mdev0", iova: A.iova, length: A.size },
        { device: "mdev1", iova: A.iova, length: A.size },
      ]);
      expect(counters(f)).to.deep.equal({ lockedVm: mapCost(variant, B.pages) + pinCharge(variant, 1), totalPins: mapCost(variant, B.pages) + 1, dmaAvail: DMA_ENTRY_LIMIT - 1, externalPins: 1 });
      vendor.behaviour = (vdev, iova, length) => vendor.unpinRange(vdev, iova, length);
      expect(await f.unmap(B.iova, B.size)).to.deep.equal({ ret: 0, size: B.size });
      f.check();
      expect(vendor.calls.length).to.equal(4);
      await mdev1.close();
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    it("re-notifies when a pin lands in the same mapping during the invalidation", async () => {
      const mdev1 = await openMdev(f, "mdev1", vendor.ops);
      vendor.pin(mdev0, 20, 2);
      f.check();
      const unpinned = latch();
      const gate = latch();
      let parked = false;
      vendor.behaviour = async (vdev, iova, length) => {
        vendor.unpinRange(vdev, iova, length);
        if (vdev === mdev0 && !parked) {
          parked = true;
          unpinned.open();
          await gate.promise;
        }
      };
      const w = watchInvalidations(f);
      const pending = f.unmap(A.iova, A.size);
      await unpinned.promise;
      // mdev0 already answered this round: the new pin is missed and must be caught by a re-scan.
      vendor.pin(mdev0, 30);
      f.check();
      gate.open();
      expect(await pending).to.deep.equal({ ret: 0, size: A.size });
      w.sub.dispose();
      f.check();
      const whole = { iova: A.iova, length: A.size };
      expect(vendor.calls).to.deep.equal([
        { device: "mdev0", ...whole },
        { device: "mdev1", ...whole },
        { device: "mdev0", ...whole },
        { device: "mdev1", ...whole },
      ]);
      expect(w.sent).to.deep.equal([
        { ...whole, retry: 0, devices: 2 },
        { ...whole, retry: 1, devices: 2 },
      ]);
      expect(w.answered).to.deep.equal([
        { ...whole, retry: 0, pinsLeft: 1 },
        { ...whole, retry: 1, pinsLeft: 0 },
      ]);
      expect(vendor.heldIn(mdev0, A.iova, A.size)).to.equal(0);
      expect(counters(f)).to.deep.equal({ lockedVm: mapCost(variant, B.pages), totalPins: mapCost(variant, B.pages), dmaAvail: DMA_ENTRY_LIMIT - 1, externalPins: 0 });
      await mdev1.close();
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    it("crashes the simulated host after 11 unanswered notifications (BUG_ON in vfio_dma_do_unmap)", async () => {
      const mdev1 = await openMdev(f, "mdev1", vendor.ops);
      vendor.pin(mdev0, 40, 2);
      f.check();
      vendor.behaviour = () => undefined; // a vendor that never unpins
      const w = watchInvalidations(f);
      const crashes: string[] = [];
      const onCrash = f.host.kernel.on("crashed", (bug) => crashes.push(bug.site));
      expect(await f.unmap(A.iova, A.size)).to.deep.equal({ ret: EIO, size: A.size });
      w.sub.dispose();
      onCrash.dispose();
      expect(w.sent.map((e) => e.retry)).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      expect(w.answered.map((e) => e.pinsLeft)).to.deep.equal(new Array(11).fill(2));
      expect(vendor.calls.filter((c) => c.device === "mdev0").length).to.equal(11);
      expect(vendor.calls.filter((c) => c.device === "mdev1").length).to.equal(11);
      expect(vendor.calls.every((c) => c.iova === A.iova && c.length === A.size)).to.equal(true);
      expect(f.host.kernel.crashed).to.equal(true);
      expect(f.host.kernel.bug!.site).to.equal("vfio_dma_do_unmap");
      expect(crashes).to.deep.equal(["vfio_dma_do_unmap"]);
      // Every later entry point fails clearly; the Node process carries on.
      const info = { argsz: 16, flags: 0, iova_pgsizes: 0n };
      expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_GET_INFO, info)).to.equal(EIO);
      expect(info.iova_pgsizes).to.equal(0n);
      expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_MAP_DMA, { argsz: 32, flags: 3, vaddr: f.guestRam, iova: 1n << 30n, size: 4096n })).to.equal(EIO);
      expect(await f.unmap(B.iova, B.size)).to.deep.equal({ ret: EIO, size: B.size });
      expect(f.host.open(f.qemu, "/dev/vfio/vfio")).to.equal(EIO);
      expect(await f.host.close(f.qemu, f.containerFd)).to.equal(EIO);
      const calls: [string, () => unknown][] = [
        ["vfioPinPages", () => vfioPinPages(mdev0, 0x1000n as Iova, 1, RW, new Uint32Array(1))],
        ["vfioUnpinPages", () => vfioUnpinPages(mdev0, addrOfPage(40) as Iova, 1)],
        ["vfioDmaRw", () => vfioDmaRw(mdev0, 0n as Iova, new Uint8Array(8), true)],
      ];
      for (const [name, call] of calls) {
        let err: unknown;
        try {
          call();
        } catch (e) {
          err = e;
        }
        expect(err, name).to.be.instanceOf(HostCrashedError);
        const crashed = err as HostCrashedError;
        expect([crashed.code, crashed.errno, crashed.bug.site]).to.deep.equal(["EIO", 5, "vfio_dma_do_unmap"]);
        expect(crashed.message).to.contain("vfio_dma_do_unmap");
      }
      f.check();
      // Nothing was released: the host is dead with the pins and mappings it had.
      expect(f.leaks()).to.deep.equal({
        ...NO_LEAKS,
        pinnedFrames: mapCost(variant, 1024) + 2,
        lockedVm: mapCost(variant, 1024) + pinCharge(variant, 2),
        mappings: 2,
        externalPins: 2,
        crashed: 1,
      });
      void mdev1;
    });

    it("turns a throwing callback into a WARN, not an unmap failure", async () => {
      const mdev1 = await openMdev(f, "mdev1", vendor.ops);
      vendor.pin(mdev0, 50, 3);
      f.check();
      let mdev0Calls = 0;
      vendor.behaviour = async (vdev, iova, length) => {
        if (vdev === mdev0) {
          // First call: throw before unpinning; second call: unpin.
          if (++mdev0Calls === 1) throw new Error("vendor bug");
          vendor.unpinRange(vdev, iova, length);
          return;
        }
        await Promise.resolve();
        throw new Error("async vendor bug"); // a rejected promise from a device with nothing pinned
      };
      expect(await f.unmap(A.iova, A.size)).to.deep.equal({ ret: 0, size: A.size });
      f.check();
      expect(vendor.calls.map((c) => c.device)).to.deep.equal(["mdev0", "mdev1", "mdev0", "mdev1"]);
      expect(f.host.kernel.warnings.map((w) => [w.site, String(w.details["error"])])).to.deep.equal([
        ["dma_unmap", "Error: vendor bug"],
        ["dma_unmap", "Error: async vendor bug"],
        ["dma_unmap", "Error: async vendor bug"],
      ]);
      expect(f.host.kernel.crashed).to.equal(false);
      expect(counters(f)).to.deep.equal({ lockedVm: mapCost(variant, B.pages), totalPins: mapCost(variant, B.pages), dmaAvail: DMA_ENTRY_LIMIT - 1, externalPins: 0 });
      await mdev1.close();
      await f.teardown();
      expect(f.leaks()).to.deep.equal({ ...NO_LEAKS, warnings: 3 });
    });

    it("refuses UNMAP_DMA with VADDR while mdevs exist, without notifying", async () => {
      vendor.pin(mdev0, 60);
      f.check();
      const before = counters(f);
      expect(await f.unmap(A.iova, A.size, VFIO_DMA_UNMAP_FLAG_VADDR)).to.deep.equal({ ret: EBUSY, size: A.size });
      f.check();
      expect(vendor.calls).to.deep.equal([]);
      expect(f.iommu.vaddrInvalidCount).to.equal(0);
      expect(counters(f)).to.deep.equal(before);
      expect((await f.unmap(0n, 4n * MIB)).ret).to.equal(0);
      f.check();
      expect(vendor.calls.length).to.equal(1);
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });
  });
}

for (const variant of WITH_DEVICE) {
  describe(`type1 Gen A notifier (${variant})`, () => {
    it("delivers VFIO_IOMMU_NOTIFY_DMA_UNMAP with the whole mapping", async () => {
      // A Gen A driver: no dma_unmap op, a notifier instead.
      const f = await Fixture.create({ variant, deviceOps: {} });
      const dev = f.device!;
      expect(await f.map(A.iova, A.size, A.offset)).to.equal(0);
      expect(await f.map(B.iova, B.size, B.offset)).to.equal(0);
      f.check();
      expect(f.iommu.devices).to.deep.equal([]);
      const badEvents = { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP | 4 };
      expect(() => vfioRegisterNotifier(dev, badEvents, () => undefined))
        .to.throw()
        .that.satisfies((e: { code: string; errno: number }) => e.code === "EINVAL" && e.errno === 22);
      expect(badEvents.value).to.equal(4);
      const got: [number, { iova: bigint; size: bigint }][] = [];
      const pfns = [5, 7, 7];
      const nb = (action: number, data: { iova: bigint; size: bigint }): void => {
        got.push([action, { ...data }]);
        expect(vfioUnpinPagesArray(dev, pfns, pfns.length)).to.equal(3);
      };
      const events = { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP };
      vfioRegisterNotifier(dev, events, nb);
      expect(events.value).to.equal(0);
      const phys = new Uint32Array(3);
      expect(vfioPinPagesArray(dev, pfns, 3, RW, phys)).to.equal(3);
      expect(phys[1]).to.equal(phys[2]);
      f.check();
      expect(f.iommu.findDma(5, 1)!.vpfnCount).to.equal(2);
      expect(counters(f)).to.deep.equal({ lockedVm: mapCost(variant, 1024) + pinCharge(variant, 2), totalPins: mapCost(variant, 1024) + 2, dmaAvail: DMA_ENTRY_LIMIT - 2, externalPins: 2 });
      expect(await f.unmap(0n, 4n * MIB)).to.deep.equal({ ret: 0, size: 4n * MIB });
      f.check();
      expect(got).to.deep.equal([[VFIO_IOMMU_NOTIFY_DMA_UNMAP, { iova: A.iova, size: A.size }]]);
      expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, dmaAvail: DMA_ENTRY_LIMIT, externalPins: 0 });
      vfioUnregisterNotifier(dev, nb);
      expect(f.iommu.notifiers).to.deep.equal([]);
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });
  });
}

describe("type1 invalidation with UNMAP_DMA VADDR (iommu-backed)", () => {
  it("invalidates the vaddr without any notification", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    // The vfio-pci function of the fixture's IOMMU group registers a Gen A notifier.
    const pci = [...f.host.vfio.groups.values()].find((g) => g.iommuGroup.type === "iommu")!.devices[0]!;
    const got: unknown[] = [];
    const nb = (action: number, data: unknown): void => void got.push([action, data]);
    vfioRegisterNotifier(pci, { value: VFIO_IOMMU_NOTIFY_DMA_UNMAP }, nb);
    expect(await f.map(A.iova, A.size, A.offset)).to.equal(0);
    f.check();
    const before = counters(f);
    expect(await f.unmap(A.iova, A.size, VFIO_DMA_UNMAP_FLAG_VADDR)).to.deep.equal({ ret: 0, size: A.size });
    f.check();
    expect(got).to.deep.equal([]);
    expect(f.iommu.vaddrInvalidCount).to.equal(1);
    expect(counters(f)).to.deep.equal(before);
    const remap = { argsz: 32, flags: VFIO_DMA_MAP_FLAG_VADDR, vaddr: f.guestRam + A.offset, iova: A.iova, size: A.size };
    expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_MAP_DMA, remap)).to.equal(0);
    f.check();
    expect(f.iommu.vaddrInvalidCount).to.equal(0);
    expect(await f.unmap(A.iova, A.size)).to.deep.equal({ ret: 0, size: A.size });
    f.check();
    expect(got).to.deep.equal([]);
    vfioUnregisterNotifier(pci, nb);
    await f.teardown();
    expect(f.leaks()).to.deep.equal(NO_LEAKS);
  });
});
