import { expect } from "chai";
import { KernelError, VFIO_PCI_BAR0_REGION_INDEX } from "@vgpu-iommu/core";
import { apIndex, closeAndCheck, hiIndex, makeRig } from "./gvt.test.helpers.js";
import { GGTT_OFFSET, MMIO_BYTES, REG } from "./gvt-params.js";
import { SCRATCH } from "./ggtt.js";
import { pte } from "./testing/guest-driver.js";

const FB_PAGES = 2025; // 1920 x 1080 x 4 bytes = 8,294,400 bytes
const FB_GFN = 0x1000;

const range = (first: number, n: number): number[] => Array.from({ length: n }, (_, i) => first + i);

describe("gvt: GGTT shadowing (emulate_ggtt_mmio_write)", () => {
  it("a 1920x1080x32bpp framebuffer: 2,025 8-byte writes, 2,025 pins and 2,025 mappings", async () => {
    const rig = await makeRig();
    expect(1920 * 1080 * 4).to.equal(8_294_400);
    expect(Math.ceil(8_294_400 / 4096)).to.equal(FB_PAGES);
    rig.drv.ggttWriteRange(apIndex(rig), range(FB_GFN, FB_PAGES));
    expect(rig.vgpu.ggtt.counters.updates).to.equal(2025);
    expect(rig.svc.counters.translations).to.equal(2025);
    expect(rig.svc.counters.maps).to.equal(2025);
    expect(rig.svc.pinnedFrames).to.equal(2025);
    expect(rig.svc.pinRefs).to.equal(2025);
    expect(rig.svc.counters.pinCalls).to.equal(0, "the 4K path pins through translate only");
    expect(rig.vgpu.cache.size).to.equal(2025);
    expect(rig.vgpu.cache.totalRefs()).to.equal(2025);
    expect(rig.vgpu.ggtt.mappedEntries()).to.equal(2025);
    expect(rig.vgpu.cache.checkConsistency()).to.equal(undefined);
    // The shadow holds DMA page numbers the parent device can reach, none of another vGPU.
    expect(rig.vgpu.checkIsolation()).to.deep.equal([]);
    await closeAndCheck(rig);
    expect(rig.svc.counters.releases).to.equal(2025);
  });

  it("the guest reads back what it wrote; the shadow holds the DMA address", async () => {
    const rig = await makeRig();
    rig.drv.ggttWrite(apIndex(rig, 7), 0x1234);
    const b = rig.vgpu.read(VFIO_PCI_BAR0_REGION_INDEX, BigInt(GGTT_OFFSET + apIndex(rig, 7) * 8), 8);
    const [lo, hi] = pte(0x1234);
    expect(Array.from(b)).to.deep.equal([lo & 0xff, (lo >>> 8) & 0xff, (lo >>> 16) & 0xff, lo >>> 24, hi & 0xff, 0, 0, 0]);
    const dma = rig.vgpu.ggtt.hostEntry(apIndex(rig, 7))!;
    expect(rig.vgpu.cache.lookupGfn(0x1234)).to.deep.equal({ gfn: 0x1234, dmaAddr: dma * 4096, size: 4096, kref: 1 });
    await closeAndCheck(rig);
  });

  it("split 4-byte halves: the first is parked (shadow non-present scratch), the second completes the entry", async () => {
    const rig = await makeRig();
    const i = apIndex(rig, 3);
    rig.drv.ggttWrite(i, 0x2000);
    expect(rig.svc.pinnedFrames).to.equal(1);
    const [lo, hi] = pte(0x2100);
    rig.drv.ggttWriteHalf(i, 0, lo);
    // The first half releases the old mapping and leaves scratch, present clear.
    expect(rig.vgpu.ggtt.pendingPartials).to.equal(1);
    expect(rig.vgpu.ggtt.hostEntry(i)).to.equal(SCRATCH);
    expect(rig.vgpu.ggtt.hostPresent[i - rig.vgpu.ggtt.apStart]).to.equal(0);
    expect(rig.svc.pinnedFrames).to.equal(0);
    expect(rig.vgpu.ggtt.read32(i, 0)).to.equal(lo);
    rig.drv.ggttWriteHalf(i, 4, hi);
    expect(rig.vgpu.ggtt.pendingPartials).to.equal(0);
    expect(rig.vgpu.cache.lookupGfn(0x2100)?.kref).to.equal(1);
    expect(rig.svc.pinnedFrames).to.equal(1);
    expect(rig.vgpu.ggtt.counters.partials).to.equal(1);
    // High half first works the same way.
    const [lo2, hi2] = pte(0x2200);
    rig.drv.ggttWriteHalf(i, 4, hi2);
    rig.drv.ggttWriteHalf(i, 4, hi2); // the same half again only updates the parked value
    expect(rig.vgpu.ggtt.pendingPartials).to.equal(1);
    rig.drv.ggttWriteHalf(i, 0, lo2);
    expect(rig.vgpu.cache.lookupGfn(0x2200)?.kref).to.equal(1);
    expect(rig.vgpu.cache.lookupGfn(0x2100)).to.equal(undefined);
    expect(rig.svc.pinnedFrames).to.equal(1);
    await closeAndCheck(rig);
  });

  it("writes outside the partition are silently ignored", async () => {
    const rig = await makeRig();
    const below = rig.vgpu.ggtt.apStart - 1; // the host's share of the aperture
    const between = rig.vgpu.ggtt.apStart + rig.vgpu.ggtt.apCount; // another vGPU's or free aperture
    rig.drv.ggttWrite(below, 0x3000);
    rig.drv.ggttWrite(between, 0x3001);
    rig.drv.ggttWriteHalf(below, 0, 0x3000003);
    expect(rig.vgpu.ggtt.counters.ignored).to.equal(3);
    expect(rig.svc.counters.translations).to.equal(0);
    expect(rig.vgpu.ggtt.read32(below, 0)).to.equal(0);
    // The hidden slice is part of the partition.
    rig.drv.ggttWrite(hiIndex(rig, 5), 0x3002);
    expect(rig.svc.pinnedFrames).to.equal(1);
    await closeAndCheck(rig);
  });

  it("the same GFN in two entries: one pin, kref 2; clearing one keeps the pin", async () => {
    const rig = await makeRig();
    rig.drv.ggttWrite(apIndex(rig, 0), 0x4000);
    rig.drv.ggttWrite(apIndex(rig, 1), 0x4000);
    expect(rig.svc.counters.translations).to.equal(1);
    expect(rig.svc.pinnedFrames).to.equal(1);
    expect(rig.vgpu.cache.lookupGfn(0x4000)?.kref).to.equal(2);
    expect(rig.vgpu.ggtt.hostEntry(apIndex(rig, 0))).to.equal(rig.vgpu.ggtt.hostEntry(apIndex(rig, 1)));
    rig.drv.ggttWrite(apIndex(rig, 0), undefined);
    expect(rig.vgpu.cache.lookupGfn(0x4000)?.kref).to.equal(1);
    expect(rig.svc.pinnedFrames).to.equal(1);
    expect(rig.vgpu.ggtt.hostPresent[0]).to.equal(0);
    rig.drv.ggttWrite(apIndex(rig, 1), undefined);
    expect(rig.svc.pinnedFrames).to.equal(0);
    expect(rig.svc.counters.releases).to.equal(1);
    await closeAndCheck(rig);
  });

  it("rewriting an entry with the same GFN maps before it releases: the frame is never unpinned", async () => {
    const rig = await makeRig();
    rig.drv.ggttWrite(apIndex(rig), 0x4100);
    rig.drv.ggttWrite(apIndex(rig), 0x4100);
    expect(rig.svc.counters.translations).to.equal(1);
    expect(rig.svc.counters.releases).to.equal(0);
    expect(rig.vgpu.cache.lookupGfn(0x4100)?.kref).to.equal(1);
    rig.drv.ggttWrite(apIndex(rig), 0x4101);
    expect(rig.svc.counters.translations).to.equal(2);
    expect(rig.svc.counters.releases).to.equal(1);
    await closeAndCheck(rig);
  });

  it("accepts only 4- and 8-byte GGTT accesses: other sizes are -EINVAL", async () => {
    const rig = await makeRig();
    const at = BigInt(GGTT_OFFSET + apIndex(rig) * 8);
    const bad = (offset: bigint, n: number): unknown => {
      try {
        rig.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, offset, new Uint8Array(n));
        return undefined;
      } catch (e) {
        return e;
      }
    };
    for (const [off, n] of [[at, 2], [at + 1n, 4], [at, 1], [at + 6n, 2]] as const) {
      const e = bad(off, n);
      expect(e, `${n} bytes at +${off - at}`).to.be.instanceOf(KernelError);
      expect((e as KernelError).code).to.equal("EINVAL");
      expect((e as KernelError).reason).to.equal("gvt-ggtt-bad-access");
    }
    // Past the end of BAR0, and another region.
    expect((bad(BigInt(16 << 20), 8) as KernelError).code).to.equal("EINVAL");
    expect(() => rig.vgpu.write(2, 0n, new Uint8Array(4))).to.throw(KernelError).with.property("code", "EINVAL");
    // An 8-byte access at a 4-aligned offset is two halves.
    rig.vgpu.write(VFIO_PCI_BAR0_REGION_INDEX, at + 4n, new Uint8Array(8));
    expect(rig.vgpu.ggtt.counters.partials).to.equal(2);
    expect(rig.svc.counters.translations).to.equal(0);
    await closeAndCheck(rig);
  });

  it("memlock pressure: pins fail with -ENOMEM and those entries point at scratch, silently", async () => {
    const rig = await makeRig({ services: { memlockPages: 1000 } });
    const scratched: { index: number; gfn: number; errno: number }[] = [];
    rig.vgpu.on("ggttEntryScratched", (e) => scratched.push(e));
    rig.drv.ggttWriteRange(apIndex(rig), range(FB_GFN, FB_PAGES));
    expect(rig.svc.pinnedFrames).to.equal(1000);
    expect(rig.vgpu.ggtt.counters.scratched).to.equal(1025);
    expect(scratched).to.have.length(1025);
    expect(scratched[0]).to.deep.equal({ vgpu: "vgpu0", index: apIndex(rig, 1000), gfn: FB_GFN + 1000, errno: -12 });
    expect(rig.vgpu.ggtt.mappedEntries()).to.equal(1000);
    // Scratch entries stay present: the guest sees corrupted output, not a fault.
    const ap = rig.vgpu.ggtt;
    expect(ap.hostEntry(apIndex(rig, 2024))).to.equal(SCRATCH);
    expect(ap.hostPresent[2024]).to.equal(1);
    // Releasing pressure: a rewrite of a scratched entry maps it now.
    rig.svc.guest.memlockPages = Number.POSITIVE_INFINITY;
    rig.drv.ggttWrite(apIndex(rig, 2024), FB_GFN + 2024);
    expect(rig.vgpu.ggtt.mappedEntries()).to.equal(1001);
    await closeAndCheck(rig);
  });

  it("hostile guest: an entry naming a frame outside guest RAM becomes scratch (-EINVAL from the pin)", async () => {
    const rig = await makeRig({ services: { guestPages: 0x8000 } });
    const errnos: number[] = [];
    rig.vgpu.on("ggttEntryScratched", (e) => errnos.push(e.errno));
    rig.drv.ggttWrite(apIndex(rig), 0x8000);
    rig.drv.ggttWrite(apIndex(rig, 1), 0x3ffffffff >>> 0);
    expect(errnos).to.deep.equal([-22, -22]);
    expect(rig.vgpu.ggtt.mappedEntries()).to.equal(0);
    expect(rig.svc.pinnedFrames).to.equal(0);
    await closeAndCheck(rig);
  });

  it("FLR releases every slot of the partition to scratch; the guest entries stay", async () => {
    const rig = await makeRig();
    rig.drv.ggttWriteRange(apIndex(rig), range(FB_GFN, 100));
    rig.drv.ggttWriteRange(hiIndex(rig), range(FB_GFN + 200, 50));
    expect(rig.svc.pinnedFrames).to.equal(150);
    await rig.vgpu.reset("flr");
    expect(rig.svc.pinnedFrames).to.equal(0);
    expect(rig.vgpu.ggtt.mappedEntries()).to.equal(0);
    expect(rig.vgpu.cache.size).to.equal(0);
    expect(rig.vgpu.ggtt.guestGfn(apIndex(rig, 99))).to.equal(FB_GFN + 99);
    // Engine reset leaves GGTT pins alone.
    rig.drv.ggttWriteRange(apIndex(rig), range(FB_GFN, 10));
    rig.drv.mmioWrite(REG.GDRST, 1);
    expect(rig.svc.pinnedFrames).to.equal(10);
    await closeAndCheck(rig);
  });

  it("MMIO registers read back; the PV info page describes the partition", async () => {
    const rig = await makeRig();
    rig.drv.mmioWrite(0x1000, 0xdeadbeef);
    expect(rig.drv.mmioRead(0x1000)).to.equal(0xdeadbeef);
    expect(rig.drv.mmioRead(REG.PVINFO_PAGE)).to.equal(0x76544776);
    expect(rig.drv.mmioRead(REG.PVINFO_PAGE + 0x40)).to.equal(rig.vgpu.ggtt.apStart * 4096);
    expect(rig.drv.mmioRead(REG.PVINFO_PAGE + 0x44)).to.equal(128 << 20);
    expect(rig.drv.mmioRead(REG.PVINFO_PAGE + 0x4c)).to.equal(512 << 20);
    expect(rig.drv.mmioRead(REG.PVINFO_PAGE + 0x50)).to.equal(4);
    rig.drv.mmioWrite(REG.PVINFO_PAGE + 0x40, 0);
    expect(rig.drv.mmioRead(REG.PVINFO_PAGE + 0x40)).to.equal(rig.vgpu.ggtt.apStart * 4096, "read-only to the guest");
    expect(MMIO_BYTES).to.equal(2 << 20);
    await closeAndCheck(rig);
  });
});
