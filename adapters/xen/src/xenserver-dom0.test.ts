import { expect } from "chai";
import { XenServerDom0, IOMMU_BATCH_SIZE } from "./xenserver-dom0.js";
import { XenSwiotlb } from "./swiotlb-xen.js";
import { GPU, MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

const OFFSET = 248 * 262144;

describe("XenServer PV-IOMMU, Dom0's side: detection, BFN layout, foreign addresses", () => {
  let env: XenEnv;
  afterEach(() => {
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  const setup = (opts: Parameters<typeof xenEnv>[0] = {}): XenServerDom0 => {
    env = xenEnv({ ...opts, dom0: { memoryBytes: 16n * MiB, balloonBytes: 4n * MiB, ...opts.dom0 }, xen: { pvIommu: "xenserver", ...opts.xen } });
    env.xen.assignDevice(GPU, 0);
    return new XenServerDom0(env.xen, env.dom0);
  };

  it("lays Dom0's RAM out at BFN == PFN with 64 unmap+map pairs per 128-op hypercall, one flush each", () => {
    const layout = setup();
    const { xen, dom0 } = env;
    const calls = xen.hypercalls("iommu_op");
    const flushes = xen.dom0Flushes;
    expect(layout.detect()).to.equal(true);
    expect(layout.active).to.equal(true);
    const ramPfns = 4096;
    expect(layout.bootBatches).to.equal(Math.ceil((2 * ramPfns) / IOMMU_BATCH_SIZE));
    expect(xen.hypercalls("iommu_op")).to.equal(calls + 1 + 64);
    expect(xen.dom0Flushes).to.equal(flushes + 64);
    for (const pfn of [0, 0x9f, 0x100, 0x1000]) expect(xen.iommu.deviceTranslate(GPU, BigInt(pfn) << 12n, true)).to.equal(dom0.pvP2m!.mfn(pfn));
    expect(xen.iommu.deviceTranslate(GPU, 0xa0000n, false)).to.equal(0xa0);
    expect(env.host.phys.totalPins).to.equal(0);
  });

  it("builds the foreign region in the kthread: Xen's other 1:1 entries go, all host RAM appears at offset + MFN", () => {
    const layout = setup();
    const { xen, guest } = env;
    layout.detect();
    const g = guest.p2m!.mfn(0x77);
    const p2m = env.dom0.pvP2m!;
    const remapped = !p2m.isInvalid(g) && !p2m.isIdentity(g);
    expect(xen.iommu.deviceTranslate(GPU, BigInt(g) << 12n, false)).to.equal(remapped ? p2m.mfn(g) : g);
    expect(layout.runSetup(3)).to.equal(false);
    expect(layout.setupComplete).to.equal(false);
    const calls = xen.hypercalls("iommu_op");
    expect(layout.runSetup()).to.equal(true);
    const ram = xen.frames.ramFrames;
    const dom0Pfns = 4096 + 0x60;
    const removals = Math.ceil((ram - dom0Pfns) / IOMMU_BATCH_SIZE) + Math.ceil(ram / IOMMU_BATCH_SIZE);
    expect(xen.hypercalls("iommu_op") - calls + 3).to.equal(removals);
    expect(layout.loggedFailures).to.equal(0);
    if (g >= dom0Pfns) expect(xen.iommu.deviceTranslate(GPU, BigInt(g) << 12n, false)).to.equal(-1);
    expect(xen.iommu.deviceTranslate(GPU, BigInt(OFFSET + g) << 12n, true)).to.equal(g);
    expect(xen.iommu.deviceTranslate(GPU, BigInt(OFFSET + ram - 1) << 12n, true)).to.equal(ram - 1);
    expect(xen.iommu.deviceTranslate(GPU, BigInt(OFFSET + ram) << 12n, true)).to.equal(-1);
    const status = new Int32Array(1);
    expect(layout.mapForeignFrames([g], 1, status)).to.equal(0);
  });

  it("maps foreign BFNs on demand while the region is incomplete: 128 ops per hypercall, one flush each; an existing BFN is taken as there", () => {
    const layout = setup();
    const { xen, guest } = env;
    layout.detect();
    const mfns = Array.from({ length: 300 }, (_, i) => guest.p2m!.mfn(i));
    const status = new Int32Array(300);
    const flushes = xen.dom0Flushes;
    expect(layout.mapForeignFrames(mfns, 300, status)).to.equal(3);
    expect(xen.dom0Flushes).to.equal(flushes + 3);
    expect(status.every((s) => s === 0)).to.equal(true);
    expect(layout.alreadyMapped).to.equal(0);
    expect(layout.mapForeignFrames(mfns, 300, status)).to.equal(3);
    expect(status.every((s) => s === 0)).to.equal(true);
    expect(layout.alreadyMapped).to.equal(300);
    expect(xen.iommu.deviceTranslate(GPU, BigInt(layout.foreignBfn(mfns[299]!)) << 12n, true)).to.equal(mfns[299]);
  });

  it("puts a foreign frame of a 768 GiB host within a 40-bit device's reach, and one at 776 GiB beyond it", () => {
    const layout = setup();
    const gpu40 = { name: "gpu40", dmaMask: (1n << 40n) - 1n, segmentBoundaryMask: 0xffff_ffffn };
    const at = (gib: number): number => layout.foreignBfn(gib * 262144 - 1) * 4096;
    expect(XenSwiotlb.dmaCapable(gpu40, at(768), 4096)).to.equal(true);
    expect(XenSwiotlb.dmaCapable(gpu40, at(776), 4096)).to.equal(true);
    expect(XenSwiotlb.dmaCapable(gpu40, at(776) + 4096, 4096)).to.equal(false);
    expect(layout.offsetPfn).to.equal(OFFSET);
  });

  for (const [name, opts, reason] of [
    ["AMD", { xen: { cpuVendor: "amd" as const } }, "query_caps: no map capability"],
    ["iommu passthrough", { xen: { dom0Iommu: { passthrough: true } } }, "query_caps: no map capability"],
    ["a Xen without PV-IOMMU", { xen: { pvIommu: "none" as const } }, "Xen has no PV-IOMMU (iommu_op -ENOSYS)"],
    ["a PVH Dom0", { dom0: { kind: "pvh" as const } }, "not a PV Dom0"],
  ] as const) {
    it(`falls back to swiotlb-xen on ${name}`, () => {
      const layout = setup(opts);
      expect(layout.detect()).to.equal(false);
      expect(layout.fallbackReason).to.equal(reason);
      expect(env.host.kernel.messages.at(-1)).to.equal(`XEN-PV-IOMMU: ${reason}; using swiotlb-xen`);
      expect(layout.runSetup()).to.equal(false);
    });
  }

  it("falls back when Dom0's max_pfn reaches the foreign offset", () => {
    setup();
    const layout = new XenServerDom0(env.xen, env.dom0, 0);
    expect(layout.detect()).to.equal(false);
    expect(layout.fallbackReason).to.equal(`bfn_foreign_offset at 0 GiB is too small for Dom0 (max_pfn ${env.dom0.maxGfn})`);
  });
});
