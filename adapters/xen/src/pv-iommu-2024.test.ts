import { expect } from "chai";
import {
  IOMMU_CREATE_clone,
  IOMMU_OP_readable,
  IOMMU_OP_writeable,
  IOMMUOP_alloc_context,
  IOMMUOP_free_context,
  IOMMUOP_lookup_page,
  IOMMUOP_map_pages,
  IOMMUOP_query_capabilities,
  IOMMUOP_reattach_device,
  IOMMUOP_unmap_pages,
  PVIOMMU_MAX_IOVA_ADDR,
  type PvIommuOp2024,
} from "./pv-iommu-2024.js";
import type { XenDomain } from "./xen-domain.js";
import { GPU, GPU2, MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

const RW = IOMMU_OP_readable | IOMMU_OP_writeable;
const mapOp = (ctx: number, gfn: number, dfn: number, nr: number, flags = RW): PvIommuOp2024 => ({ subop_id: IOMMUOP_map_pages, ctx_no: ctx, flags, map_pages: { gfn, dfn, nr_pages: nr, mapped: -1 } });
const unmapOp = (ctx: number, dfn: number, nr: number): PvIommuOp2024 => ({ subop_id: IOMMUOP_unmap_pages, ctx_no: ctx, flags: 0, unmap_pages: { dfn, nr_pages: nr, unmapped: -1 } });

describe("PV-IOMMU 2024: contexts and page ranges", () => {
  let env: XenEnv;
  let dom0: XenDomain;
  afterEach(() => {
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  const setup = (opts: Parameters<typeof xenEnv>[0] = {}): { op: (o: PvIommuOp2024, caller?: XenDomain) => number; ctx: number } => {
    env = xenEnv({ ...opts, dom0: { kind: "pvh", memoryBytes: 32n * MiB, ...opts.dom0 }, xen: { pvIommu: "2024", ...opts.xen } });
    dom0 = env.dom0;
    env.xen.assignDevice(GPU, 0);
    const op = (o: PvIommuOp2024, caller: XenDomain = dom0): number => env.xen.pvIommu2024!.iommuOp(caller, o);
    const alloc: PvIommuOp2024 = { subop_id: IOMMUOP_alloc_context, ctx_no: 0, flags: 0 };
    expect(op(alloc)).to.equal(0);
    return { op, ctx: alloc.ctx_no };
  };

  it("refuses a non-hardware domain with -EPERM and an unknown sub-op with -EINVAL; reports the capabilities", () => {
    const { op } = setup();
    const q: PvIommuOp2024 = { subop_id: IOMMUOP_query_capabilities, ctx_no: 0, flags: 0 };
    expect(op(q, env.guest)).to.equal(-1);
    expect(q.cap).to.equal(undefined);
    expect(op(q)).to.equal(0);
    expect(q.cap).to.deep.equal({ max_ctx_no: 16, max_nr_pages: 256, max_iova_addr: PVIOMMU_MAX_IOVA_ADDR });
    expect(PVIOMMU_MAX_IOVA_ADDR).to.equal((1n << 39n) - 1n);
    expect(op({ subop_id: 99, ctx_no: 0, flags: 0 })).to.equal(-22);
    expect(op({ subop_id: 0, ctx_no: 0, flags: 0 })).to.equal(0);
  });

  it("allocates contexts up to the limit, never frees context 0 or an unknown one, and reattaches only the caller's devices", () => {
    const { op, ctx } = setup({ xen: { iommuContexts: 2 } });
    expect(ctx).to.equal(1);
    const second: PvIommuOp2024 = { subop_id: IOMMUOP_alloc_context, ctx_no: 0, flags: 0 };
    expect(op(second)).to.equal(0);
    expect(second.ctx_no).to.equal(2);
    expect(op({ subop_id: IOMMUOP_alloc_context, ctx_no: 0, flags: 0 })).to.equal(-28);
    expect(op({ subop_id: IOMMUOP_free_context, ctx_no: 0, flags: 0 })).to.equal(-22);
    expect(op({ subop_id: IOMMUOP_free_context, ctx_no: 9, flags: 0 })).to.equal(-22);
    expect(op({ subop_id: IOMMUOP_reattach_device, ctx_no: ctx, flags: 0, reattach_device: { dev: GPU2 } })).to.equal(-2);
    expect(op({ subop_id: IOMMUOP_reattach_device, ctx_no: 7, flags: 0, reattach_device: { dev: GPU } })).to.equal(-22);
    expect(op({ subop_id: IOMMUOP_reattach_device, ctx_no: ctx, flags: 0, reattach_device: { dev: GPU } })).to.equal(0);
    expect(env.xen.iommu.device(GPU)!.ctxNo).to.equal(ctx);
    expect(op({ subop_id: IOMMUOP_free_context, ctx_no: ctx, flags: 0 })).to.equal(0);
    expect(env.xen.iommu.device(GPU)!.ctxNo).to.equal(0);
    expect(op({ subop_id: IOMMUOP_free_context, ctx_no: ctx, flags: 0 })).to.equal(-22);
  });

  it("maps page ranges of the caller's GFNs, a reference per page, and flushes once per call", () => {
    const { op, ctx } = setup();
    op({ subop_id: IOMMUOP_reattach_device, ctx_no: ctx, flags: 0, reattach_device: { dev: GPU } });
    const flushes = env.xen.dom0Flushes;
    const m = mapOp(ctx, 0x100, 0x5000, 256);
    expect(op(m)).to.equal(0);
    expect(m.map_pages!.mapped).to.equal(256);
    expect(env.xen.dom0Flushes).to.equal(flushes + 1);
    expect(env.host.phys.totalPins).to.equal(256);
    expect(env.xen.iommu.deviceTranslate(GPU, 0x5003000n, true)).to.equal(dom0.p2m!.mfn(0x103));
    const look: PvIommuOp2024 = { subop_id: IOMMUOP_lookup_page, ctx_no: ctx, flags: 0, lookup_page: { dfn: 0x5003, gfn: 0 } };
    expect(op(look)).to.equal(0);
    expect(look.lookup_page!.gfn).to.equal(0x103);
    expect(op({ subop_id: IOMMUOP_lookup_page, ctx_no: ctx, flags: 0, lookup_page: { dfn: 0x9999, gfn: 0 } })).to.equal(-2);
    expect(op({ subop_id: IOMMUOP_lookup_page, ctx_no: 8, flags: 0, lookup_page: { dfn: 0x5003, gfn: 0 } })).to.equal(-22);
    const u = unmapOp(ctx, 0x5000, 256);
    expect(op(u)).to.equal(0);
    expect(u.unmap_pages!.unmapped).to.equal(256);
    expect(env.xen.dom0Flushes).to.equal(flushes + 2);
    expect(env.host.phys.totalPins).to.equal(0);
    expect(env.xen.iommu.deviceTranslate(GPU, 0x5003000n, false)).to.equal(-1);
  });

  it("checks the page limit and the context before doing anything: -E2BIG, -EINVAL, and -EPERM into context 0", () => {
    const { op, ctx } = setup();
    const flushes = env.xen.dom0Flushes;
    const big = mapOp(ctx, 0x100, 0x5000, 257);
    expect(op(big)).to.equal(-7);
    expect(big.map_pages!.mapped).to.equal(0);
    const badCtx = mapOp(5, 0x100, 0x5000, 1);
    expect(op(badCtx)).to.equal(-22);
    const zero = mapOp(0, 0x100, 0x5000, 1);
    expect(op(zero)).to.equal(-1);
    expect(op(unmapOp(ctx, 0x5000, 257))).to.equal(-7);
    expect(op(unmapOp(6, 0x5000, 1))).to.equal(-22);
    expect(env.xen.dom0Flushes).to.equal(flushes);
    expect(env.host.phys.totalPins).to.equal(0);
  });

  it("stops at the first failing page, reports `mapped`, keeps what it mapped, and still flushes: -EADDRINUSE, -EIO (paged), -EINVAL (shared), -EPERM (hole)", () => {
    const { op, ctx } = setup();
    expect(op(mapOp(ctx, 0x200, 0x6008, 1))).to.equal(0);
    const flushes = env.xen.dom0Flushes;
    const inUse = mapOp(ctx, 0x100, 0x6000, 16);
    expect(op(inUse)).to.equal(-98);
    expect(inUse.map_pages!.mapped).to.equal(8);
    expect(env.xen.dom0Flushes).to.equal(flushes + 1);
    expect(env.host.phys.totalPins).to.equal(9);
    expect(dom0.pageOut(0x302)).to.equal(0);
    const paged = mapOp(ctx, 0x300, 0x7000, 4);
    expect(op(paged)).to.equal(-5);
    expect(paged.map_pages!.mapped).to.equal(2);
    expect(dom0.pendingPopulates).to.deep.equal([0x302]);
    expect(dom0.share(0x401)).to.equal(0);
    const shared = mapOp(ctx, 0x400, 0x8000, 4);
    expect(op(shared)).to.equal(-22);
    expect(shared.map_pages!.mapped).to.equal(1);
    const hole = mapOp(ctx, 0x1fff, 0x9000, 2);
    expect(op(hole)).to.equal(-1);
    expect(hole.map_pages!.mapped).to.equal(1);
    expect(env.xen.dom0Flushes).to.equal(flushes + 4);
    expect(env.host.phys.totalPins).to.equal(9 + 2 + 1 + 1);
    const partial = unmapOp(ctx, 0x6000, 16);
    expect(op(partial)).to.equal(-2);
    expect(partial.unmap_pages!.unmapped).to.equal(9);
    for (const [dfn, n] of [[0x7000, 2], [0x8000, 1], [0x9000, 1]] as const) expect(op(unmapOp(ctx, dfn, n))).to.equal(0);
    expect(env.host.phys.totalPins).to.equal(0);
    dom0.pageIn(0x302);
  });

  it("enforces a configured page limit lower than the 256 the capability query reports", () => {
    const { op, ctx } = setup({ xen: { pvIommuMaxPages: 64 } });
    const q: PvIommuOp2024 = { subop_id: IOMMUOP_query_capabilities, ctx_no: 0, flags: 0 };
    op(q);
    expect(q.cap!.max_nr_pages).to.equal(256);
    expect(op(mapOp(ctx, 0x100, 0x5000, 65))).to.equal(-7);
    expect(op(mapOp(ctx, 0x100, 0x5000, 64))).to.equal(0);
    expect(op(unmapOp(ctx, 0x5000, 64))).to.equal(0);
  });

  it("drops the references a context holds when it is freed, and a clone starts with the default context's 1:1 view", () => {
    const { op, ctx } = setup();
    expect(op(mapOp(ctx, 0x100, 0x5000, 8))).to.equal(0);
    expect(env.host.phys.totalPins).to.equal(8);
    expect(op({ subop_id: IOMMUOP_free_context, ctx_no: ctx, flags: 0 })).to.equal(0);
    expect(env.host.phys.totalPins).to.equal(0);
    const clone: PvIommuOp2024 = { subop_id: IOMMUOP_alloc_context, ctx_no: 0, flags: IOMMU_CREATE_clone };
    expect(op(clone)).to.equal(0);
    const c = env.xen.iommu.context(0, clone.ctx_no)!;
    expect(c.lookup(0x123)).to.equal(dom0.p2m!.mfn(0x123));
    const clash = mapOp(clone.ctx_no, 0x100, 0x123, 1);
    expect(op(clash)).to.equal(-98);
    expect(env.host.phys.totalPins).to.equal(0);
  });
});
