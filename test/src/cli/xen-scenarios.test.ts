/**
 * The Xen adapter's scenario support through the command: the operations it
 * contributes (the guest's own balloon), its `xen-guest-balloon` scenario on
 * the small Xen stack (pvh-2024) for every vendor, with the exact outcome of
 * each, and the KVM memslot operations it does not have.
 */
import { expect } from "chai";
import { runStack, type Summary } from "@vgpu-iommu/core/cli";
import { VENDORS, XEN, smallStack, vgpuIommu, writeTemp } from "./cli-support.js";

const run = async (vendor: (typeof VENDORS)[number], scenario: string): Promise<Summary> => (await runStack(smallStack(XEN, vendor, scenario), `${vendor.label}.yaml`)).summary;

function expectClean(s: Summary): void {
  expect([s.result, s.skipped, s.bugs, s.violations, s.errors, s.warnings]).to.deep.equal(["ok", null, [], [], [], []]);
  for (const r of s.rows) expect([r.pinnedAtEnd, r.mappingsLive], r.name).to.deep.equal([0, 0]);
}

const TYPE1 = `no VFIO type1 container on ${XEN}: the type1 invariants do not apply, the leak checks do`;

/**
 * The notes of xen-guest-balloon for one vGPU per VM of the small stack (vm-a: 2 MiB blocks, vm-b: 4 MiB).
 * `held`: pin references and device mappings after the first write; `told`: invalidations the vGPU saw when the
 * guest gave the block back; `stale`: device addresses its tables still use that were unmapped then; `after`:
 * device mappings, addresses visible and unmapped addresses once the entries are written again.
 */
function guestBalloonNotes(f: { refs: number; maps: number; told: number; visible: number; stale: number; after: [number, number, number] }): string[] {
  const per = (g: string, vm: string, pages: number): string[] => [
    `${vm}: the guest gives balloon block 0 back (XENMEM_decrease_reservation), no dmaUnmap: ${pages} pages`,
    `${vm}: write protection of 4 frames ended with their P2M entries; told: ${g}`,
    `${g}: pin references in the block ${f.refs} -> 0, device mappings ${f.maps} -> 0, invalidations told ${f.told}; ${f.visible} device addresses visible, ${f.stale} unmapped`,
  ];
  return [
    `gpu-a: 64 entries point into balloon block 0 of vm-a: ${f.refs} pin references, ${f.maps} device mappings, 4 frames write-protected`,
    `gpu-b: 64 entries point into balloon block 0 of vm-b: ${f.refs} pin references, ${f.maps} device mappings, 4 frames write-protected`,
    ...per("gpu-a", "vm-a", 512),
    ...per("gpu-b", "vm-b", 1024),
    "vm-a: the guest repopulates balloon block 0 (XENMEM_populate_physmap): ok",
    "vm-b: the guest repopulates balloon block 0 (XENMEM_populate_physmap): ok",
    `gpu-a: entries written again: ${f.after[0]} device mappings, ${f.after[1]} device addresses visible, ${f.after[2]} unmapped`,
    `gpu-b: entries written again: ${f.after[0]} device mappings, ${f.after[1]} device addresses visible, ${f.after[2]} unmapped`,
    TYPE1,
  ];
}

