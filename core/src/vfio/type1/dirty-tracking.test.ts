/**
 * Type1 dirty page tracking (linux-vfio.md section 5): VFIO_IOMMU_DIRTY_PAGES
 * START / STOP / GET_BITMAP, UNMAP_DMA with GET_DIRTY_BITMAP, and the
 * pinned-page dirty scope of IOMMU-backed groups.
 */
import { expect } from "chai";
import { Fixture, NO_LEAKS, VARIANTS, type Variant } from "../../testing/fixture.js";
import { vfioDmaRw, vfioPinPages, vfioUnpinPages } from "../vendor-api.js";
import { IOMMU_READ, IOMMU_WRITE, VFIO_DMA_UNMAP_FLAG_ALL, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, dirtyBitmapBytes } from "./type1-iommu.js";
import {
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_UNSET_CONTAINER,
  VFIO_IOMMU_DIRTY_PAGES,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
  VFIO_IOMMU_UNMAP_DMA,
} from "../uapi.js";
import { addrOfPage, type Iova } from "../../address/address.js";

const RW = IOMMU_READ | IOMMU_WRITE;
const MIB = 1n << 20n;
const PAGE = 4096n;
const EINVAL = -22;
const EACCES = -13;
const ENOMEM = -12;
const START = VFIO_IOMMU_DIRTY_PAGES_FLAG_START;
const STOP = VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP;
const GET_BITMAP = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;

/** Variants where an IOMMU-backed group that never pinned makes every page of every mapping dirty. */
const allDirty = (variant: Variant): boolean => variant === "iommu-backed" || variant === "mixed";
const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

async function dirtyPages(f: Fixture, flags: number, argsz = 8): Promise<number> {
  return f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_DIRTY_PAGES, { argsz, flags });
}

interface BitmapOptions {
  readonly pgsize?: bigint;
  readonly bytes?: number;
  readonly argsz?: number;
}

/** VFIO_IOMMU_DIRTY_PAGES GET_BITMAP over [iova, iova + size) into a zeroed user buffer. */
async function getBitmap(f: Fixture, iova: bigint, size: bigint, o: BitmapOptions = {}): Promise<{ ret: number; data: Uint8Array }> {
  const bytes = o.bytes ?? Number(dirtyBitmapBytes(size / PAGE));
  const data = new Uint8Array(bytes);
  const arg = { argsz: o.argsz ?? 48, flags: GET_BITMAP, data: { iova, size, bitmap: { pgsize: o.pgsize ?? PAGE, size: BigInt(bytes), data } } };
  const ret = await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_DIRTY_PAGES, arg);
  return { ret, data };
}

