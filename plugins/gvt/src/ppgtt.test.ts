import { expect } from "chai";
import { VFIO_PCI_CONFIG_REGION_INDEX } from "@vgpu-iommu/core";
import { closeAndCheck, makeRig, type Rig } from "./gvt.test.helpers.js";
import { REG } from "./gvt-params.js";
import { pte } from "./testing/guest-driver.js";
import { Se } from "./ppgtt.js";

const gma = (pml4: number, pdp: number, pd: number, pt: number): number => pml4 * 2 ** 39 + pdp * 2 ** 30 + pd * 2 ** 21 + pt * 4096;

/** A PML4 with one PDP, one PD and two PTs: 10 + 5 present 4K leaves on frames 0x100.. and 0x200.. */
function buildBasic(rig: Rig): { root: number; pt1: number; pt2: number } {
  const root = rig.drv.newTable();
  let pt1 = 0;
  let pt2 = 0;
  for (let i = 0; i < 10; i++) pt1 = rig.drv.map(root, gma(0, 0, 0, i), 0x100 + i).table;
  for (let i = 0; i < 5; i++) pt2 = rig.drv.map(root, gma(0, 0, 1, i * 3), 0x200 + i).table;
  return { root, pt1, pt2 };
}

describe("gvt: lazy PPGTT shadowing", () => {
  it("a submission shadows the 4-level table: pins = present leaves, protected pages = table pages, no pins for tables", async () => {
    const rig = await makeRig();
    const { root } = buildBasic(rig);
    expect(rig.svc.protectedFrames.size).to.equal(0, "nothing is shadowed before a workload");
    const r = rig.vgpu.submitWorkload(root);
    expect(r).to.deep.equal({ status: 0, submitted: true, copied: 0 });
    expect(rig.svc.pinnedFrames).to.equal(15);
    expect(rig.svc.counters.translations).to.equal(15);
    expect(rig.svc.protectedFrames.size).to.equal(5);
    expect(rig.vgpu.ppgtt.sptCount).to.equal(5);
    expect(rig.vgpu.ppgtt.leafEntries()).to.equal(15);
    expect(rig.vgpu.ppgtt.counters.leafMaps).to.equal(15);
    // The table walk read five pages with dmaRw and pinned none of them.
    expect(rig.svc.refs[root]).to.equal(0);
    expect(rig.svc.counters.dmaRwBytes).to.equal(5 * 4096);
    expect(rig.svc.counters.irqs).to.equal(1);
    expect(rig.vgpu.checkIsolation()).to.deep.equal([]);
    // A second workload on the same root reuses the shadow.
    rig.vgpu.submitWorkload(root);
    expect(rig.svc.counters.translations).to.equal(15);
    expect(rig.vgpu.ppgtt.mms).to.have.length(1);
    await closeAndCheck(rig);
    expect(rig.svc.counters.releases).to.equal(15);
  });

  it("64K entries (PDE with IPS) are always split into 16 4K mappings", async () => {
    const rig = await makeRig();
    const root = rig.drv.newTable();
    rig.drv.map(root, gma(0, 0, 0, 0), 0x300, "64K");
    rig.drv.map(root, gma(0, 0, 0, 16), 0x310, "64K");
    expect(rig.vgpu.submitWorkload(root).status).to.equal(0);
    expect(rig.vgpu.ppgtt.counters.splits64K).to.equal(2);
    expect(rig.svc.counters.translations).to.equal(32);
    expect(rig.svc.pinnedFrames).to.equal(32);
    expect(rig.svc.protectedFrames.size).to.equal(4);
    // The shadow PT holds 32 split 4K entries.
    const pt = [...Array(4).keys()].map((i) => rig.vgpu.ppgtt.sptOfId(i + 1)!).find((s) => s.level === 1)!;
    expect(pt.ips).to.equal(true);
    expect([...pt.split64].filter((f) => f === 1)).to.have.length(32);
    await closeAndCheck(rig);
  });

  it("2M on contiguous host memory: one 2 MiB mapping of 512 pinned frames", async () => {
    const rig = await makeRig({ services: { backing: "contiguous" } });
    const root = rig.drv.newTable();
    rig.drv.map(root, gma(0, 0, 3, 0), 0x400, "2M");
    expect(rig.vgpu.submitWorkload(root).status).to.equal(0);
    expect(rig.vgpu.ppgtt.counters.hugeMaps).to.equal(1);
    expect(rig.vgpu.ppgtt.counters.splits2M).to.equal(0);
    expect(rig.svc.counters.translations).to.equal(1);
    expect(rig.svc.counters.pinCalls).to.equal(512);
    expect(rig.svc.pinnedFrames).to.equal(512);
    expect(rig.svc.pinRefs).to.equal(512);
    expect(rig.svc.liveMappedPages()).to.equal(512);
    expect(rig.svc.protectedFrames.size).to.equal(3, "PML4, PDP, PD");
    expect(rig.vgpu.cache.lookupGfn(0x400)?.size).to.equal(0x200000);
    expect(rig.vgpu.checkIsolation()).to.deep.equal([]);
    await closeAndCheck(rig);
  });

  it("2M on scattered host memory: the contiguity check fails and the entry is split into 512 4K mappings", async () => {
    const rig = await makeRig({ services: { backing: "scattered", seed: 3 } });
    const root = rig.drv.newTable();
    rig.drv.map(root, gma(0, 0, 3, 0), 0x400, "2M");
    expect(rig.vgpu.submitWorkload(root).status).to.equal(0);
    expect(rig.vgpu.ppgtt.counters.hugeMaps).to.equal(0);
    expect(rig.vgpu.ppgtt.counters.splits2M).to.equal(1);
    expect(rig.vgpu.cache.counters.notContiguous).to.equal(1);
    expect(rig.svc.counters.translations).to.equal(512);
    expect(rig.svc.pinnedFrames).to.equal(512);
    expect(rig.svc.pinRefs).to.equal(512);
    expect(rig.vgpu.ppgtt.sptCount).to.equal(4, "three guest tables and the vendor-only sub-table");
    expect(rig.svc.protectedFrames.size).to.equal(3);
    await closeAndCheck(rig);
  });

  it("2M on a GPU without 2M GTT pages is always split", async () => {
    const rig = await makeRig({ vendor: { huge2M: false } });
    const root = rig.drv.newTable();
    rig.drv.map(root, gma(0, 0, 3, 0), 0x400, "2M");
    expect(rig.vgpu.submitWorkload(root).status).to.equal(0);
    expect(rig.vgpu.ppgtt.counters.splits2M).to.equal(1);
    expect(rig.svc.counters.pinCalls).to.equal(0);
    expect(rig.svc.counters.translations).to.equal(512);
    await closeAndCheck(rig);
  });

  it("a split 2M entry whose sub-page fails releases what it mapped; the workload fails with that errno", async () => {
    const rig = await makeRig({ services: { backing: "scattered" } });
    const root = rig.drv.newTable();
    rig.drv.map(root, gma(0, 0, 3, 0), 0x400, "2M");
    rig.svc.failPin = (g) => (g === 0x400 + 300 ? "ENOMEM" : undefined);
    const r = rig.vgpu.submitWorkload(root);
    expect(r.status).to.equal(-12);
    expect(rig.svc.pinnedFrames).to.equal(0);
    expect(rig.svc.protectedFrames.size).to.equal(0);
    expect(rig.vgpu.ppgtt.sptCount).to.equal(0);
    expect(rig.vgpu.ppgtt.mms).to.have.length(0, "the mm made for this workload is freed");
    expect(rig.vgpu.failsafe).to.equal(false);
    await closeAndCheck(rig);
  });

  it("1G entries are refused with -EINVAL and leave nothing behind", async () => {
    const rig = await makeRig();
    const root = rig.drv.newTable();
    rig.drv.map(root, gma(0, 0, 0, 0), 0x100);
    rig.drv.map(root, gma(0, 1, 0, 0), 0x40000, "1G");
    const r = rig.vgpu.submitWorkload(root);
    expect(r.status).to.equal(-22);
    expect(rig.vgpu.ppgtt.counters.refused1G).to.equal(1);
    expect(rig.svc.pinnedFrames).to.equal(0);
    expect(rig.svc.protectedFrames.size).to.equal(0);
    expect(rig.vgpu.counters.workloadsFailed).to.equal(1);
    await closeAndCheck(rig);
  });

  it("hostile guest: a leaf outside guest RAM fails the root with -ENXIO; nothing stays pinned or protected", async () => {
    const rig = await makeRig({ services: { guestPages: 0x8000 } });
    const { root } = buildBasic(rig);
    rig.drv.map(root, gma(0, 0, 1, 100), 0x9000);
    const r = rig.vgpu.submitWorkload(root);
    expect(r.status).to.equal(-6);
    expect(rig.svc.pinnedFrames).to.equal(0);
    expect(rig.svc.protectedFrames.size).to.equal(0);
    expect(rig.vgpu.failsafe).to.equal(false, "-ENXIO is not an unhealthy status");
    await closeAndCheck(rig);
  });

  it("hostile guest: a table that points at itself (and a PD that points back at the PML4) ends", async () => {
    const rig = await makeRig();
    const { root } = buildBasic(rig);
    const [lo, hi] = pte(root);
    rig.drv.writeEntry(root, 5, lo, hi); // PML4[5] -> PML4
    const pd = rig.vgpu.ppgtt; // (for readability below)
    const pdpGfn = rig.drv.readEntry(root, 0)[0] >>> 12;
    const pdGfn = rig.drv.readEntry(pdpGfn, 0)[0] >>> 12;
    rig.drv.writeEntry(pdGfn, 7, lo, hi); // PD[7] -> PML4
    expect(rig.vgpu.submitWorkload(root).status).to.equal(0);
    expect(pd.sptCount).to.equal(5);
    expect(pd.sptOfGfn(root)!.refcount).to.equal(3, "the mm root, PML4[5] and PD[7]");
    expect(rig.svc.pinnedFrames).to.equal(15);
    // The loop keeps the tables alive past an engine reset, as in the kernel...
    await rig.vgpu.reset("engine");
    expect(pd.sptCount).to.equal(5);
    // ...and an FLR frees them with the kernel's WARN.
    await rig.vgpu.reset("flr");
    expect(pd.sptCount).to.equal(0);
    expect(pd.counters.orphans).to.equal(5);
    expect(rig.vgpu.warnings).to.equal(1);
    expect(rig.svc.pinnedFrames).to.equal(0);
    expect(rig.svc.protectedFrames.size).to.equal(0);
    rig.vgpu.warnings = 0;
    await closeAndCheck(rig);
  });

  it("two roots sharing a page table: one Spt with two references, each leaf pinned once", async () => {
    const rig = await makeRig();
    const { root, pt1 } = buildBasic(rig);
    const root2 = rig.drv.newTable();
    const pdp2 = rig.drv.newTable();
    const pd2 = rig.drv.newTable();
    rig.drv.writeEntry(root2, 0, ...pte(pdp2));
    rig.drv.writeEntry(pdp2, 0, ...pte(pd2));
    rig.drv.writeEntry(pd2, 0, ...pte(pt1));
    rig.vgpu.submitWorkload(root);
    rig.vgpu.submitWorkload(root2);
    expect(rig.vgpu.ppgtt.mms).to.have.length(2);
    expect(rig.vgpu.ppgtt.sptOfGfn(pt1)!.refcount).to.equal(2);
    expect(rig.svc.pinnedFrames).to.equal(15);
    expect(rig.vgpu.cache.lookupGfn(0x100)?.kref).to.equal(1);
    expect(rig.svc.protectedFrames.size).to.equal(8);
    await closeAndCheck(rig);
  });
});

