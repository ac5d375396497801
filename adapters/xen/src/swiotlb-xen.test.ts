import { expect } from "chai";
import { DMA_MAPPING_ERROR, DmaDirection, Scatterlist, SwiotlbPool } from "@vgpu-iommu/core";
import { MACHINE_VIEW, XenSwiotlb, pvPfnView, type XenDmaDevice } from "./swiotlb-xen.js";
import { MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

const dev = (bits: number): XenDmaDevice => ({ name: `gpu${bits}`, dmaMask: (1n << BigInt(bits)) - 1n, segmentBoundaryMask: 0xffff_ffffn });

describe("swiotlb-xen", () => {
  let env: XenEnv;
  let pool: SwiotlbPool;
  afterEach(() => {
    pool.destroy();
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  const setup = (era: "2016" | "current" = "current", superpages = false): XenSwiotlb => {
    env = xenEnv({ dom0: { superpages } });
    pool = new SwiotlbPool(env.host, { bytes: 2 * 1024 * 1024, belowPfn: 1 << 15 });
    return new XenSwiotlb(pool, env.host.phys, era);
  };

  it("maps a frame directly at its MFN when the device reaches it, and bounces it below 4 GiB, with its data, when not", () => {
    const sw = setup();
    const { guest, host } = env;
    let gfn = 0;
    while (guest.p2m!.mfn(gfn) < 1 << 16) gfn++;
    const high = guest.p2m!.mfn(gfn);
    const gpa = BigInt(gfn) << 12n;
    expect(guest.writeGuest(gpa, Uint8Array.of(9, 8, 7))).to.equal(0);
    expect(sw.mapPage(dev(64), MACHINE_VIEW, high, 0, 4096, DmaDirection.BIDIRECTIONAL)).to.equal(BigInt(high) << 12n);
    const low = dev(28);
    const mask = Number(low.dmaMask);
    expect(high * 4096).to.be.above(mask);
    const bus = sw.mapPhys(low, MACHINE_VIEW, high, 0, 4096, DmaDirection.BIDIRECTIONAL);
    expect(bus).to.be.greaterThan(-1);
    expect(bus + 4095).to.be.at.most(mask);
    expect(bus).to.be.below(2 ** 27);
    expect([sw.direct, sw.bounced, sw.liveBounces, pool.used]).to.deep.equal([1, 1, 1, 2]);
    const seen = new Uint8Array(3);
    host.phys.read(Math.floor(bus / 4096), bus % 4096, seen);
    expect([...seen]).to.deep.equal([9, 8, 7]);
    host.phys.write(Math.floor(bus / 4096), bus % 4096, Uint8Array.of(1, 2, 3));
    sw.unmapPhys(low, bus, 4096, DmaDirection.BIDIRECTIONAL);
    const back = new Uint8Array(3);
    expect(guest.readGuest(gpa, back)).to.equal(0);
    expect([...back]).to.deep.equal([1, 2, 3]);
    expect([sw.liveBounces, pool.used]).to.deep.equal([0, 0]);
  });

  it("bounces a PFN-contiguous Dom0 buffer that is not machine-contiguous, and maps a machine-contiguous one directly", () => {
    const sw = setup();
    const view = pvPfnView(env.dom0.pvP2m!);
    const p2m = env.dom0.pvP2m!;
    let pfn = 0x200;
    while (p2m.mfn(pfn + 1) === p2m.mfn(pfn) + 1) pfn++;
    expect(XenSwiotlb.straddles(view, pfn, 0, 8192)).to.equal(true);
    const a = sw.mapPhys(dev(64), view, pfn, 0, 8192, DmaDirection.TO_DEVICE);
    expect(sw.isBounce(a)).to.equal(true);
    expect(pool.used).to.equal(4);
    sw.unmapPhys(dev(64), a, 8192, DmaDirection.TO_DEVICE);
    expect(pool.used).to.equal(0);
    env.xen.shutdown();
    pool.destroy();
    const sw2 = setup("current", true);
    const view2 = pvPfnView(env.dom0.pvP2m!);
    expect(XenSwiotlb.straddles(view2, 0x200, 0, 8192)).to.equal(false);
    const d = sw2.mapPhys(dev(64), view2, 0x200, 0x10, 8000, DmaDirection.TO_DEVICE);
    expect(d).to.equal(env.dom0.pvP2m!.mfn(0x200) * 4096 + 0x10);
    expect([sw2.direct, sw2.bounced]).to.deep.equal([1, 0]);
  });

  it("map_sg maps every entry on its own and never merges, even machine-contiguous ones", () => {
    const sw = setup();
    const base = env.guest.p2m!.mfn(0);
    const frames = [base, base + 1, base + 2];
    const sg = Scatterlist.fromPages(frames);
    expect(sw.mapSg(dev(64), MACHINE_VIEW, sg, 3, DmaDirection.TO_DEVICE)).to.equal(3);
    expect([0, 1, 2].map((i) => sg.dmaAddress(i))).to.deep.equal(frames.map((f) => BigInt(f) << 12n));
    expect([...sg.dmaLength]).to.deep.equal([4096, 4096, 4096]);
    sw.unmapSg(dev(64), sg, 3, DmaDirection.TO_DEVICE);
  });

  for (const era of ["2016", "current"] as const) {
    it(`fails map_sg when the pool is full: unmaps what it did and returns ${era === "2016" ? "0" : "-EIO"} (${era})`, () => {
      const sw = setup(era);
      const mfns = Array.from({ length: 600 }, (_, i) => env.guest.p2m!.mfn(i));
      const sg = Scatterlist.fromPages(mfns);
      const small = dev(12);
      const r = sw.mapSg({ ...small, dmaMask: (1n << 32n) - 1n, forceSwiotlb: true }, MACHINE_VIEW, sg, 600, DmaDirection.FROM_DEVICE);
      expect(r).to.equal(era === "2016" ? 0 : -5);
      expect(sg.dmaLength[0]).to.equal(0);
      expect([pool.used, sw.liveBounces]).to.deep.equal([0, 0]);
      expect(sw.bounced).to.equal(512);
      expect(env.host.kernel.messages.some((m) => m.includes("swiotlb buffer is full"))).to.equal(true);
    });
  }

  it("returns DMA_MAPPING_ERROR when even the bounce buffer is beyond the device's mask", () => {
    const sw = setup();
    const r = sw.mapPage(dev(12), MACHINE_VIEW, env.guest.p2m!.mfn(1), 0, 4096, DmaDirection.TO_DEVICE);
    expect(r).to.equal(DMA_MAPPING_ERROR);
    expect(pool.used).to.equal(0);
  });

  it("treats sizes of 2 MiB pools as 1024 slots of 2 KiB and a 40-bit mask as reaching below 1 TiB only", () => {
    setup();
    expect(pool.nslabs).to.equal(1024);
    expect(XenSwiotlb.dmaCapable(dev(40), 2 ** 40 - 4096, 4096)).to.equal(true);
    expect(XenSwiotlb.dmaCapable(dev(40), 2 ** 40 - 4095, 4096)).to.equal(false);
    expect(MiB).to.equal(1048576n);
  });
});