/** The exact user bitmap (u64 words, little-endian bit order) with `bits` set. */
function bitmapOf(bytes: number, bits: Iterable<number>): string {
  const b = new Uint8Array(bytes);
  for (const bit of bits) b[bit >>> 3]! |= 1 << (bit & 7);
  return Buffer.from(b).toString("hex");
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

for (const variant of VARIANTS) {
  describe(`type1 dirty tracking (${variant})`, () => {
    let f: Fixture;
    const device = variant !== "iommu-backed";

    beforeEach(async () => {
      f = await Fixture.create({ variant });
    });

    afterEach(async () => {
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    /** Mapping A at IOVA [0, 2 MiB) and B at [2 MiB, 4 MiB), 512 pages each. */
    async function mapAB(): Promise<void> {
      expect(await f.map(0n, 2n * MIB, 0n)).to.equal(0);
      expect(await f.map(2n * MIB, 2n * MIB, 2n * MIB)).to.equal(0);
      f.check();
    }

    it("primes with pins, marks pins and dma_rw writes, and re-populates with pins only after each pass", async () => {
      await mapAB();
      if (device) {
        f.pin(3);
        f.pin(4);
      }
      f.check();
      expect(await dirtyPages(f, START)).to.equal(0);
      f.check();
      expect(f.iommu.dirtyPageTracking).to.equal(true);
      // One bit per page, DIRTY_BITMAP_BYTES(512) + 8 bytes.
      expect([...f.iommu.dmas.values()].map((d) => d.bitmap!.length)).to.deep.equal([72, 72]);
      if (device) {
        f.pin(600);
        vfioDmaRw(f.device!, 0x7ff80n as Iova, new Uint8Array(0x100).fill(0xa5), true); // pages 127 and 128
        vfioDmaRw(f.device!, addrOfPage(700) as Iova, new Uint8Array(8).fill(1), true, f.qemu);
        vfioDmaRw(f.device!, addrOfPage(200) as Iova, new Uint8Array(4096), false); // a read marks nothing
      }
      f.check();
      const pass = async (bits: number[]): Promise<void> => {
        const r = await getBitmap(f, 0n, 4n * MIB);
        expect(r.ret).to.equal(0);
        expect(hex(r.data)).to.equal(bitmapOf(128, allDirty(variant) ? range(0, 1024) : bits));
        f.check();
      };
      await pass([3, 4, 127, 128, 600, 700]);
      await pass([3, 4, 600]);
      if (device) f.unpin(3);
      f.check();
      // Page 3 was re-populated by the last pass while still pinned: reported once more.
      await pass([3, 4, 600]);
      await pass([4, 600]);
      expect(await dirtyPages(f, STOP)).to.equal(0);
      f.check();
      expect((await f.unmap(0n, 4n * MIB)).ret).to.equal(0);
      f.check();
    });

    it("START and STOP are idempotent; STOP frees every bitmap", async () => {
      await mapAB();
      const changes: boolean[] = [];
      const sub = f.iommu.on("dirtyTrackingChanged", (e) => changes.push(e.on));
      expect(await dirtyPages(f, START)).to.equal(0);
      f.check();
      const bitmaps = [...f.iommu.dmas.values()].map((d) => d.bitmap);
      if (device) f.pin(9);
      expect(await dirtyPages(f, START)).to.equal(0);
      f.check();
      expect([...f.iommu.dmas.values()].map((d) => d.bitmap)).to.deep.equal(bitmaps);
      expect([...f.iommu.dmas.values()].every((d, i) => d.bitmap === bitmaps[i])).to.equal(true);
      let r = await getBitmap(f, 0n, 4n * MIB);
      expect(r.ret).to.equal(0);
      expect(hex(r.data)).to.equal(bitmapOf(128, allDirty(variant) ? range(0, 1024) : device ? [9] : []));
      expect(await dirtyPages(f, STOP)).to.equal(0);
      f.check();
      expect(f.iommu.dirtyPageTracking).to.equal(false);
      expect([...f.iommu.dmas.values()].map((d) => d.bitmap)).to.deep.equal([null, null]);
      expect(await dirtyPages(f, STOP)).to.equal(0);
      f.check();
      expect((await getBitmap(f, 0n, 4n * MIB)).ret).to.equal(EINVAL);
      // Tracking again starts from fresh bitmaps primed with the current pins.
      expect(await dirtyPages(f, START)).to.equal(0);
      f.check();
      expect([...f.iommu.dmas.values()].some((d, i) => d.bitmap === bitmaps[i])).to.equal(false);
      r = await getBitmap(f, 0n, 4n * MIB);
      expect(hex(r.data)).to.equal(bitmapOf(128, allDirty(variant) ? range(0, 1024) : device ? [9] : []));
      expect(await dirtyPages(f, STOP)).to.equal(0);
      sub.dispose();
      expect(changes).to.deep.equal([true, false, true, false]);
      expect((await f.unmap(0n, 4n * MIB)).ret).to.equal(0);
      f.check();
    });

    it("MAP_DMA while tracking allocates a bitmap for the new mapping", async () => {
      expect(await f.map(0n, 2n * MIB, 0n)).to.equal(0);
      expect(await dirtyPages(f, START)).to.equal(0);
      f.check();
      expect(await f.map(2n * MIB, 2n * MIB, 2n * MIB)).to.equal(0);
      f.check();
      const b = f.iommu.findDma(512, 1)!;
      expect(b.bitmap!.length).to.equal(72);
      if (device) f.pin(513);
      f.check();
      let r = await getBitmap(f, 2n * MIB, 2n * MIB);
      expect(r.ret).to.equal(0);
      expect(hex(r.data)).to.equal(bitmapOf(64, allDirty(variant) ? range(0, 512) : device ? [1] : []));
      r = await getBitmap(f, 0n, 2n * MIB);
      expect(r.ret).to.equal(0);
      expect(hex(r.data)).to.equal(bitmapOf(64, allDirty(variant) ? range(0, 512) : []));
      expect(await dirtyPages(f, STOP)).to.equal(0);
      expect((await f.unmap(0n, 4n * MIB)).ret).to.equal(0);
      f.check();
    });

    it("ORs adjacent mappings that share a u64 word of the user bitmap", async () => {
      // P = pages [0, 10), Q = [10, 80), R = [80, 200): Q and R start inside a word.
      expect(await f.map(0n, 10n * PAGE, 0n)).to.equal(0);
      expect(await f.map(10n * PAGE, 70n * PAGE, 10n * PAGE)).to.equal(0);
      expect(await f.map(80n * PAGE, 120n * PAGE, 80n * PAGE)).to.equal(0);
      f.check();
      if (device) {
        f.pin(2);
        f.pin(12);
      }
      expect(await dirtyPages(f, START)).to.equal(0);
      if (device) for (const p of [75, 80, 199]) f.pin(p);
      f.check();
      let r = await getBitmap(f, 0n, 200n * PAGE);
      expect(r.ret).to.equal(0);
      expect(r.data.length).to.equal(32);
      expect(hex(r.data)).to.equal(bitmapOf(32, allDirty(variant) ? range(0, 200) : [2, 12, 75, 80, 199]));
      if (!allDirty(variant)) {
        // The exact bytes: bit 2, bit 12 (Q shifted by 10 into word 0), 75, 80 (R shifted by 16 into word 1), 199.
        expect([r.data[0], r.data[1], r.data[9], r.data[10], r.data[24]]).to.deep.equal([0x04, 0x10, 0x08, 0x01, 0x80]);
      }
      f.check();
      // Relative to Q: Q at shift 0, R at bit 70 (word 1, shift 6).
      r = await getBitmap(f, 10n * PAGE, 190n * PAGE);
      expect(r.ret).to.equal(0);
      expect(hex(r.data)).to.equal(bitmapOf(24, allDirty(variant) ? range(0, 190) : [2, 65, 70, 189]));
      f.check();
      expect(await dirtyPages(f, STOP)).to.equal(0);
      expect((await f.unmap(0n, 200n * PAGE)).ret).to.equal(0);
      f.check();
    });

    it("GET_BITMAP must cover whole mappings, at the minimum page size, while tracking", async () => {
      await mapAB();
      expect((await getBitmap(f, 0n, 2n * MIB)).ret).to.equal(EINVAL); // not tracking
      expect(await dirtyPages(f, START)).to.equal(0);
      f.check();
      expect((await getBitmap(f, PAGE, 2n * MIB - PAGE)).ret).to.equal(EINVAL); // starts inside A
      expect((await getBitmap(f, 0n, 2n * MIB + PAGE)).ret).to.equal(EINVAL); // ends inside B
      expect((await getBitmap(f, 2n * MIB, MIB)).ret).to.equal(EINVAL); // half of B
      expect((await getBitmap(f, 0x800n, 2n * MIB)).ret).to.equal(EINVAL); // unaligned
      expect((await getBitmap(f, 0n, 2n * MIB, { pgsize: 2n * PAGE })).ret).to.equal(EINVAL);
      expect((await getBitmap(f, 0n, 0n, { bytes: 8 })).ret).to.equal(EINVAL); // size 0
      expect((await getBitmap(f, 0n, 2n * MIB, { bytes: 63 })).ret).to.equal(EINVAL); // bitmap too small
      expect((await getBitmap(f, 0n, 2n * MIB, { argsz: 47 })).ret).to.equal(EINVAL); // no room for the range
      expect(await dirtyPages(f, START | STOP)).to.equal(EINVAL);
      expect(await dirtyPages(f, 0)).to.equal(EINVAL);
      expect(await dirtyPages(f, 1 << 3)).to.equal(EINVAL);
      expect(await dirtyPages(f, START, 7)).to.equal(EINVAL);
      f.check();
      const whole = await getBitmap(f, 0n, 2n * MIB);
      expect(whole.ret).to.equal(0);
      expect(hex(whole.data)).to.equal(bitmapOf(64, allDirty(variant) ? range(0, 512) : []));
      const hole = await getBitmap(f, 8n * MIB, MIB);
      expect(hole.ret).to.equal(0);
      expect(hex(hole.data)).to.equal(bitmapOf(32, []));
      expect(await dirtyPages(f, STOP)).to.equal(0);
      expect((await f.unmap(0n, 4n * MIB)).ret).to.equal(0);
      f.check();
    });

    it("UNMAP_DMA with GET_DIRTY_BITMAP returns the bits of the removed mappings", async () => {
      await mapAB();
      const data = new Uint8Array(128);
      const unmapArg = (flags: number, iova = 0n, size = 4n * MIB) => ({ argsz: 48, flags, iova, size, bitmap: { pgsize: PAGE, size: 128n, data } });
      expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, unmapArg(VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP))).to.equal(EINVAL); // not tracking
      expect(await dirtyPages(f, START)).to.equal(0);
      expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, unmapArg(VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_ALL, 0n, 0n))).to.equal(EINVAL);
      expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, { ...unmapArg(VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP), argsz: 47 })).to.equal(EINVAL);
      f.check();
      expect(f.iommu.dmas.size).to.equal(2);
      if (device) {
        f.pin(3);
        f.pin(600);
        vfioDmaRw(f.device!, addrOfPage(700) as Iova, new Uint8Array(16), true);
      }
      f.check();
      const arg = unmapArg(VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
      expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, arg)).to.equal(0);
      expect(arg.size).to.equal(4n * MIB);
      f.check();
      // The pins were invalidated (and released) before the bits were copied; their bits survive.
      expect(hex(data)).to.equal(bitmapOf(128, allDirty(variant) ? range(0, 1024) : device ? [3, 600, 700] : []));
      expect(f.iommu.dmas.size).to.equal(0);
      expect(f.pinned.size).to.equal(0);
      expect(await dirtyPages(f, STOP)).to.equal(0);
      f.check();
    });

    it("a failed bitmap allocation fails START with -ENOMEM and leaves no bitmap", async () => {
      await mapAB();
      f.host.faults.failNth(2, ["kzalloc"]);
      expect(await dirtyPages(f, START)).to.equal(ENOMEM);
      expect(f.host.faults.fired).to.equal("kzalloc");
      f.check();
      expect(f.iommu.dirtyPageTracking).to.equal(false);
      expect([...f.iommu.dmas.values()].map((d) => d.bitmap)).to.deep.equal([null, null]);
      expect(await dirtyPages(f, START)).to.equal(0);
      f.check();
      expect(await dirtyPages(f, STOP)).to.equal(0);
      expect((await f.unmap(0n, 4n * MIB)).ret).to.equal(0);
      f.check();
    });
  });
}

