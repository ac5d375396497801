/**
 * The mock GPU on each platform: KVM (VFIO type1 pins charged to the VMM, the
 * host DMA API on the parent) and, unchanged, Xen in its three configurations
 * (privcmd pins, the adapter's mechanism on the parent). Where a number
 * differs by design it is asserted for each platform: device addresses (the
 * address model), locked_vm and RLIMIT_MEMLOCK (privcmd is not charged), the
 * error of a frame outside RAM (KVM's BIOS ROM is a read-only slot; on Xen it
 * is MMIO), and the host's fallible steps (type1 and dma-iommu on KVM, the
 * PV-IOMMU hypercalls on Xen).
 */
import { expect } from "chai";
import sinon from "sinon";
import { ENTRY_MAPPED, ENTRY_REVOKED, ENTRY_SCRATCH, DEFAULT_SCRATCH_ADDRESS, MOCK_SMALL, MockGuestDriver, type MockVgpu } from "@vgpu-iommu/plugin-mock-gpu";
import { mockGpuStack, type MockGpuStack } from "../support/mock-gpu-stack.js";
import { PLATFORMS, per } from "../support/platforms.js";

const MiB = 1n << 20n;

/** Shuts the VM down and checks the host holds nothing: pins, locked_vm, DMA mappings, translations, WARNs. */
async function expectClean(s: MockGpuStack): Promise<void> {
  await s.vm.shutdown();
  expect([s.host.phys.totalPins, s.vm.vmm.mm.lockedVm, s.parentMappings(), s.vm.translate.liveCount(), s.host.stats().externalPins, s.sweptAtShutdown()]).to.deep.equal([0, 0, 0, 0, 0, 0]);
  expect(s.host.kernel.warnings).to.deep.equal([]);
  expect(s.host.kernel.crashed).to.equal(false);
  expect(s.vendor.usedSlots).to.equal(0);
}