describe("gvt: guest writes to shadowed page tables", () => {
  it("8-byte rewrite maps the new frame, then releases the old", async () => {
    const rig = await makeRig();
    const { root, pt1 } = buildBasic(rig);
    rig.vgpu.submitWorkload(root);
    const before = { t: rig.svc.counters.translations, r: rig.svc.counters.releases };
    rig.drv.writeEntry(pt1, 0, ...pte(0x500));
    expect(rig.svc.counters.translations - before.t).to.equal(1);
    expect(rig.svc.counters.releases - before.r).to.equal(1);
    expect(rig.svc.refs[0x100]).to.equal(0);
    expect(rig.svc.refs[0x500]).to.equal(1);
    expect(rig.vgpu.ppgtt.sptOfGfn(pt1)!.kind[0]).to.equal(Se.Leaf4K);
    expect(rig.vgpu.ppgtt.counters.guestWrites).to.equal(1);
    await closeAndCheck(rig);
  });

  it("the same frame in two PTEs: one pin, kref 2", async () => {
    const rig = await makeRig();
    const { root, pt1 } = buildBasic(rig);
    rig.vgpu.submitWorkload(root);
    rig.drv.writeEntry(pt1, 50, ...pte(0x101));
    expect(rig.svc.refs[0x101]).to.equal(1);
    expect(rig.vgpu.cache.lookupGfn(0x101)?.kref).to.equal(2);
    expect(rig.svc.pinnedFrames).to.equal(15);
    await closeAndCheck(rig);
  });

  it("split 4-byte writes: release, scratch and a post-shadow bit, resolved at the next submission", async () => {
    const rig = await makeRig();
    const { root, pt1 } = buildBasic(rig);
    rig.vgpu.submitWorkload(root);
    rig.drv.writeEntry(pt1, 2, ...pte(0x600), true);
    const spt = rig.vgpu.ppgtt.sptOfGfn(pt1)!;
    expect(spt.kind[2]).to.equal(Se.Scratch);
    expect(rig.vgpu.ppgtt.pendingPostShadow()).to.equal(1);
    expect(rig.svc.pinnedFrames).to.equal(14, "the old frame went at the first half");
    expect(rig.vgpu.ppgtt.counters.postShadowed).to.equal(2);
    rig.vgpu.submitWorkload(root);
    expect(rig.vgpu.ppgtt.pendingPostShadow()).to.equal(0);
    expect(spt.kind[2]).to.equal(Se.Leaf4K);
    expect(rig.svc.refs[0x600]).to.equal(1);
    expect(rig.svc.pinnedFrames).to.equal(15);
    await closeAndCheck(rig);
  });

  it("clearing the present bit unpins and points the slot at scratch; other sizes are -EINVAL", async () => {
    const rig = await makeRig();
    const { root, pt1 } = buildBasic(rig);
    rig.vgpu.submitWorkload(root);
    rig.drv.writeEntry(pt1, 3, 0, 0);
    expect(rig.svc.refs[0x103]).to.equal(0);
    expect(rig.vgpu.ppgtt.sptOfGfn(pt1)!.kind[3]).to.equal(Se.Scratch);
    const errs: number[] = [];
    rig.vgpu.on("guestWriteFailed", (e) => errs.push(e.errno));
    expect(rig.vgpu.handleGuestWrite(BigInt(pt1) * 4096n + 32n, new Uint8Array(2))).to.equal(-22);
    rig.svc.guest.guestWrite(BigInt(pt1) * 4096n + 40n, new Uint8Array(1));
    expect(errs).to.deep.equal([-22, -22]);
    expect(rig.svc.pinnedFrames).to.equal(14);
    await closeAndCheck(rig);
  });

  it("a new directory entry shadows the new table at once; removing it releases the subtree", async () => {
    const rig = await makeRig();
    const { root } = buildBasic(rig);
    rig.vgpu.submitWorkload(root);
    const pdGfn = rig.drv.readEntry(rig.drv.readEntry(root, 0)[0] >>> 12, 0)[0] >>> 12;
    const pt3 = rig.drv.newTable();
    for (let i = 0; i < 4; i++) rig.drv.writeEntry(pt3, i, ...pte(0x700 + i));
    rig.drv.writeEntry(pdGfn, 9, ...pte(pt3));
    expect(rig.svc.pinnedFrames).to.equal(19);
    expect(rig.svc.protectedFrames.size).to.equal(6);
    rig.drv.writeEntry(pdGfn, 9, 0, 0);
    expect(rig.svc.pinnedFrames).to.equal(15);
    expect(rig.svc.protectedFrames.size).to.equal(5);
    await closeAndCheck(rig);
  });

  it("writes to the unused slots of a 64K table are ignored; rewriting a 64K entry swaps all 16 pieces", async () => {
    const rig = await makeRig();
    const root = rig.drv.newTable();
    const { table } = rig.drv.map(root, gma(0, 0, 0, 0), 0x300, "64K");
    rig.vgpu.submitWorkload(root);
    expect(rig.svc.pinnedFrames).to.equal(16);
    rig.drv.writeEntry(table, 5, ...pte(0x999));
    expect(rig.svc.pinnedFrames).to.equal(16);
    expect(rig.vgpu.ppgtt.counters.guestWrites).to.equal(0);
    rig.drv.writeEntry(table, 0, ...pte(0x320));
    expect(rig.svc.pinnedFrames).to.equal(16);
    expect(rig.svc.refs[0x300]).to.equal(0);
    expect(rig.svc.refs[0x30f]).to.equal(0);
    expect(rig.svc.refs[0x32f]).to.equal(1);
    rig.drv.writeEntry(table, 0, 0, 0);
    expect(rig.svc.pinnedFrames).to.equal(0);
    await closeAndCheck(rig);
  });

  it("upstream quirk: rewriting a split 64K entry releases only its first piece", async () => {
    const rig = await makeRig({ vendor: { upstreamQuirks: true } });
    const root = rig.drv.newTable();
    const { table } = rig.drv.map(root, gma(0, 0, 0, 0), 0x300, "64K");
    rig.vgpu.submitWorkload(root);
    rig.drv.writeEntry(table, 0, ...pte(0x320));
    expect(rig.svc.pinnedFrames).to.equal(31, "15 pieces of the old 64K page leaked in the cache");
    await closeAndCheck(rig);
  });

  it("in failsafe a page-table write only drops the page's write protection", async () => {
    const rig = await makeRig();
    const { root, pt1 } = buildBasic(rig);
    rig.vgpu.submitWorkload(root);
    rig.vgpu.enterFailsafe("test");
    rig.drv.writeEntry(pt1, 0, ...pte(0x500));
    expect(rig.svc.protectedFrames.has(pt1)).to.equal(false);
    expect(rig.svc.protectedFrames.size).to.equal(4);
    expect(rig.svc.refs[0x100]).to.equal(1, "the shadow is not updated");
    expect(rig.svc.refs[0x500]).to.equal(0);
    // Failsafe drops workloads until an FLR clears it.
    expect(rig.vgpu.submitWorkload(root)).to.deep.equal({ status: 0, submitted: false, copied: 0 });
    await rig.vgpu.reset("flr");
    expect(rig.vgpu.failsafe).to.equal(false);
    expect(rig.vgpu.submitWorkload(root).submitted).to.equal(true);
    await closeAndCheck(rig);
  });

  it("a rewrite of a table while it is being shadowed is handled after the shadowing, in order", async () => {
    const rig = await makeRig();
    const { root, pt1, pt2 } = buildBasic(rig);
    let fired = 0;
    rig.svc.onProtect = (gfn) => {
      if (gfn === pt1) {
        // The vCPU rewrites entry 0 and adds entry 20 right after the page is protected, before it is read.
        rig.drv.writeEntry(pt1, 0, ...pte(0x800));
        rig.drv.writeEntry(pt1, 20, ...pte(0x801));
        fired++;
      } else if (gfn === pt2) {
        // And rewrites pt1 again while pt2 is being shadowed.
        rig.drv.writeEntry(pt1, 1, 0, 0);
        fired++;
      }
    };
    expect(rig.vgpu.submitWorkload(root).status).to.equal(0);
    expect(fired).to.equal(2);
    expect(rig.vgpu.counters.deferredWrites).to.equal(3);
    // Final state = the guest's final tables: 0x800, 0x801, 0x102..0x109 in pt1; pt2's five.
    expect(rig.svc.refs[0x100]).to.equal(0);
    expect(rig.svc.refs[0x101]).to.equal(0);
    expect(rig.svc.refs[0x800]).to.equal(1);
    expect(rig.svc.refs[0x801]).to.equal(1);
    expect(rig.svc.pinnedFrames).to.equal(15);
    expect(rig.vgpu.cache.lookupGfn(0x800)?.kref).to.equal(1);
    await closeAndCheck(rig);
  });
});