describe("type1 dirty tracking on a v1 container", () => {
  for (const variant of ["mdev-only", "iommu-backed"] as const) {
    it(`answers -EACCES to every DIRTY_PAGES request (${variant})`, async () => {
      const f = await Fixture.create({ variant, v1: true });
      expect(await f.map()).to.equal(0);
      f.check();
      expect(await dirtyPages(f, START)).to.equal(EACCES);
      expect(await dirtyPages(f, STOP)).to.equal(EACCES);
      expect((await getBitmap(f, 0n, f.guestBytes)).ret).to.equal(EACCES);
      expect(f.iommu.dirtyPageTracking).to.equal(false);
      f.check();
      expect((await f.unmap(0n, f.guestBytes)).ret).to.equal(0);
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });
  }
});

describe("type1 pinned-page dirty scope", () => {
  it("a device pinning through an IOMMU-backed group promotes it: only pinned pages are dirty", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    // A second function of the fixture's IOMMU group whose driver can take invalidations, hence pin.
    const groupNode = [...f.host.vfio.groups.values()].find((g) => g.iommuGroup.type === "iommu")!;
    const pinned = new Set<number>();
    const dev = f.host.vfio.addDevice(groupNode, "0000:01:00.1", {
      dmaUnmap(vdev, iova, length) {
        for (const p of [...pinned]) {
          if (addrOfPage(p) < iova || addrOfPage(p) >= iova + length) continue;
          vfioUnpinPages(vdev, addrOfPage(p) as Iova, 1);
          pinned.delete(p);
        }
      },
    });
    const devFd = await f.host.ioctl(f.qemu, f.groupFds[0]!, VFIO_GROUP_GET_DEVICE_FD, "0000:01:00.1");
    expect(devFd).to.be.greaterThan(0);
    expect(await f.map()).to.equal(0);
    expect(await dirtyPages(f, START)).to.equal(0);
    f.check();
    expect(f.iommu.numNonPinnedGroups).to.equal(1);
    let r = await getBitmap(f, 0n, f.guestBytes);
    expect(hex(r.data)).to.equal(bitmapOf(128, range(0, 1024)));
    expect(vfioPinPages(dev, addrOfPage(5) as Iova, 1, RW, new Uint32Array(1))).to.equal(1);
    pinned.add(5);
    f.check();
    expect(f.iommu.numNonPinnedGroups).to.equal(0);
    // IOMMU-backed: the pin takes a second reference on the page and charges nothing.
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([1024, 1025]);
    r = await getBitmap(f, 0n, f.guestBytes);
    expect(r.ret).to.equal(0);
    expect(hex(r.data)).to.equal(bitmapOf(128, [5]));
    expect(await dirtyPages(f, STOP)).to.equal(0);
    expect((await f.unmap(0n, f.guestBytes)).ret).to.equal(0);
    f.check();
    expect(pinned.size).to.equal(0);
    expect(await f.host.close(f.qemu, devFd)).to.equal(0);
    await f.teardown();
    expect(f.leaks()).to.deep.equal(NO_LEAKS);
  });

  it("mixed: detaching the never-pinned IOMMU group while tracking marks every bitmap dirty once", async () => {
    const f = await Fixture.create({ variant: "mixed" });
    expect(await f.map()).to.equal(0);
    f.pin(3);
    expect(await dirtyPages(f, START)).to.equal(0);
    f.check();
    // mdev pins promote the emulated group only; the IOMMU group stays non-pinned.
    expect(f.iommu.numNonPinnedGroups).to.equal(1);
    let r = await getBitmap(f, 0n, f.guestBytes);
    expect(hex(r.data)).to.equal(bitmapOf(128, range(0, 1024)));
    expect(await f.host.ioctl(f.qemu, f.groupFds[1]!, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
    f.check();
    expect([f.iommu.numNonPinnedGroups, f.iommu.domains.length, f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0, 1, 1]);
    r = await getBitmap(f, 0n, f.guestBytes);
    expect(hex(r.data)).to.equal(bitmapOf(128, range(0, 1024)));
    r = await getBitmap(f, 0n, f.guestBytes);
    expect(hex(r.data)).to.equal(bitmapOf(128, [3]));
    f.check();
    expect(await dirtyPages(f, STOP)).to.equal(0);
    expect((await f.unmap(0n, f.guestBytes)).ret).to.equal(0);
    f.check();
    await f.teardown();
    expect(f.leaks()).to.deep.equal(NO_LEAKS);
  });
});