for (const p of PLATFORMS) {
  describe(`mock GPU on the ${p.label} platform`, () => {
    afterEach(() => sinon.restore());

    it("pins once per frame (charging locked_vm on KVM only), and maps each frame on the parent GPU", async () => {
      const s = await mockGpuStack({ platform: p });
      s.driver.mapAll([0x100, 0x101, 0x100, 0x102]);
      const kvm = p.hypervisor === "kvm" ? 1 : 0;
      expect([s.pinnedFrames(), s.vm.vmm.mm.lockedVm, s.host.stats().externalPins, s.parentMappings(), s.vm.translate.liveCount()]).to.deep.equal([3, 3 * kvm, 3 * kvm, 3, 3]);
      // The 2024 PV-IOMMU's context holds its own reference on each mapped frame.
      expect(s.host.phys.totalPins).to.equal(per(p, { kvm: 3, "pv-identity": 3, "pv-xenserver": 3, "pvh-2024": 6 }));
      // dma-iommu on a 39-bit PCI device: below 4 GiB first, top-down, one page per translation; Xen: the configuration's address model.
      const a = (gfn: number, k: number): bigint => s.deviceAddress(s.vm, gfn, k);
      expect([0, 1, 2, 3].map((i) => s.vgpu.shadowEntry(i))).to.deep.equal([a(0x100, 0), a(0x101, 1), a(0x100, 0), a(0x102, 2)]);
      if (p.id === "kvm") expect([0, 1, 2, 3].map((i) => s.vgpu.shadowEntry(i))).to.deep.equal([0xfffff000n, 0xffffe000n, 0xfffff000n, 0xffffd000n]);
      if (p.id === "pvh-2024") expect([0, 1, 2, 3].map((i) => s.vgpu.shadowEntry(i))).to.deep.equal([0x7ffffff000n, 0x7fffffe000n, 0x7ffffff000n, 0x7fffffd000n]);
      expect(s.vgpu.cache.refOf(s.vgpu.cache.findGfn(0x100))).to.equal(2);
      expect(s.vgpu.services.checkIsolation(s.vgpu.deviceVisibleAddresses())).to.deep.equal([]);
      s.assertInvariants();
      await expectClean(s);
    });

    it("balloonOut: dmaUnmap of the whole block drops its entries whatever their refcount, answered on the first call", async () => {
      const s = await mockGpuStack({ platform: p });
      const base = Number(s.vm.balloonBase! >> 12n);
      const answers: number[] = [];
      const sub = s.kvm?.host.backends[0]!.on("invalidationAnswered", (e) => answers.push(e.pinsLeft));
      const dmaUnmap = sinon.spy(s.vgpu, "dmaUnmap");
      s.driver.mapAll([base, base + 1, base, base + 511, base + 512, 0x100]);
      expect([s.pinnedFrames(), s.vgpu.cache.refs]).to.deep.equal([5, 6]);
      expect(await s.vm.balloonOut(0, 1)).to.equal(2n * MiB);
      expect(dmaUnmap.args).to.deep.equal([[s.vm.balloonBase!, 2n * MiB]]);
      // type1 sends one notification and finds no pin left; Xen calls dmaUnmap once, then changes the P2M with nothing left to revoke.
      if (p.hypervisor === "kvm") expect(answers).to.deep.equal([0]);
      else expect(s.xen!.platform.stats).to.deep.equal({ dmaUnmapCalls: 1, pinsLeftAfterDmaUnmap: 0, revokedByP2mChange: 0, pinsSweptAtShutdown: 0 });
      expect([s.pinnedFrames(), s.vm.vmm.mm.lockedVm, s.parentMappings(), s.vgpu.cache.count]).to.deep.equal([2, per(p, { kvm: 2, xen: 0 }), 2, 2]);
      expect([0, 1, 2, 3, 4, 5].map((i) => s.vgpu.entryState(i))).to.deep.equal([ENTRY_REVOKED, ENTRY_REVOKED, ENTRY_REVOKED, ENTRY_REVOKED, ENTRY_MAPPED, ENTRY_MAPPED]);
      // The guest plugs the block back and rewrites the entries: fresh pins, nothing released twice.
      expect(await s.vm.balloonIn(0, 1)).to.equal(0);
      s.driver.mapAll([base, base + 1]);
      expect([s.pinnedFrames(), s.vgpu.stats().releaseErrors]).to.deep.equal([4, 0]);
      sub?.dispose();
      await expectClean(s);
    });

    it("under RLIMIT_MEMLOCK, pins fail with -ENOMEM on KVM and entries become scratch (scenario 11); Xen's privcmd pins are not charged", async () => {
      const s = await mockGpuStack({ platform: p, vm: { memlockBytes: 4n * 4096n } });
      const codes: string[] = [];
      const sub = s.vgpu.on("mapFailed", (e) => codes.push(`${e.index}:${e.code}`));
      s.driver.mapAll([0x100, 0x101, 0x102, 0x103, 0x104, 0x105]);
      if (p.hypervisor === "kvm") {
        expect(codes).to.deep.equal(["4:ENOMEM", "5:ENOMEM"]);
        expect([s.vm.vmm.mm.lockedVm, s.pinnedFrames(), s.parentMappings(), s.vgpu.shadowEntry(5)]).to.deep.equal([4, 4, 4, DEFAULT_SCRATCH_ADDRESS]);
      } else {
        expect(codes).to.deep.equal([]);
        expect([s.vm.vmm.mm.lockedVm, s.pinnedFrames(), s.parentMappings(), s.vgpu.shadowEntry(5)]).to.deep.equal([0, 6, 6, s.deviceAddress(s.vm, 0x105, 5)]);
      }
      s.driver.clear(0);
      s.driver.map(5, 0x105);
      expect([s.vgpu.entryState(5), s.vm.vmm.mm.lockedVm]).to.deep.equal([ENTRY_MAPPED, per(p, { kvm: 4, xen: 0 })]);
      sub.dispose();
      await expectClean(s);
    });

    it("hostile guest: a frame outside guest RAM is -EINVAL; the BIOS ROM's frame is -EPERM on KVM (read-only slot), -EINVAL on Xen (MMIO); both scratch (scenario 13)", async () => {
      const s = await mockGpuStack({ platform: p });
      const codes: string[] = [];
      const sub = s.vgpu.on("mapFailed", (e) => codes.push(`${e.gfn.toString(16)}:${e.code}`));
      s.driver.mapAll([0x8000, 0xfffc0, 0x100]);
      expect(codes).to.deep.equal(["8000:EINVAL", per(p, { kvm: "fffc0:EPERM", xen: "fffc0:EINVAL" })]);
      expect([s.vgpu.entryState(0), s.vgpu.entryState(1), s.vgpu.entryState(2), s.pinnedFrames()]).to.deep.equal([ENTRY_SCRATCH, ENTRY_SCRATCH, ENTRY_MAPPED, 1]);
      sub.dispose();
      await expectClean(s);
    });

    it("a FLR releases every pin and mapping and keeps the vGPU usable; an engine reset keeps them", async () => {
      const s = await mockGpuStack({ platform: p, mock: { awkward: true } });
      s.driver.mapAll([0x100, 0x101, 0x102]);
      await s.vgpu.reset("engine");
      expect(s.pinnedFrames()).to.equal(3);
      await s.vgpu.reset("flr");
      expect([s.pinnedFrames(), s.vm.vmm.mm.lockedVm, s.parentMappings(), s.vm.translate.liveCount()]).to.deep.equal([0, 0, 0, 0]);
      s.driver.map(0, 0x200);
      expect(s.pinnedFrames()).to.equal(1);
      await expectClean(s);
    });

    it("two mock vGPUs in one VM share the parent's address space; each exposes only its own addresses", async () => {
      const s = await mockGpuStack({ platform: p });
      const other = (await s.vm.addVgpu(s.vendor, MOCK_SMALL, "mock1")) as MockVgpu;
      new MockGuestDriver(other, other.geometry).mapAll([0x300, 0x301]);
      s.driver.mapAll([0x100]);
      const a = (gfn: number, k: number): bigint => s.deviceAddress(s.vm, gfn, k);
      expect(other.deviceVisibleAddresses()).to.deep.equal([a(0x300, 0), a(0x301, 1)]);
      expect(s.vgpu.deviceVisibleAddresses()).to.deep.equal([a(0x100, 2)]);
      if (p.id === "kvm") expect([...other.deviceVisibleAddresses(), ...s.vgpu.deviceVisibleAddresses()]).to.deep.equal([0xfffff000n, 0xffffe000n, 0xffffd000n]);
      expect(s.vgpu.services.checkIsolation(other.deviceVisibleAddresses())).to.deep.equal([
        { addr: a(0x300, 0), kind: "other-vgpu", owner: "mock1" },
        { addr: a(0x301, 1), kind: "other-vgpu", owner: "mock1" },
      ]);
      expect(s.pinnedFrames()).to.equal(3);
      await expectClean(s);
    });

    it("fault sweep over the host's fallible steps while the guest maps: scratch entries, no leak", async () => {
      const fired: string[] = [];
      const scratched: string[] = [];
      for (let n = 1; n < 100; n++) {
        const s = await mockGpuStack({ platform: p });
        s.host.faults.failNth(n);
        s.driver.mapAll([0x100, 0x101, 0x100, 0x102]);
        const site = s.host.faults.fired;
        s.host.faults.disarm();
        if (site === undefined) {
          await expectClean(s);
          break;
        }
        fired.push(site);
        // A failure the host absorbs (an allocation with a fallback) changes nothing; any other makes exactly one entry scratch.
        const { mapFailures, scratchEntries } = s.vgpu.stats();
        expect(mapFailures, `n=${n} (${site})`).to.be.at.most(1);
        expect(scratchEntries).to.equal(mapFailures);
        if (mapFailures === 1) scratched.push(site);
        await expectClean(s);
      }
      // KVM: 3 translations x 5 host steps (gup, mmap_lock, kzalloc x2, iommu_map); one kzalloc of each has a fallback.
      // Xen: pv-identity has no fallible step; XenServer maps each translation's BFN in one iommu_op batch (one
      // iommu_map); the 2024 PV-IOMMU allocates a DFN (kzalloc) and maps it (iommu_map) per translation.
      expect([fired.length, scratched.length]).to.deep.equal(per(p, { kvm: [15, 12], "pv-identity": [0, 0], "pv-xenserver": [3, 3], "pvh-2024": [6, 6] }));
      expect(new Set(scratched)).to.deep.equal(new Set(per(p, { kvm: ["gup", "mmap_lock", "kzalloc", "iommu_map"], "pv-identity": [], "pv-xenserver": ["iommu_map"], "pvh-2024": ["kzalloc", "iommu_map"] })));
    });

    it("fault sweep over the mock's own steps, across map, balloonOut, reset and close: no leak", async () => {
      let n = 1;
      for (; n < 100; n++) {
        const s = await mockGpuStack({ platform: p });
        const base = Number(s.vm.balloonBase! >> 12n);
        s.vendor.failNth(n);
        s.driver.mapAll([0x100, base, 0x101, base]);
        await s.vm.balloonOut(0, 1);
        s.driver.map(1, 0x102);
        await s.vgpu.reset("flr");
        s.driver.mapAll([0x103, 0x104]);
        await expectClean(s);
        if (s.vendor.faults.fired === undefined) break;
      }
      // A clean run: 6 misses x (translate, alloc) + releases: 1 (balloonOut) + 3 (reset) + 2 (close) = 18 steps.
      expect(n).to.equal(19);
    });
  });
}
