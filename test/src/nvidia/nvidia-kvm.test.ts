/**
 * The NVIDIA-like vendor on the real KVM platform (VFIO type1 in an mdev-only
 * container, the host DMA API on the parent GPU) and, unchanged, on Xen in its
 * three configurations (privcmd pins, the adapter's mechanism on the parent),
 * through vendors.md section 5 scenarios 5, 7, 9, 10, 11, 12 and 15, with
 * exact counts of pinned frames, locked_vm and live parent mappings, and
 * nothing left at the end. By design, Xen charges no locked_vm (so
 * RLIMIT_MEMLOCK does not apply) and calls dmaUnmap once per balloon block
 * (type1 retries while pins remain).
 */
import { expect } from "chai";
import { rejection } from "@vgpu-iommu/core/testing";
import { KernelError, type Type1Iommu } from "@vgpu-iommu/core";
import type { ScriptedManager } from "@vgpu-iommu/plugin-nvidia";
import { nvidiaStack as nvidiaStackOn, type NvidiaStack, type NvidiaStackOptions } from "../support/nvidia-stack.js";
import { PLATFORMS, per, type PlatformFactory } from "../support/platforms.js";

const LOW = 256; // 1 MiB: ordinary guest RAM below 4 GiB

/** Frames [first, first + n) in a fixed scrambled order. */
function scrambled(first: number, n: number, stride = 97): number[] {
  return Array.from({ length: n }, (_, i) => first + ((i * stride) % n));
}

interface Counts {
  pins: number;
  lockedVm: number;
  parentMappings: number;
}

const counts = (s: NvidiaStack): Counts => ({ pins: s.pinnedFrames(), lockedVm: s.vm.vmm.mm.lockedVm, parentMappings: s.parentMappings() });

async function shutdownClean(s: NvidiaStack): Promise<void> {
  await s.vm.shutdown();
  expect(counts(s)).to.deep.equal({ pins: 0, lockedVm: 0, parentMappings: 0 });
  expect([s.host.phys.totalPins, s.sweptAtShutdown()]).to.deep.equal([0, 0]);
  expect(s.host.kernel.warnings.map((w) => w.site)).to.deep.equal([]);
  expect(s.host.kernel.crashed).to.equal(false);
  expect(s.vendor.vgpus).to.deep.equal([]);
  expect(s.vendor.resources.counters).to.deep.include({ fbSegmentsUsed: 0, chidsUsed: 0 });
}

