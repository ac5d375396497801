import { expect } from "chai";
import { thrown } from "@vgpu-iommu/core/testing";

import { apIndex, closeAndCheck, hiIndex, makeRig, type Rig } from "./gvt.test.helpers.js";
import { CURSOR_MODE_64_ARGB, REG } from "./gvt-params.js";

const FB_PAGES = 2025;
const FB_GFN = 0x1000;

async function withFramebuffer(): Promise<Rig & { gma: number }> {
  const rig = await makeRig();
  rig.drv.ggttWriteRange(apIndex(rig), Array.from({ length: FB_PAGES }, (_, i) => FB_GFN + i));
  const gma = apIndex(rig) * 4096;
  rig.drv.setPrimaryPlane(gma, 1920, 1080);
  return { ...rig, gma };
}

describe("gvt: display planes and dma-bufs", () => {
  it("query decodes the primary plane; the dma-buf takes 2,025 more references and no pins", async () => {
    const rig = await withFramebuffer();
    const plane = rig.vgpu.queryPlane("primary");
    expect(plane).to.deep.equal({ dmabufId: 1, width: 1920, height: 1080, stride: 7680, size: 8_294_400, gmaddr: BigInt(rig.gma) });
    expect(rig.vgpu.cache.totalRefs()).to.equal(2025);
    rig.vgpu.getDmabuf(1);
    expect(rig.vgpu.cache.totalRefs()).to.equal(4050);
    expect(rig.vgpu.display.exportedRefs()).to.equal(2025);
    expect(rig.svc.pinnedFrames).to.equal(2025);
    expect(rig.svc.counters.translations).to.equal(2025);
    // Re-query with the same mode: the same dma-buf.
    expect(rig.vgpu.queryPlane("primary")?.dmabufId).to.equal(1);
    // FLR: the GGTT lets go; the displayed buffer keeps its pages.
    await rig.vgpu.reset("flr");
    expect(rig.vgpu.ggtt.mappedEntries()).to.equal(0);
    expect(rig.svc.pinnedFrames).to.equal(2025);
    expect(rig.vgpu.cache.totalRefs()).to.equal(2025);
    rig.vgpu.releaseDmabuf(1);
    expect(rig.svc.pinnedFrames).to.equal(0);
    await closeAndCheck(rig);
  });

  it("a mode change gives a new dma-buf; the old one holds its references until it is released", async () => {
    const rig = await withFramebuffer();
    rig.vgpu.queryPlane("primary");
    rig.vgpu.getDmabuf(1);
    rig.drv.setPrimaryPlane(rig.gma, 1280, 720);
    const p2 = rig.vgpu.queryPlane("primary")!;
    expect(p2.dmabufId).to.equal(2);
    expect(p2.size).to.equal(900 * 4096);
    rig.vgpu.getDmabuf(2);
    expect(rig.vgpu.cache.totalRefs()).to.equal(2025 + 2025 + 900);
    rig.vgpu.releaseDmabuf(1);
    expect(rig.vgpu.cache.totalRefs()).to.equal(2025 + 900);
    rig.vgpu.releaseDmabuf(1); // nothing exported any more: a no-op
    expect(rig.vgpu.cache.totalRefs()).to.equal(2025 + 900);
    await closeAndCheck(rig);
  });

  it("no plane: undefined; unaligned base or outside the partition: -EFAULT; size 0: -EINVAL", async () => {
    const rig = await withFramebuffer();
    rig.drv.mmioWrite(REG.DSPACNTR, 0);
    expect(rig.vgpu.queryPlane("primary")).to.equal(undefined);
    rig.drv.setPrimaryPlane(rig.gma + 64, 1920, 1080);
    expect(thrown(() => rig.vgpu.queryPlane("primary"))).to.include({ code: "EFAULT", reason: "gvt-plane-not-aligned" });
    // The aperture slice is 32768 pages: a surface that runs past its end.
    rig.drv.setPrimaryPlane((apIndex(rig) + 32768 - 100) * 4096, 1920, 1080);
    expect(thrown(() => rig.vgpu.queryPlane("primary"))).to.include({ code: "EFAULT", reason: "gvt-plane-outside-partition" });
    rig.drv.setPrimaryPlane(4096, 1920, 1080);
    expect(thrown(() => rig.vgpu.queryPlane("primary")).code).to.equal("EFAULT");
    rig.drv.setPrimaryPlane(rig.gma, 1920, 1080, 0);
    expect(thrown(() => rig.vgpu.queryPlane("primary"))).to.include({ code: "EINVAL", reason: "gvt-plane-empty" });
    rig.drv.setPrimaryPlane(rig.gma, 1920, 1080, 7680, 0x3);
    expect(thrown(() => rig.vgpu.queryPlane("primary"))).to.include({ code: "EINVAL", reason: "gvt-plane-format" });
    // A surface in the hidden slice whose first page the guest never mapped.
    rig.drv.setPrimaryPlane(hiIndex(rig) * 4096, 64, 64);
    expect(thrown(() => rig.vgpu.queryPlane("primary")).code).to.equal("EINVAL");
    expect(rig.vgpu.cache.totalRefs()).to.equal(2025);
    await closeAndCheck(rig);
  });

  it("an export whose page is not in the cache drops the references it took and fails with -EINVAL", async () => {
    const rig = await withFramebuffer();
    rig.vgpu.queryPlane("primary");
    // The guest clears entry 1000 of the surface: its shadow is scratch.
    rig.drv.ggttWrite(apIndex(rig, 1000), undefined);
    expect(thrown(() => rig.vgpu.getDmabuf(1))).to.include({ code: "EINVAL", reason: "gvt-dmabuf-page-not-cached" });
    expect(rig.vgpu.cache.totalRefs()).to.equal(2024);
    expect(rig.vgpu.display.exportedRefs()).to.equal(0);
    expect(thrown(() => rig.vgpu.getDmabuf(9)).code).to.equal("ENOENT");
    await closeAndCheck(rig);
  });

  it("the cursor plane: 64x64 ARGB from CURBASE", async () => {
    const rig = await withFramebuffer();
    rig.drv.mmioWrite(REG.CURABASE, rig.gma + 8 * 4096);
    rig.drv.mmioWrite(REG.CURACNTR, CURSOR_MODE_64_ARGB);
    const c = rig.vgpu.queryPlane("cursor")!;
    expect(c).to.deep.include({ width: 64, height: 64, stride: 256, size: 16384 });
    rig.vgpu.getDmabuf(c.dmabufId);
    expect(rig.vgpu.cache.lookupGfn(FB_GFN + 8)?.kref).to.equal(2);
    await closeAndCheck(rig);
  });

  it("close releases live exports with everything else", async () => {
    const rig = await withFramebuffer();
    rig.vgpu.queryPlane("primary");
    rig.vgpu.getDmabuf(1);
    rig.vgpu.getDmabuf(1);
    expect(rig.vgpu.cache.totalRefs()).to.equal(3 * 2025);
    await closeAndCheck(rig);
    expect(rig.svc.counters.releases).to.equal(2025);
  });
});