describe("vgpu-iommu on Xen: the adapter's scenario operations", function () {
  this.timeout(120_000);

  it("list: the Xen adapter offers the guest's own balloon and its scenario, which runs on Xen with every vendor that maps", async () => {
    const r = await vgpuIommu(["list", "--json"]);
    expect(r.status).to.equal(0);
    const out = JSON.parse(r.stdout) as { plugins: { package: string; hypervisorOps: string[]; scenarios: string[] }[]; scenarios: { name: string; from: string; runsOn: string[] }[] };
    const xen = out.plugins.find((p) => p.package === XEN)!;
    expect([xen.hypervisorOps, xen.scenarios]).to.deep.equal([["decreaseReservation", "populatePhysmap"], ["xen-guest-balloon"]]);
    const s = out.scenarios.find((x) => x.name === "xen-guest-balloon")!;
    expect(s.from).to.equal(XEN);
    expect(s.runsOn).to.include.members([XEN, "@vgpu-iommu/plugin-mock-gpu", "@vgpu-iommu/plugin-gvt", "@vgpu-iommu/plugin-nvidia"]).and.not.include("@vgpu-iommu/adapter-kvm");
  });

  describe("xen-guest-balloon: the guest gives pinned, mapped and write-protected frames back by itself", () => {
    it("mock GPU: told of the protection it lost, it drops its entries there itself; the rewrite maps afresh", async () => {
      const s = await run(VENDORS[0]!, "xen-guest-balloon");
      expectClean(s);
      expect(s.notes).to.deep.equal(guestBalloonNotes({ refs: 64, maps: 64, told: 1, visible: 0, stale: 0, after: [64, 64, 0] }));
      expect(s.rows.find((r) => r.name === "gpu-a")).to.include({ pagesPinned: 128, invalidations: 1 });
    });

    it("GVT-g: the P2M change revokes its 64 translations; its tables keep the addresses, and the rewrite of the same entries does not translate again", async () => {
      const s = await run(VENDORS[1]!, "xen-guest-balloon");
      expectClean(s);
      expect(s.notes).to.deep.equal(guestBalloonNotes({ refs: 64, maps: 64, told: 2, visible: 64, stale: 64, after: [0, 64, 64] }));
      expect(s.rows.find((r) => r.name === "gpu-a")).to.include({ pagesPinned: 64, invalidations: 2 });
    });

    it("NVIDIA (mdev): one 64-page translation revoked, its addresses stale until the rewrite translates them again", async () => {
      const s = await run(VENDORS[2]!, "xen-guest-balloon");
      expectClean(s);
      expect(s.notes).to.deep.equal(guestBalloonNotes({ refs: 64, maps: 1, told: 2, visible: 64, stale: 64, after: [1, 64, 0] }));
    });

    it("NVIDIA (SR-IOV VF): nothing pinned or mapped, only the protection ends", async () => {
      const s = await run(VENDORS[3]!, "xen-guest-balloon");
      expectClean(s);
      expect(s.notes).to.deep.equal(guestBalloonNotes({ refs: 0, maps: 0, told: 1, visible: 0, stale: 0, after: [0, 0, 0] }));
    });

    it("through the command: exit 0 and the same result", async () => {
      const file = writeTemp("xen-guest-balloon.yaml", smallStack(XEN, VENDORS[0]!, "xen-guest-balloon", { pages: 8, protect: 2 }));
      const r = await vgpuIommu(["run", file, "--json", "--no-progress"]);
      expect(r.status).to.equal(0);
      const s = JSON.parse(r.stdout) as Summary;
      expectClean(s);
      expect(s.params).to.deep.equal({ pages: 8, protect: 2 });
      expect(s.notes.filter((n) => n.includes("write protection"))).to.deep.equal(["vm-a: write protection of 2 frames ended with their P2M entries; told: gpu-a", "vm-b: write protection of 2 frames ended with their P2M entries; told: gpu-b"]);
    });
  });

  it("memslot-churn: Xen has no memslot to delete or move, so those steps say not supported; write protection outside guest RAM is -EINVAL", async () => {
    const s = await run(VENDORS[0]!, "memslot-churn");
    expectClean(s);
    expect(s.notes).to.deep.equal([
      `vm-a: recreating a memslot: not supported by ${XEN}`,
      `vm-b: recreating a memslot: not supported by ${XEN}`,
      `vm-a: moving a memslot: not supported by ${XEN}`,
      `vm-b: moving a memslot: not supported by ${XEN}`,
      "gpu-a: write-protecting a frame in no memslot: -EINVAL",
      "gpu-b: write-protecting a frame in no memslot: -EINVAL",
      TYPE1,
    ]);
  });
});
