import { expect } from "chai";
import { Fixture, NO_LEAKS, VARIANTS } from "../../testing/fixture.js";
import { vfioPinPages, vfioUnpinPages } from "../vendor-api.js";
import { IOMMU_READ, IOMMU_WRITE } from "./type1-iommu.js";
import { VFIO_IOMMU_UNMAP_DMA } from "../uapi.js";
import type { Iova } from "../../address/address.js";

describe("type1 smoke", () => {
  for (const variant of VARIANTS) {
    it(`maps, pins, unmaps with invalidation (${variant})`, async () => {
      const f = await Fixture.create({ variant });
      expect(await f.map()).to.equal(0);
      f.host.assertInvariants();
      const pages = new Uint32Array(16);
      if (f.device !== undefined) {
        try {
          expect(vfioPinPages(f.device, 0x1000n as Iova, 16, IOMMU_READ | IOMMU_WRITE, pages)).to.equal(16);
          for (let i = 1; i <= 16; i++) f.pinned.set(i, 1);
        } catch (e) {
          expect(variant).to.equal("memlock-limited");
          void e;
        }
        f.host.assertInvariants();
      }
      const unmap = { argsz: 24, flags: 0, iova: 0n, size: f.guestBytes };
      expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, unmap)).to.equal(0);
      expect(unmap.size).to.equal(f.guestBytes);
      f.host.assertInvariants();
      expect(f.host.phys.totalPins).to.equal(0);
      expect(f.qemu.mm.lockedVm).to.equal(0);
      expect(f.host.kernel.warnings).to.deep.equal([]);
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
      expect(f.host.phys.framesInUse).to.equal(0);
      void vfioUnpinPages;
    });
  }
});

describe("process exit", () => {
  it("closes the device before its group leaves the container, releasing every pin and frame", async () => {
    const held: number[] = [];
    const f = await Fixture.create({
      variant: "mixed",
      deviceOps: {
        dmaUnmap: () => undefined,
        closeDevice(vdev) {
          for (const page of held.splice(0)) vfioUnpinPages(vdev, (BigInt(page) << 12n) as Iova, 1);
        },
      },
    });
    expect(await f.map()).to.equal(0);
    const pages = new Uint32Array(4);
    expect(vfioPinPages(f.device!, 0x2000n as Iova, 4, IOMMU_READ, pages)).to.equal(4);
    held.push(2, 3, 4, 5);
    const guestPages = Number(f.guestBytes / 4096n);
    expect(f.host.phys.totalPins).to.equal(guestPages + 4);
    f.qemu.exit();
    await new Promise((r) => setImmediate(r));
    expect(f.host.vfio.containers.size).to.equal(0);
    expect(f.host.phys.totalPins).to.equal(0);
    expect(f.host.phys.framesInUse).to.equal(0);
    expect(f.host.kernel.warnings).to.deep.equal([]);
  });
});
