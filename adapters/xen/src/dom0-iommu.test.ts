import { expect } from "chai";
import { resolveDom0Iommu } from "./dom0-iommu.js";
import { GPU, MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

describe("dom0-iommu= and Dom0's IOMMU context", () => {
  let env: XenEnv;
  afterEach(() => {
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  it("resolves the options: PV defaults non-strict, PVH always strict and never passthrough", () => {
    expect(resolveDom0Iommu("pv")).to.deep.equal({ passthrough: false, strict: false, mapReserved: true, reachesAllRam: true });
    expect(resolveDom0Iommu("pv", { strict: true })).to.deep.equal({ passthrough: false, strict: true, mapReserved: true, reachesAllRam: false });
    expect(resolveDom0Iommu("pv", { strict: true, passthrough: true }).reachesAllRam).to.equal(true);
    expect(resolveDom0Iommu("pvh", { strict: false, passthrough: true, mapReserved: false })).to.deep.equal({ passthrough: false, strict: true, mapReserved: false, reachesAllRam: false });
    env = xenEnv();
  });

  it("non-strict PV: a Dom0 device reaches every guest frame at BFN == MFN", () => {
    env = xenEnv();
    env.xen.assignDevice(GPU, 0);
    const mfn = env.guest.p2m!.mfn(0x20);
    expect(env.xen.iommu.deviceTranslate(GPU, BigInt(mfn) << 12n, true)).to.equal(mfn);
    expect(env.xen.iommu.deviceTranslate(GPU, BigInt(env.xen.frames.ramFrames) << 12n, false)).to.equal(-1);
  });

  it("strict PV: only Dom0's own frames are reachable, and reserved regions stay identity-mapped", () => {
    env = xenEnv({ xen: { dom0Iommu: { strict: true }, reservedRegions: [{ firstMfn: 0x40, npages: 2 }] } });
    env.xen.assignDevice(GPU, 0);
    const guestMfn = env.guest.p2m!.mfn(0x20);
    const dom0Mfn = env.dom0.pvP2m!.mfn(0x200);
    expect(env.xen.iommu.deviceTranslate(GPU, BigInt(guestMfn) << 12n, false)).to.equal(-1);
    expect(env.xen.iommu.deviceTranslate(GPU, BigInt(dom0Mfn) << 12n, false)).to.equal(dom0Mfn);
    expect(env.xen.iommu.deviceTranslate(GPU, 0x41000n, false)).to.equal(0x41);
  });

  it("passthrough: no translation at all", () => {
    env = xenEnv({ xen: { dom0Iommu: { passthrough: true } } });
    env.xen.assignDevice(GPU, 0);
    expect(env.xen.iommu.deviceTranslate(GPU, 0xf000_0000_000n, true)).to.equal(0xf000_0000);
  });

  it("PVH: the context is Dom0's P2M (BFN == GFN); guest frames are unreachable until mapped into it", () => {
    env = xenEnv({ dom0: { kind: "pvh", memoryBytes: 32n * MiB } });
    env.xen.assignDevice(GPU, 0);
    const gfnMfn = env.dom0.p2m!.mfn(0x123);
    expect(env.xen.iommu.deviceTranslate(GPU, 0x123000n, true)).to.equal(gfnMfn);
    const guestMfn = env.guest.p2m!.mfn(0x20);
    const viaDom0 = env.dom0.p2m!.mfn(guestMfn);
    expect(env.xen.iommu.deviceTranslate(GPU, BigInt(guestMfn) << 12n, false)).to.equal(viaDom0);
    expect(viaDom0).to.not.equal(guestMfn);
    expect(env.xen.dom0Iommu.strict).to.equal(true);
  });
});