describe("gvt: resets and PPGTT state", () => {
  it("engine reset (GDRST) drops the shadows and keeps the mms and GGTT pins; the next workload re-shadows", async () => {
    const rig = await makeRig();
    const { root } = buildBasic(rig);
    rig.drv.ggttWrite(rig.vgpu.ggtt.apStart, 0x900);
    rig.vgpu.submitWorkload(root);
    expect(rig.svc.pinnedFrames).to.equal(16);
    rig.drv.mmioWrite(REG.GDRST, 1);
    expect(rig.svc.pinnedFrames).to.equal(1);
    expect(rig.svc.protectedFrames.size).to.equal(0);
    expect(rig.vgpu.ppgtt.mms).to.have.length(1);
    expect(rig.vgpu.ppgtt.mms[0]!.shadowed).to.equal(false);
    rig.vgpu.submitWorkload(root);
    expect(rig.svc.pinnedFrames).to.equal(16);
    await closeAndCheck(rig);
  });

  it("FLR destroys the mms and every GGTT pin; after D3hot (or a d3-resume reset) the mms are kept", async () => {
    const rig = await makeRig();
    const { root } = buildBasic(rig);
    rig.drv.ggttWrite(rig.vgpu.ggtt.apStart, 0x900);
    rig.vgpu.submitWorkload(root);
    await rig.vgpu.reset("d3-resume");
    expect(rig.vgpu.ppgtt.mms).to.have.length(1);
    expect(rig.svc.pinnedFrames).to.equal(0);
    expect(rig.svc.protectedFrames.size).to.equal(0);
    rig.vgpu.submitWorkload(root);
    // The guest writes D3hot to PMCSR: the next FLR keeps the mms too.
    rig.vgpu.write(VFIO_PCI_CONFIG_REGION_INDEX, 0xd4n, new Uint8Array([3, 0]));
    expect(rig.vgpu.d3Entered).to.equal(true);
    await rig.vgpu.reset("flr");
    expect(rig.vgpu.ppgtt.mms).to.have.length(1);
    expect(rig.vgpu.d3Entered).to.equal(false);
    rig.vgpu.submitWorkload(root);
    await rig.vgpu.reset("flr");
    expect(rig.vgpu.ppgtt.mms).to.have.length(0);
    expect(rig.svc.leaks().pinnedFrames).to.equal(0);
    await closeAndCheck(rig);
  });

  it("upstream quirk: a whole 2M shadow entry survives its table's invalidation until close", async () => {
    const rig = await makeRig({ vendor: { upstreamQuirks: true } });
    const root = rig.drv.newTable();
    rig.drv.map(root, gma(0, 0, 3, 0), 0x400, "2M");
    rig.vgpu.submitWorkload(root);
    await rig.vgpu.reset("engine");
    expect(rig.vgpu.ppgtt.sptCount).to.equal(0);
    expect(rig.svc.pinnedFrames).to.equal(512, "the 2M cache entry leaked");
    expect(rig.vgpu.cache.size).to.equal(1);
    await closeAndCheck(rig);
  });

  it("dmaUnmap drops the cache entries of the range whatever their kref; the shadow keeps stale addresses", async () => {
    const rig = await makeRig();
    const { root } = buildBasic(rig);
    rig.vgpu.submitWorkload(root);
    rig.drv.ggttWrite(rig.vgpu.ggtt.apStart, 0x100); // kref 2 on 0x100
    rig.vgpu.dmaUnmap(0x100n * 4096n, 0x200n * 4096n);
    expect(rig.svc.pinnedFrames).to.equal(0);
    expect(rig.vgpu.staleShadowEntries()).to.equal(16);
    expect(rig.vgpu.checkIsolation().map((f) => f.kind)).to.deep.equal(Array(16).fill("unmapped"));
    // The stale entries' later release is a no-op.
    rig.drv.ggttWrite(rig.vgpu.ggtt.apStart, undefined);
    expect(rig.svc.counters.badUnpins).to.equal(0);
    await closeAndCheck(rig);
  });
});
