import { expect } from "chai";
import {
  IOMMU_MAP_OP_no_ref_cnt,
  IOMMU_OP_readable,
  IOMMU_OP_writeable,
  IOMMU_PAGE_ORDER_SHIFT,
  IOMMU_QUERY_map_all_mfns,
  IOMMU_QUERY_map_cap,
  IOMMUOP_map_foreign_page,
  PvIommuOps,
} from "./pv-iommu-xenserver.js";
import { DOMID_SELF } from "./xen-domain.js";
import { GPU, MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

const RW = IOMMU_OP_readable | IOMMU_OP_writeable;
const OFFSET = 248 * 262144;

describe("XenServer PV-IOMMU: HYPERVISOR_iommu_op(ops[], count)", () => {
  let env: XenEnv;
  afterEach(() => {
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  const setup = (xen: Parameters<typeof xenEnv>[0] = {}): XenEnv => {
    env = xenEnv({ ...xen, xen: { pvIommu: "xenserver", ...xen.xen } });
    env.xen.assignDevice(GPU, 0);
    return env;
  };

  it("refuses every caller but the hardware domain with -ENOSYS for the whole call, leaving the statuses alone", () => {
    const { xen, guest } = setup();
    const ops = new PvIommuOps(2);
    ops.mapPage(0, 0x9000, 1, RW | IOMMU_MAP_OP_no_ref_cnt);
    ops.status[0] = 77;
    const calls = xen.hypercalls("iommu_op");
    expect(xen.xenserver!.iommuOp(guest, ops, 1)).to.equal(-38);
    expect(ops.status[0]).to.equal(77);
    expect(xen.hypercalls("iommu_op")).to.equal(calls + 1);
    expect(xen.xenserver!.iommuOp(env.dom0, ops, -1)).to.equal(-22);
  });

  it("reports the map capability and the foreign offset to a PV Dom0 on Intel", () => {
    const { xen, dom0 } = setup();
    const ops = new PvIommuOps(1);
    ops.queryCaps(0);
    expect(xen.xenserver!.iommuOp(dom0, ops, 1)).to.equal(0);
    expect([ops.status[0], ops.flags[0], ops.offset[0]]).to.deep.equal([0, IOMMU_QUERY_map_cap | IOMMU_QUERY_map_all_mfns, OFFSET]);
  });

  for (const [name, opts] of [
    ["AMD", { cpuVendor: "amd" }],
    ["iommu passthrough", { dom0Iommu: { passthrough: true } }],
    ["IOMMU off", { iommu: false }],
  ] as const) {
    it(`reports no map capability with ${name}, and map_page is -EPERM per op`, () => {
      const { xen, dom0 } = setup({ xen: opts });
      const ops = new PvIommuOps(2);
      ops.queryCaps(0);
      ops.mapPage(1, 0x9000, dom0.pvP2m!.mfn(0x300), RW | IOMMU_MAP_OP_no_ref_cnt);
      expect(xen.xenserver!.iommuOp(dom0, ops, 2)).to.equal(0);
      expect([ops.flags[0], ops.status[0], ops.status[1]]).to.deep.equal([0, 0, -1]);
    });
  }

  it("reports no map capability to an auto-translated (PVH) hardware domain", () => {
    const { xen, dom0 } = setup({ dom0: { kind: "pvh", memoryBytes: 32n * MiB } });
    const ops = new PvIommuOps(1);
    ops.queryCaps(0);
    expect(xen.xenserver!.iommuOp(dom0, ops, 1)).to.equal(0);
    expect(ops.flags[0]).to.equal(0);
  });

  it("runs every op of a batch with its own status, going on after failures, and flushes once at the end", () => {
    const { xen, dom0, guest } = setup();
    const g = guest.p2m!.mfn(0x10);
    const own = dom0.pvP2m!.mfn(0x300);
    const ops = new PvIommuOps(8);
    ops.mapPage(0, OFFSET + g, g, RW | IOMMU_MAP_OP_no_ref_cnt);
    ops.mapPage(1, OFFSET + g, g, RW | IOMMU_MAP_OP_no_ref_cnt);
    ops.mapPage(2, OFFSET + 1, 1, RW | (1 << IOMMU_PAGE_ORDER_SHIFT));
    ops.unmapPage(3, OFFSET + 2, IOMMU_MAP_OP_no_ref_cnt);
    ops.mapPage(4, OFFSET + own + 1, g, RW);
    ops.mapPage(5, 0x4000_0000, own, RW);
    ops.raw(6, IOMMUOP_map_foreign_page);
    ops.raw(7, 42);
    const flushes = xen.dom0Flushes;
    expect(xen.xenserver!.iommuOp(dom0, ops, 8)).to.equal(0);
    expect([...ops.status]).to.deep.equal([0, -1, -28, -2, -1, 0, -19, -19]);
    expect(xen.dom0Flushes).to.equal(flushes + 1);
    expect(xen.iommu.deviceTranslate(GPU, BigInt(OFFSET + g) << 12n, true)).to.equal(g);
    expect(env.host.phys.pins[own]).to.equal(1);
    expect(env.host.phys.pins[g]).to.equal(0);
    const undo = new PvIommuOps(2);
    undo.unmapPage(0, OFFSET + g, IOMMU_MAP_OP_no_ref_cnt);
    undo.unmapPage(1, 0x4000_0000, 0);
    expect(xen.xenserver!.iommuOp(dom0, undo, 2)).to.equal(0);
    expect([...undo.status]).to.deep.equal([0, 0]);
    expect(env.host.phys.pins[own]).to.equal(0);
    expect(xen.dom0Flushes).to.equal(flushes + 2);
  });

  it("flushes per op when count is 1, and not at all for a failed single op", () => {
    const { xen, dom0 } = setup();
    const ops = new PvIommuOps(1);
    const flushes = xen.dom0Flushes;
    ops.mapPage(0, OFFSET + 5, 5 + 512, RW | IOMMU_MAP_OP_no_ref_cnt);
    xen.xenserver!.iommuOp(dom0, ops, 1);
    expect(ops.status[0]).to.equal(0);
    expect(xen.dom0Flushes).to.equal(flushes + 1);
    xen.xenserver!.iommuOp(dom0, ops, 1);
    expect(ops.status[0]).to.equal(-1);
    expect(xen.dom0Flushes).to.equal(flushes + 1);
    ops.unmapPage(0, OFFSET + 5, IOMMU_MAP_OP_no_ref_cnt);
    xen.xenserver!.iommuOp(dom0, ops, 1);
    xen.xenserver!.iommuOp(dom0, ops, 1);
    expect(ops.status[0]).to.equal(-2);
    expect(xen.dom0Flushes).to.equal(flushes + 2);
  });

  it("reports an IOMMU failure as -EIO for that op only", () => {
    const { xen, dom0, host } = setup();
    const ops = new PvIommuOps(3);
    for (let i = 0; i < 3; i++) ops.mapPage(i, OFFSET + 600 + i, 600 + i, RW | IOMMU_MAP_OP_no_ref_cnt);
    host.faults.failNth(2, ["iommu_map"]);
    expect(xen.xenserver!.iommuOp(dom0, ops, 3)).to.equal(0);
    expect([...ops.status]).to.deep.equal([0, -5, 0]);
    ops.unmapPage(0, OFFSET + 600, IOMMU_MAP_OP_no_ref_cnt);
    ops.unmapPage(1, OFFSET + 602, IOMMU_MAP_OP_no_ref_cnt);
    expect(xen.xenserver!.iommuOp(dom0, ops, 2)).to.equal(0);
    expect([ops.status[0], ops.status[1]]).to.deep.equal([0, 0]);
  });

  it("answers -EFAULT when count runs past the caller's buffer, after doing (and flushing) the ops it could read", () => {
    const { xen, dom0 } = setup();
    const ops = new PvIommuOps(2);
    ops.mapPage(0, OFFSET + 700, 700, RW | IOMMU_MAP_OP_no_ref_cnt);
    ops.mapPage(1, OFFSET + 701, 701, RW | IOMMU_MAP_OP_no_ref_cnt);
    const flushes = xen.dom0Flushes;
    expect(xen.xenserver!.iommuOp(dom0, ops, 3)).to.equal(-14);
    expect([...ops.status]).to.deep.equal([0, 0]);
    expect(xen.dom0Flushes).to.equal(flushes + 1);
    ops.unmapPage(0, OFFSET + 700, 0);
    ops.unmapPage(1, OFFSET + 701, 0);
    expect(xen.xenserver!.iommuOp(dom0, ops, 2)).to.equal(0);
  });

  it("preempts every K ops: flushes what it did and continues by itself with the rest", () => {
    const { xen, dom0 } = setup({ xen: { preemptEvery: 50 } });
    const ops = new PvIommuOps(128);
    for (let i = 0; i < 128; i++) ops.mapPage(i, OFFSET + 1000 + i, 1000 + i, RW | IOMMU_MAP_OP_no_ref_cnt);
    const flushes = xen.dom0Flushes;
    const calls = xen.hypercalls("iommu_op");
    expect(xen.xenserver!.iommuOp(dom0, ops, 128)).to.equal(0);
    expect(ops.status.every((s) => s === 0)).to.equal(true);
    expect(xen.continuations).to.equal(2);
    expect(xen.hypercalls("iommu_op")).to.equal(calls + 3);
    expect(xen.dom0Flushes).to.equal(flushes + 3);
    for (let i = 0; i < 128; i++) ops.unmapPage(i, OFFSET + 1000 + i, IOMMU_MAP_OP_no_ref_cnt);
    expect(xen.xenserver!.iommuOp(dom0, ops, 128)).to.equal(0);
    expect(xen.continuations).to.equal(4);
  });

  it("looks up foreign frames: HVM targets only, never self, unknown domain -ENXIO, and only frames Dom0 has mapped", () => {
    const { xen, dom0, guest, host } = setup();
    const pvGuest = xen.createGuest({ name: "pv1", kind: "pv", memoryBytes: 4n * MiB });
    const mfn = guest.p2m!.mfn(0x44);
    expect(guest.pageOut(0x45)).to.equal(0);
    const ops = new PvIommuOps(7);
    ops.lookupForeignPage(0, 0, 0x44);
    ops.lookupForeignPage(1, DOMID_SELF, 0x44);
    ops.lookupForeignPage(2, 999, 0x44);
    ops.lookupForeignPage(3, pvGuest.domid, 0);
    ops.lookupForeignPage(4, guest.domid, 0x44);
    ops.lookupForeignPage(5, guest.domid, 0x45);
    ops.lookupForeignPage(6, guest.domid, 1 << 22);
    expect(xen.xenserver!.iommuOp(dom0, ops, 7)).to.equal(0);
    expect([...ops.status]).to.deep.equal([-1, -1, -6, -1, -1, -6, -6]);
    expect(guest.pendingPopulates).to.deep.equal([0x45]);
    expect(host.phys.totalPins).to.equal(0);
    const held = guest.getPageFromGfn(0x44);
    ops.lookupForeignPage(0, guest.domid, 0x44);
    ops.lookupForeignPage(1, guest.domid, 0x44);
    expect(xen.xenserver!.iommuOp(dom0, ops, 2)).to.equal(0);
    expect([ops.status[0], ops.status[1], ops.bfn[0], ops.bfn[1]]).to.deep.equal([0, 0, mfn + OFFSET, mfn + OFFSET]);
    expect(host.phys.pins[mfn]).to.equal(2);
    ops.unmapForeignPage(0, mfn + OFFSET);
    expect(xen.xenserver!.iommuOp(dom0, ops, 1)).to.equal(0);
    expect(ops.status[0]).to.equal(-2);
    const region = new PvIommuOps(1);
    region.mapPage(0, OFFSET + mfn, mfn, RW | IOMMU_MAP_OP_no_ref_cnt);
    xen.xenserver!.iommuOp(dom0, region, 1);
    xen.xenserver!.iommuOp(dom0, ops, 1);
    expect(ops.status[0]).to.equal(0);
    expect(host.phys.pins[mfn]).to.equal(1);
    xen.xenserver!.iommuOp(dom0, ops, 1);
    expect(ops.status[0]).to.equal(-2);
    guest.putPage(held);
    region.unmapPage(0, OFFSET + mfn, IOMMU_MAP_OP_no_ref_cnt);
    xen.xenserver!.iommuOp(dom0, region, 1);
  });
});
