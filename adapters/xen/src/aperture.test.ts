import { expect } from "chai";
import { iomemPermission, memoryMapping, xengtMapGfnToMfn } from "./aperture.js";
import { P2mType } from "./p2m.js";
import { NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

describe("aperture passthrough (XEN_DOMCTL_memory_mapping)", () => {
  let env: XenEnv;
  afterEach(() => {
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  const GFN = 0x100000;

  it("maps MMIO frames in chunks of 64, halving and retrying on -E2BIG", () => {
    env = xenEnv({ xen: { memoryMappingMaxFrames: 16 } });
    const { xen, dom0, guest, host } = env;
    const bar = host.phys.allocMmio(256);
    const stats = { calls: 0, halvings: 0 };
    expect(xengtMapGfnToMfn(xen, dom0, guest.domid, GFN, bar, 100, true, stats)).to.equal(0);
    expect(stats).to.deep.equal({ calls: 1 + 2 + 7, halvings: 2 });
    for (const i of [0, 63, 99]) {
      expect(guest.p2m!.type(GFN + i)).to.equal(P2mType.mmio_direct);
      expect(guest.p2m!.mfn(GFN + i)).to.equal(bar + i);
    }
    expect(guest.p2m!.type(GFN + 100)).to.equal(P2mType.invalid);
    expect(xengtMapGfnToMfn(xen, dom0, guest.domid, GFN, bar, 100, false)).to.equal(0);
    expect(guest.p2m!.type(GFN)).to.equal(P2mType.invalid);
  });

  it("removes everything it mapped when a later chunk fails with another error", () => {
    env = xenEnv();
    const { xen, dom0, guest, host } = env;
    const bar = host.phys.allocMmio(256);
    expect(iomemPermission(xen, dom0, guest.domid, bar + 200, 1, true)).to.equal(0);
    expect(memoryMapping(xen, dom0, guest.domid, GFN + 130, bar + 200, 1, true)).to.equal(0);
    const stats = { calls: 0, halvings: 0 };
    expect(xengtMapGfnToMfn(xen, dom0, guest.domid, GFN, bar, 150, true, stats)).to.equal(-16);
    for (const i of [0, 64, 127, 129]) expect(guest.p2m!.type(GFN + i)).to.equal(P2mType.invalid);
    expect(guest.p2m!.type(GFN + 130)).to.equal(P2mType.mmio_direct);
    expect(stats).to.deep.equal({ calls: 4, halvings: 0 });
  });

  it("answers -EPERM without iomem permission or from a non-hardware domain, -E2BIG past the limit, -EINVAL for bad ranges, -ESRCH for no domain", () => {
    env = xenEnv();
    const { xen, dom0, guest, host } = env;
    const bar = host.phys.allocMmio(128);
    expect(memoryMapping(xen, dom0, guest.domid, GFN, bar, 1, true)).to.equal(-1);
    expect(iomemPermission(xen, guest, guest.domid, bar, 1, true)).to.equal(-1);
    expect(iomemPermission(xen, dom0, 999, bar, 1, true)).to.equal(-3);
    expect(iomemPermission(xen, dom0, guest.domid, bar, 128, true)).to.equal(0);
    expect(memoryMapping(xen, dom0, guest.domid, GFN, bar, 65, true)).to.equal(-7);
    expect(memoryMapping(xen, dom0, guest.domid, GFN, bar, 0, true)).to.equal(-22);
    expect(memoryMapping(xen, guest, guest.domid, GFN, bar, 1, true)).to.equal(-1);
    expect(memoryMapping(xen, dom0, 999, GFN, bar, 1, true)).to.equal(-3);
    expect(memoryMapping(xen, dom0, guest.domid, 0, bar, 1, true)).to.equal(-16);
    expect(iomemPermission(xen, dom0, guest.domid, bar, 128, false)).to.equal(0);
    expect(memoryMapping(xen, dom0, guest.domid, GFN, bar, 1, true)).to.equal(-1);
  });
});
