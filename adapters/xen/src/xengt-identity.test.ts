import { expect } from "chai";
import { XenGtIdentity } from "./xengt-identity.js";
import { caught, GPU, MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

describe("XenGT identity shortcut (dma = MFN << 12)", () => {
  let env: XenEnv;
  afterEach(() => {
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  it("gives the MFN's bus address, which a Dom0 device reaches; unmap does nothing", () => {
    env = xenEnv();
    env.xen.assignDevice(GPU, 0);
    const id = new XenGtIdentity(env.xen.dom0Iommu, "pv");
    const mfn = env.guest.p2m!.mfn(0x33);
    const addr = id.mapGuestPage(mfn, 4096);
    expect(addr).to.equal(BigInt(mfn) << 12n);
    expect(env.xen.iommu.deviceTranslate(GPU, addr, true)).to.equal(mfn);
    id.unmapGuestPage(addr);
    expect(env.xen.iommu.deviceTranslate(GPU, addr, true)).to.equal(mfn);
    expect([id.maps, id.unmaps, env.xen.hypercalls()]).to.deep.equal([1, 1, 0]);
  });

  it("ignores the size as XenGT did: the second page of a 2-page request is whatever follows the first MFN", () => {
    env = xenEnv();
    env.xen.assignDevice(GPU, 0);
    const id = new XenGtIdentity(env.xen.dom0Iommu, "pv");
    let gfn = 0;
    while (env.guest.p2m!.mfn(gfn + 1) === env.guest.p2m!.mfn(gfn) + 1) gfn++;
    const addr = id.mapGuestPage(env.guest.p2m!.mfn(gfn), 8192);
    expect(env.xen.iommu.deviceTranslate(GPU, addr + 4096n, false)).to.not.equal(env.guest.p2m!.mfn(gfn + 1));
  });

  for (const [name, opts] of [
    ["a strict PV Dom0", { xen: { dom0Iommu: { strict: true } } }],
    ["a PVH Dom0", { dom0: { kind: "pvh" as const, memoryBytes: 32n * MiB } }],
  ] as const) {
    it(`is refused with EINVAL on ${name}, where the address would fault`, () => {
      env = xenEnv(opts);
      const e = caught(() => new XenGtIdentity(env.xen.dom0Iommu, env.dom0.kind === "pv" ? "pv" : "pvh"));
      expect([e.code, e.errno, e.reason]).to.deep.equal(["EINVAL", 22, "xengt-identity-needs-nonstrict-pv-dom0"]);
    });
  }
});
