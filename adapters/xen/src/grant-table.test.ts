import { expect } from "chai";
import {
  GNTMAP_device_map,
  GNTMAP_host_map,
  GNTMAP_readonly,
  GNTST,
  GNTTAB_NR_RESERVED_ENTRIES,
  GRANT_ENTRIES_PER_FRAME,
  MAPTRACK_PER_FRAME,
  GTF_reading,
  GTF_writing,
  XEN_GRANT_DMA_ADDR_OFF,
  grantDmaAddr,
  grantError,
  grantRefOfDmaAddr,
  gntstName,
  gnttabMapGrantRef,
  gnttabUnmapGrantRef,
  type GnttabMapGrantRef,
  type GnttabUnmapGrantRef,
} from "./grant-table.js";
import { P2mType } from "./p2m.js";
import { IOMMUF_writable } from "./iommu-context.js";
import { GPU, MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

const map = (ref: number, dom: number, flags = GNTMAP_host_map, host_addr = 0n): GnttabMapGrantRef => ({ host_addr, flags, ref, dom });

describe("grant tables", () => {
  let env: XenEnv;
  afterEach(() => {
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  it("names every GNTST code of the public header and maps each to the shared vocabulary", () => {
    env = xenEnv();
    expect(GNTST).to.deep.equal({
      okay: 0,
      general_error: -1,
      bad_domain: -2,
      bad_gntref: -3,
      bad_handle: -4,
      bad_virt_addr: -5,
      bad_dev_addr: -6,
      no_device_space: -7,
      permission_denied: -8,
      bad_page: -9,
      bad_copy_arg: -10,
      address_too_big: -11,
      eagain: -12,
      no_space: -13,
    });
    const codes = Object.values(GNTST)
      .filter((s) => s !== 0)
      .map((s) => [gntstName(s), grantError(s, "x").code]);
    expect(codes).to.deep.equal([
      ["GNTST_general_error", "EIO"],
      ["GNTST_bad_domain", "ESRCH"],
      ["GNTST_bad_gntref", "EINVAL"],
      ["GNTST_bad_handle", "EINVAL"],
      ["GNTST_bad_virt_addr", "EFAULT"],
      ["GNTST_bad_dev_addr", "EFAULT"],
      ["GNTST_no_device_space", "ENOSPC"],
      ["GNTST_permission_denied", "EPERM"],
      ["GNTST_bad_page", "EFAULT"],
      ["GNTST_bad_copy_arg", "EINVAL"],
      ["GNTST_address_too_big", "EINVAL"],
      ["GNTST_eagain", "EAGAIN"],
      ["GNTST_no_space", "ENOSPC"],
    ]);
    expect(grantError(GNTST.eagain, "paged").fields.cause).to.deep.equal({ api: "grant", status: -12, name: "GNTST_eagain" });
  });

  it("maps a grant with host_map and device_map: one reference per kind, dev_bus_addr = MFN << 12, flags tracked, unmapped cleanly", () => {
    env = xenEnv();
    const { xen, dom0, guest, host } = env;
    const gt = xen.grantTable(guest.domid);
    const ref = gt.grantAccess(0, 0x30, false);
    expect(ref).to.equal(GNTTAB_NR_RESERVED_ENTRIES);
    const mfn = guest.p2m!.mfn(0x30);
    const op = map(ref, guest.domid, GNTMAP_host_map | GNTMAP_device_map, 0x7000_0000n);
    expect(gnttabMapGrantRef(xen, dom0, [op], 1)).to.equal(0);
    expect(op.status).to.equal(GNTST.okay);
    expect(op.dev_bus_addr).to.equal(BigInt(mfn) << 12n);
    expect(host.phys.pins[mfn]).to.equal(2);
    expect(gt.shFlags[ref]! & (GTF_reading | GTF_writing)).to.equal(GTF_reading | GTF_writing);
    expect(gt.endAccess(ref)).to.equal(false);
    expect(xen.grantTable(0).handlesInUse).to.equal(1);
    const un: GnttabUnmapGrantRef = { host_addr: 0x7000_0000n, dev_bus_addr: BigInt(mfn) << 12n, handle: op.handle! };
    expect(gnttabUnmapGrantRef(xen, dom0, [un], 1)).to.equal(0);
    expect(un.status).to.equal(GNTST.okay);
    expect(host.phys.pins[mfn]).to.equal(0);
    expect(gt.shFlags[ref]! & (GTF_reading | GTF_writing)).to.equal(0);
    expect(xen.grantTable(0).handlesInUse).to.equal(0);
    expect(gt.endAccess(ref)).to.equal(true);
    expect(gnttabUnmapGrantRef(xen, dom0, [un], 1)).to.equal(0);
    expect(un.status).to.equal(GNTST.bad_handle);
  });

  it("answers each bad map with its GNTST code in the op and takes nothing", () => {
    env = xenEnv();
    const { xen, dom0, guest, host } = env;
    const gt = xen.grantTable(guest.domid);
    const rw = gt.grantAccess(0, 1, false);
    const ro = gt.grantAccess(0, 2, true);
    const other = xen.createGuest({ name: "vm2", memoryBytes: 4n * MiB });
    const toOther = gt.grantAccess(other.domid, 3, false);
    const hole = gt.grantAccess(0, 1 << 20, false);
    const paged = gt.grantAccess(0, 4, false);
    const shared = gt.grantAccess(0, 5, true);
    expect(guest.pageOut(4)).to.equal(0);
    expect(guest.share(5)).to.equal(0);
    const ops = [
      map(rw, guest.domid, 0),
      map(rw, 999),
      map(gt.nrEntries, guest.domid),
      map(toOther, guest.domid),
      map(ro, guest.domid, GNTMAP_host_map),
      map(hole, guest.domid),
      map(paged, guest.domid),
      map(shared, guest.domid, GNTMAP_host_map | GNTMAP_readonly),
      map(-1, guest.domid),
    ];
    expect(gnttabMapGrantRef(xen, dom0, ops, ops.length)).to.equal(0);
    expect(ops.map((o) => o.status)).to.deep.equal([GNTST.bad_gntref, GNTST.bad_domain, GNTST.bad_gntref, GNTST.general_error, GNTST.general_error, GNTST.bad_page, GNTST.eagain, GNTST.eagain, GNTST.bad_gntref]);
    expect(guest.pendingPopulates).to.deep.equal([4]);
    expect(host.phys.totalPins).to.equal(0);
    expect(xen.grantTable(0).handlesInUse).to.equal(0);
    expect(gnttabMapGrantRef(xen, dom0, ops, ops.length + 1)).to.equal(-14);
    guest.pageIn(4);
    const retry = [map(paged, guest.domid)];
    gnttabMapGrantRef(xen, dom0, retry, 1);
    expect(retry[0]!.status).to.equal(GNTST.okay);
    expect(gnttabUnmapGrantRef(xen, dom0, [{ host_addr: 1n, dev_bus_addr: 0n, handle: retry[0]!.handle! }], 1)).to.equal(0);
    expect(host.phys.totalPins).to.equal(0);
  });

  it("refuses device_map from an auto-translated mapper and puts a host map into its P2M as grant_map_ro/rw", () => {
    env = xenEnv({ dom0: { kind: "pvh", memoryBytes: 32n * MiB } });
    const { xen, dom0, guest } = env;
    const gt = xen.grantTable(guest.domid);
    const ref = gt.grantAccess(0, 0x11, true);
    const dev = map(ref, guest.domid, GNTMAP_device_map | GNTMAP_readonly);
    gnttabMapGrantRef(xen, dom0, [dev], 1);
    expect(dev.status).to.equal(GNTST.general_error);
    const gfn = 0x40000;
    const host = map(ref, guest.domid, GNTMAP_host_map | GNTMAP_readonly, BigInt(gfn) << 12n);
    gnttabMapGrantRef(xen, dom0, [host], 1);
    expect(host.status).to.equal(GNTST.okay);
    expect(dom0.p2m!.type(gfn)).to.equal(P2mType.grant_map_ro);
    expect(dom0.p2m!.mfn(gfn)).to.equal(guest.p2m!.mfn(0x11));
    const clash = map(ref, guest.domid, GNTMAP_host_map | GNTMAP_readonly, BigInt(gfn) << 12n);
    gnttabMapGrantRef(xen, dom0, [clash], 1);
    expect(clash.status).to.equal(GNTST.general_error);
    const un: GnttabUnmapGrantRef = { host_addr: BigInt(gfn) << 12n, dev_bus_addr: 0n, handle: host.handle! };
    gnttabUnmapGrantRef(xen, dom0, [un], 1);
    expect(un.status).to.equal(GNTST.okay);
    expect(dom0.p2m!.type(gfn)).to.equal(P2mType.invalid);
  });

  it("mirrors grant maps into a strict PV Dom0's IOMMU context at BFN == MFN, read-only until a writable map", () => {
    env = xenEnv({ xen: { dom0Iommu: { strict: true } } });
    const { xen, dom0, guest } = env;
    xen.assignDevice(GPU, 0);
    const gt = xen.grantTable(guest.domid);
    const ref = gt.grantAccess(0, 0x50, false);
    const mfn = guest.p2m!.mfn(0x50);
    const addr = BigInt(mfn) << 12n;
    expect(xen.iommu.deviceTranslate(GPU, addr, false)).to.equal(-1);
    const ro = map(ref, guest.domid, GNTMAP_device_map | GNTMAP_readonly);
    gnttabMapGrantRef(xen, dom0, [ro], 1);
    expect(xen.iommu.deviceTranslate(GPU, addr, false)).to.equal(mfn);
    expect(xen.iommu.deviceTranslate(GPU, addr, true)).to.equal(-1);
    const rw = map(ref, guest.domid, GNTMAP_device_map);
    gnttabMapGrantRef(xen, dom0, [rw], 1);
    expect(xen.iommu.context(0, 0)!.perms(mfn) & IOMMUF_writable).to.equal(IOMMUF_writable);
    const flushes = xen.dom0Flushes;
    gnttabUnmapGrantRef(xen, dom0, [{ host_addr: 0n, dev_bus_addr: addr, handle: rw.handle! }], 1);
    expect(xen.iommu.deviceTranslate(GPU, addr, true)).to.equal(-1);
    expect(xen.iommu.deviceTranslate(GPU, addr, false)).to.equal(mfn);
    gnttabUnmapGrantRef(xen, dom0, [{ host_addr: 0n, dev_bus_addr: addr, handle: ro.handle! }], 1);
    expect(xen.iommu.deviceTranslate(GPU, addr, false)).to.equal(-1);
    expect(xen.dom0Flushes).to.equal(flushes + 2);
    const bad: GnttabUnmapGrantRef = { host_addr: 0n, dev_bus_addr: addr + 4096n, handle: 0 };
    gnttabUnmapGrantRef(xen, dom0, [bad], 1);
    expect(bad.status).to.equal(GNTST.bad_handle);
  });

  it("checks dev_bus_addr on unmap and rejects handles beyond the maptrack", () => {
    env = xenEnv();
    const { xen, dom0, guest } = env;
    const ref = xen.grantTable(guest.domid).grantAccess(0, 7, false);
    const op = map(ref, guest.domid, GNTMAP_device_map);
    gnttabMapGrantRef(xen, dom0, [op], 1);
    const wrong: GnttabUnmapGrantRef = { host_addr: 0n, dev_bus_addr: op.dev_bus_addr! + 4096n, handle: op.handle! };
    const beyond: GnttabUnmapGrantRef = { host_addr: 0n, dev_bus_addr: op.dev_bus_addr!, handle: 1 << 20 };
    gnttabUnmapGrantRef(xen, dom0, [wrong, beyond], 2);
    expect([wrong.status, beyond.status]).to.deep.equal([GNTST.general_error, GNTST.bad_handle]);
    const right: GnttabUnmapGrantRef = { host_addr: 0n, dev_bus_addr: op.dev_bus_addr!, handle: op.handle! };
    gnttabUnmapGrantRef(xen, dom0, [right], 1);
    expect(right.status).to.equal(GNTST.okay);
  });

  it("runs out of grant entries at gnttab_max_frames x 512 (-ENOSPC) and of maptrack handles with GNTST_no_space, or GNTST_no_device_space before 2022", () => {
    for (const era of ["current", "2016"] as const) {
      env = xenEnv({ xen: { gnttabMaxFrames: 2, gnttabMaxMaptrackFrames: 1, era } });
      const { xen, dom0, guest, host } = env;
      const gt = xen.grantTable(guest.domid);
      const refs: number[] = [];
      for (;;) {
        const r = gt.grantAccess(0, refs.length % 1000, true);
        if (r < 0) {
          expect(r).to.equal(-28);
          break;
        }
        refs.push(r);
      }
      expect(refs.length).to.equal(2 * GRANT_ENTRIES_PER_FRAME - GNTTAB_NR_RESERVED_ENTRIES);
      expect(gt.nrFrames).to.equal(2);
      const ops = refs.slice(0, MAPTRACK_PER_FRAME + 1).map((r) => map(r, guest.domid, GNTMAP_host_map | GNTMAP_readonly));
      gnttabMapGrantRef(xen, dom0, ops, ops.length);
      expect(ops.filter((o) => o.status === GNTST.okay).length).to.equal(MAPTRACK_PER_FRAME);
      expect(ops[MAPTRACK_PER_FRAME]!.status).to.equal(era === "current" ? GNTST.no_space : GNTST.no_device_space);
      const unmaps = ops.slice(0, MAPTRACK_PER_FRAME).map((o): GnttabUnmapGrantRef => ({ host_addr: 1n, dev_bus_addr: 0n, handle: o.handle! }));
      gnttabUnmapGrantRef(xen, dom0, unmaps, unmaps.length);
      expect(unmaps.every((u) => u.status === 0)).to.equal(true);
      expect(host.phys.totalPins).to.equal(0);
      expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
    }
    env = xenEnv();
    expect([GRANT_ENTRIES_PER_FRAME, MAPTRACK_PER_FRAME, env.xen.options.gnttabMaxFrames, env.xen.options.gnttabMaxMaptrackFrames]).to.deep.equal([512, 256, 64, 1024]);
  });

  it("builds grant-dma-ops addresses as bit 63 | ref << 12", () => {
    env = xenEnv();
    expect(XEN_GRANT_DMA_ADDR_OFF).to.equal(0x8000_0000_0000_0000n);
    expect(grantDmaAddr(0x1234)).to.equal(0x8000_0000_0123_4000n);
    expect(grantDmaAddr(1, 0x10)).to.equal(0x8000_0000_0000_1010n);
    expect(grantRefOfDmaAddr(0x8000_0000_0123_4abcn)).to.equal(0x1234);
    expect(grantRefOfDmaAddr(0x1234000n)).to.equal(-1);
  });
});