function suite(p: PlatformFactory): void {
  /** locked_vm: charged per pinned frame on KVM, never on Xen. */
  const locked = (n: number): number => per(p, { kvm: n, xen: 0 });
  const nvidiaStack = (options: NvidiaStackOptions = {}): Promise<NvidiaStack> => nvidiaStackOn({ ...options, platform: p });

  describe(`nvidia-like mdev vGPU on ${p.label}`, () => {
    it("GET_IOVA: one type1 pin per frame, one scatter-gather mapping per 512-frame batch on the parent", async () => {
      const s = await nvidiaStack();
      const v = s.vgpus[0]!;
      expect(counts(s)).to.deep.equal({ pins: 0, lockedVm: 0, parentMappings: 0 }); // mdev-only: MAP_DMA pins nothing
      const frames = scrambled(LOW, 1300);
      const iova = v.translateGfns(frames, "GET_IOVA");
      expect(counts(s)).to.deep.equal({ pins: 1300, lockedVm: locked(1300), parentMappings: 3 });
      expect([v.pins, v.liveNodes, v.liveTranslations]).to.deep.equal([1300, 3, 3]);
      expect(new Set(iova).size).to.equal(1300);
      expect(v.services.checkIsolation([...iova].map((p) => BigInt(p) << 12n))).to.deep.equal([]);
      expect(v.unpinGfns(frames, "GET_IOVA")).to.equal(1300);
      expect(counts(s)).to.deep.equal({ pins: 0, lockedVm: 0, parentMappings: 0 });
      await shutdownClean(s);
    });

    it("GET_HOST_PFN: refcounted pins, host PFNs out; a repeated frame is one locked page", async () => {
      const s = await nvidiaStack();
      const v = s.vgpus[0]!;
      const pfns = v.translateGfns([LOW, LOW + 1, LOW], "GET_HOST_PFN");
      expect(pfns[0]).to.equal(pfns[2]);
      // type1 refcounts a repeated pin per IOVA: two references, one GUP pin, one locked page.
      expect([v.hostPfnRefcount(LOW), v.pins, counts(s).pins, counts(s).lockedVm, counts(s).parentMappings]).to.deep.equal([2, 3, 2, locked(2), 0]);
      v.unpinGfns([LOW], "GET_HOST_PFN");
      expect([v.hostPfnRefcount(LOW), v.pins, counts(s).pins, counts(s).lockedVm]).to.deep.equal([1, 2, 2, locked(2)]);
      v.unpinGfns([LOW, LOW + 1], "GET_HOST_PFN");
      expect([v.pins, counts(s).pins, counts(s).lockedVm]).to.deep.equal([0, 0, 0]);
      await shutdownClean(s);
    });

    it('refuses a frame already mapped with -EEXIST ("Guest PFN already pinned"), leaving the counts as they were', async () => {
      const s = await nvidiaStack();
      const v = s.vgpus[0]!;
      v.translateGfns([LOW, LOW + 5], "GET_IOVA");
      const e = await rejection(() => v.translateGfns([LOW + 9, LOW + 5], "GET_IOVA"));
      expect([e.code, e.reason, e.fields["gpfn"]]).to.deep.equal(["EEXIST", "guest-pfn-already-pinned", LOW + 5]);
      expect(counts(s)).to.deep.equal({ pins: 2, lockedVm: locked(2), parentMappings: 1 });
      await shutdownClean(s);
    });

    it("scenario 5: ballooning out a block unpins in the notifier, keeps RM's node, and the parent mapping goes with the pins", async () => {
      const s = await nvidiaStack();
      const v = s.vgpus[0]!;
      const retries: number[] = [];
      (s.kvm?.host.backends[0] as Type1Iommu | undefined)?.on("invalidationSent", (e) => retries.push(e.retry));
      const block = s.balloonBlock(0);
      // One batch straddling low RAM and block 0; one frame of the block pinned 3 times in host-PFN mode.
      const batch = [...scrambled(LOW, 256), ...scrambled(block.first, 256)];
      const iova = v.translateGfns(batch, "GET_IOVA");
      for (let i = 0; i < 3; i++) v.translateGfns([block.first + 300], "GET_HOST_PFN");
      expect([v.pins, v.hostPfnRefcount(block.first + 300)]).to.deep.equal([515, 3]);
      expect(counts(s)).to.deep.equal({ pins: 513, lockedVm: locked(513), parentMappings: 1 });
      expect(await s.vm.balloonOut(0, 1)).to.equal(2n << 20n);
      // type1 notified 3 times: the host-PFN frame loses one reference per notification. Xen calls dmaUnmap
      // once: the frame keeps 2 references (Dom0 holds the ballooned-out page until RM lets go).
      expect(retries).to.deep.equal(per(p, { kvm: [0, 1, 2], xen: [] }));
      const kept = per(p, { kvm: 0, xen: 2 });
      expect(counts(s)).to.deep.equal({ pins: 256 + Math.min(kept, 1), lockedVm: locked(256), parentMappings: 0 });
      expect([v.pins, v.liveNodes, v.liveTranslations, v.hostPfnRefcount(block.first + 300)]).to.deep.equal([256 + kept, 1, 0, kept]);
      if (s.xen !== undefined) expect(s.xen.platform.stats).to.deep.equal({ dmaUnmapCalls: 1, pinsLeftAfterDmaUnmap: 2, revokedByP2mChange: 0, pinsSweptAtShutdown: 0 });
      // RM's IOVAs for the batch are now stale: the parent's isolation check sees them unmapped.
      const stale = v.services.checkIsolation([BigInt(iova[0]!) << 12n]);
      expect(stale).to.deep.equal([{ addr: BigInt(iova[0]!) << 12n, kind: "unmapped" }]);
      expect(v.deviceVisibleAddresses()).to.have.length(512);
      // RM unpins the batch: the 256 frames still pinned go, the node goes.
      expect(v.unpinGfns(batch, "GET_IOVA")).to.equal(256);
      expect([counts(s).pins, v.liveNodes]).to.deep.equal([Math.min(kept, 1), 0]);
      // On Xen RM lets go of the host-PFN frame it still holds: the orphaned page is freed.
      for (let i = 0; i < kept; i++) v.unpinGfns([block.first + 300], "GET_HOST_PFN");
      expect(counts(s).pins).to.equal(0);
      await shutdownClean(s);
    });

    it("scenario 7: VFIO_DEVICE_RESET posts VM_REBOOT and sweeps every pin and mapping, then the vGPU pins again", async () => {
      const s = await nvidiaStack();
      const v = s.vgpus[0]!;
      v.translateGfns(scrambled(LOW, 700), "GET_IOVA");
      v.translateGfns([LOW + 800, LOW + 800, LOW + 801], "GET_HOST_PFN");
      expect([v.pins, counts(s).pins, counts(s).lockedVm, counts(s).parentMappings]).to.deep.equal([703, 702, locked(702), 2]);
      await v.reset("flr");
      expect(counts(s)).to.deep.equal({ pins: 0, lockedVm: 0, parentMappings: 0 });
      expect([v.vfFlrs, (s.vendor.manager as ScriptedManager).posted.VM_REBOOT]).to.deep.equal([1, 1]);
      v.translateGfns([LOW], "GET_IOVA");
      expect(counts(s)).to.deep.equal({ pins: 1, lockedVm: locked(1), parentMappings: 1 });
      await shutdownClean(s);
    });

    it("scenario 9: VM shutdown closes every vGPU (VM_SHUTDOWN), unpins and unmaps everything, then destroys", async () => {
      const s = await nvidiaStack({ count: 2 });
      s.vgpus[0]!.translateGfns(scrambled(LOW, 600), "GET_IOVA");
      s.vgpus[1]!.translateGfns(scrambled(LOW + 600, 100), "GET_HOST_PFN");
      expect(counts(s)).to.deep.equal({ pins: 700, lockedVm: locked(700), parentMappings: 2 });
      expect(s.vendor.destroy.bind(s.vendor, s.vgpus[0]!)).to.throw(KernelError).with.property("code", "EPERM");
      await shutdownClean(s);
      expect((s.vendor.manager as ScriptedManager).posted.VM_SHUTDOWN).to.equal(2);
      expect(s.vendor.resources.counters.scrubbedBytes).to.equal(2 * 2 * (1 << 30));
    });

    it("scenario 10: the migration report is exactly the pinned set, in both modes", async () => {
      const s = await nvidiaStack();
      const v = s.vgpus[0]!;
      v.translateGfns([LOW + 3, LOW + 9], "GET_HOST_PFN");
      v.translateGfns([LOW + 40, LOW + 12, LOW + 13], "GET_IOVA");
      const bits = (first: number, n: number): number[] => {
        const r = v.dirtyPages!(first, n);
        return Array.from({ length: n }, (_, i) => first + i).filter((g) => (r.bitmap[(g - first) >> 3]! >> ((g - first) & 7)) & 1);
      };
      expect(bits(LOW, 64)).to.deep.equal([LOW + 3, LOW + 9, LOW + 12, LOW + 13, LOW + 40]);
      v.unpinGfns([LOW + 9], "GET_HOST_PFN");
      expect(bits(LOW, 64)).to.deep.equal([LOW + 3, LOW + 12, LOW + 13, LOW + 40]);
      await shutdownClean(s);
    });

    it("scenario 11: under RLIMIT_MEMLOCK a request fails whole with -ENOMEM on KVM and nothing stays pinned or mapped; Xen does not charge privcmd pins", async () => {
      const s = await nvidiaStack({ vm: { memlockBytes: 1000n * 4096n } });
      const v = s.vgpus[0]!;
      if (p.hypervisor === "xen") {
        v.translateGfns(scrambled(LOW, 1300), "GET_IOVA");
        expect(counts(s)).to.deep.equal({ pins: 1300, lockedVm: 0, parentMappings: 3 });
        v.translateGfns(scrambled(LOW + 1300, 1300), "GET_HOST_PFN");
        expect(counts(s)).to.deep.equal({ pins: 2600, lockedVm: 0, parentMappings: 3 });
        await shutdownClean(s);
        return;
      }
      const e = await rejection(() => v.translateGfns(scrambled(LOW, 1300), "GET_IOVA"));
      expect(e.code).to.equal("ENOMEM");
      expect(counts(s)).to.deep.equal({ pins: 0, lockedVm: 0, parentMappings: 0 });
      expect([v.pins, v.liveNodes]).to.deep.equal([0, 0]);
      const h = await rejection(() => v.translateGfns(scrambled(LOW, 1300), "GET_HOST_PFN"));
      expect(h.code).to.equal("ENOMEM");
      expect(counts(s)).to.deep.equal({ pins: 0, lockedVm: 0, parentMappings: 0 });
      // Within the limit it works.
      v.translateGfns(scrambled(LOW, 1000), "GET_IOVA");
      expect(counts(s)).to.deep.equal({ pins: 1000, lockedVm: locked(1000), parentMappings: 2 });
      await s.vm.shutdown();
      expect(counts(s)).to.deep.equal({ pins: 0, lockedVm: 0, parentMappings: 0 });
      expect(s.host.kernel.crashed).to.equal(false);
    });

    it("scenario 12: several vGPUs in one VM share the parent's address space; each sees the other's addresses as foreign where they are allocated", async () => {
      const s = await nvidiaStack({ count: 2 });
      const [a, b] = s.vgpus;
      const block = s.balloonBlock(1);
      const ia = a!.translateGfns([block.first, block.first + 1], "GET_IOVA");
      const ib = b!.translateGfns([block.first, block.first + 1], "GET_IOVA");
      // Two references on each frame (one per vGPU), two GUP pins, two locked pages, two parent mappings.
      expect([a!.pins, b!.pins]).to.deep.equal([2, 2]);
      expect(counts(s)).to.deep.equal({ pins: 2, lockedVm: locked(2), parentMappings: 2 });
      // An allocated address space (dma-iommu, 2024 DFNs) gives each vGPU's mapping its own address. Where the
      // address is a function of the frame (XenGT identity, XenServer BFN) both vGPUs expose the same address:
      // the checker sees it owned by both, and no IOMMU could tell their DMA apart.
      const sharesAddresses = per(p, { kvm: false, "pv-identity": true, "pv-xenserver": true, "pvh-2024": false });
      expect([ia[0] === ib[0], ia[1] === ib[1]]).to.deep.equal([sharesAddresses, sharesAddresses]);
      if (sharesAddresses) {
        expect(a!.services.checkIsolation([BigInt(ib[0]!) << 12n])).to.deep.equal([]);
        expect(b!.services.checkIsolation([BigInt(ia[1]!) << 12n])).to.deep.equal([]);
      } else {
        expect(a!.services.checkIsolation([BigInt(ib[0]!) << 12n])).to.deep.equal([{ addr: BigInt(ib[0]!) << 12n, kind: "other-vgpu", owner: "nv1" }]);
        expect(b!.services.checkIsolation([BigInt(ia[1]!) << 12n])[0]!.kind).to.equal("other-vgpu");
      }
      await s.vm.balloonOut(1, 1);
      expect(counts(s)).to.deep.equal({ pins: 0, lockedVm: 0, parentMappings: 0 });
      expect([a!.liveNodes, b!.liveNodes]).to.deep.equal([1, 1]);
      await shutdownClean(s);
    });
  });

  describe(`nvidia-like VF vGPU on ${p.label} (scenario 15)`, () => {
    it("never pins: GET_IOVA answers the GPA frame; balloon and reset find nothing to drop", async () => {
      const s = await nvidiaStack({ vendor: { mode: "vf" }, type: "NV-24Q", count: 2 });
      const [v] = s.vgpus;
      expect(s.vendor.capabilities.ownRequesterId).to.equal(true);
      expect([...v!.translateGfns([LOW + 7, LOW + 3], "GET_IOVA")]).to.deep.equal([LOW + 7, LOW + 3]);
      expect((await rejection(() => v!.translateGfns([LOW], "GET_HOST_PFN"))).code).to.equal("EOPNOTSUPP");
      await s.vm.balloonOut(0, 1);
      await v!.reset("flr");
      expect(counts(s)).to.deep.equal({ pins: 0, lockedVm: 0, parentMappings: 0 });
      expect(s.vgpus.map((x) => [x.allocation.gfid, x.allocation.fbOffset / (1 << 30), x.allocation.chidStart])).to.deep.equal([
        [1, 0, 8],
        [2, 24, 520],
      ]);
      expect(s.vendor.availableInstances("NV-24Q")).to.equal(0);
      await shutdownClean(s);
      expect(s.vendor.resources.counters).to.deep.include({ vfsUsed: 0, scrubbedBytes: 48 * (1 << 30) });
    });
  });
}

for (const p of PLATFORMS) suite(p);
