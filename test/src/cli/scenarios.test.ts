/**
 * Every built-in scenario through the command: on the embedded default stack
 * (a child process per scenario, `vgpu-iommu run --scenario NAME --json`), and
 * on a small stack per hypervisor and vendor (through `runStack`, the
 * function the command calls), checking each summary: the result, what was
 * skipped and why, no BUG, no violation, nothing left pinned, charged or
 * mapped, and the figures that follow from the scenario.
 */
import { expect } from "chai";
import { BUILTIN_SCENARIOS, runStack, type Summary, type SummaryRow } from "@vgpu-iommu/core/cli";
import { KVM, VENDORS, platformAdapters, pool, smallStack, vgpuIommu, writeTemp, type VendorUnderTest } from "./cli-support.js";

const NAMES = BUILTIN_SCENARIOS.map((s) => s.name);
const MOCK = "@vgpu-iommu/plugin-mock-gpu";
const GVT = "@vgpu-iommu/plugin-gvt";
const NVIDIA = "@vgpu-iommu/plugin-nvidia";

const row = (s: Summary, name: string): SummaryRow => {
  const r = s.rows.find((x) => x.name === name);
  if (r === undefined) throw new Error(`no row ${name} in ${s.rows.map((x) => x.name).join(", ")}`);
  return r;
};

/** What every run must end with, whatever the scenario: no BUG, no violation, no error, nothing held. */
function expectClean(s: Summary): void {
  expect(s.bugs, "BUGs").to.deep.equal([]);
  expect(s.violations, "violations").to.deep.equal([]);
  expect(s.errors, "errors").to.deep.equal([]);
  expect(s.warnings, "WARNs").to.deep.equal([]);
  for (const r of s.rows) {
    expect(r.pinnedAtEnd, `${r.name} pinned at end`).to.equal(0);
    expect(r.mappingsLive, `${r.name} mappings live at end`).to.equal(0);
    if (r.kind === "vm") expect(r.lockedVmAtEnd, `${r.name} locked_vm at end`).to.equal(0);
  }
  expect(s.phases.every((p) => p.status === "ok" || p.status === "skipped"), JSON.stringify(s.phases)).to.equal(true);
}

/** Which scenarios each vendor cannot run, and the line the run gives. */
const SKIPS: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  "mock GPU": {
    "ring-submission": `not supported by ${MOCK}: its guest driver has no submit`,
    "huge-pages": `not supported by ${MOCK}: its guest driver has no mapHuge`,
    "migration-dirty": `not supported by ${MOCK}: it does not declare migration`,
    "sriov-vf": `not supported by ${MOCK}: it does not declare ownRequesterId`,
  },
  "GVT-g": {
    "migration-dirty": `not supported by ${GVT}: it does not declare migration`,
    "sriov-vf": `not supported by ${GVT}: it does not declare ownRequesterId`,
  },
  "NVIDIA (mdev)": {
    "ring-submission": `not supported by ${NVIDIA}: its guest driver has no submit`,
    "huge-pages": `not supported by ${NVIDIA}: its guest driver has no mapHuge`,
    "sriov-vf": `not supported by ${NVIDIA}: it does not declare ownRequesterId`,
  },
  "NVIDIA (SR-IOV VF)": {
    "ring-submission": `not supported by ${NVIDIA}: its guest driver has no submit`,
    "huge-pages": `not supported by ${NVIDIA}: its guest driver has no mapHuge`,
  },
};

describe("vgpu-iommu run: every built-in scenario", function () {
  this.timeout(240_000);

  it("has the fifteen scenarios of vendors.md section 5, in order, and the default tour", () => {
    expect(BUILTIN_SCENARIOS.filter((s) => s.item !== undefined).map((s) => s.item)).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    expect(NAMES).to.deep.equal([
      "boot-framebuffer",
      "ring-submission",
      "pte-churn",
      "huge-pages",
      "balloon-while-pinned",
      "memslot-churn",
      "vm-reset",
      "driver-reload",
      "shutdown",
      "migration-dirty",
      "memlock-pressure",
      "multi-vgpu",
      "hostile-guest",
      "races",
      "sriov-vf",
      "lifecycle",
    ]);
  });

  describe("on the embedded default stack, through the command", () => {
    const summaries = new Map<string, Summary>();
    const statuses = new Map<string, number>();

    before(async function () {
      this.timeout(240_000);
      const results = await pool(NAMES, 2, (name) => vgpuIommu(["run", "--scenario", name, "--json", "--no-progress"]));
      results.forEach((r, i) => {
        statuses.set(NAMES[i]!, r.status);
        summaries.set(NAMES[i]!, JSON.parse(r.stdout) as Summary);
      });
    });

    for (const name of NAMES) {
      it(`${name}: exit 0, clean summary, two VMs and two vGPUs of the default stack`, () => {
        const s = summaries.get(name)!;
        expect(statuses.get(name)).to.equal(0);
        expect(s.stack).to.equal("default");
        expect(s.scenario).to.equal(name);
        const rows = s.rows.map((r) => `${r.kind}:${r.name}`).filter((r) => !r.includes("extra"));
        expect(s.vendors).to.deep.equal([GVT]);
        expect(rows).to.deep.equal(["vm:vm0", "vgpu:vgpu0", "vm:vm1", "vgpu:vgpu1", "host:host"]);
        expect(row(s, "vm0").memlockLimit).to.equal(name === "memlock-pressure" ? 256 : 2_097_152);
        expectClean(s);
        const skip = SKIPS["GVT-g"]![name];
        expect(s.result).to.equal(skip === undefined ? "ok" : "skipped");
        expect(s.skipped).to.equal(skip ?? null);
      });
    }

    it("boot-framebuffer: 2,025 GGTT entries pinned and mapped one page each, a dma-buf, then 900 entries for 1280x720", () => {
      const s = summaries.get("boot-framebuffer")!;
      for (const g of ["vgpu0", "vgpu1"]) {
        const r = row(s, g);
        // The new mode's entries are written before the old ones are cleared; frames both use are pinned once.
        expect(r.pagesPinned).to.be.within(2025 + 900 - 16, 2025 + 900);
        expect(r.peakPinned).to.equal(r.pagesPinned);
        expect(r.mappingsMade).to.equal(r.pagesPinned);
      }
      expect(s.notes).to.include.members([
        "vgpu0: 2025 entries written for 1920x1080: 2025 pages pinned, 2025 device mappings",
        "vgpu0: re-query with the same mode reuses dma-buf 1",
        "vgpu0: mode change: 900 new entries, pin references 2025 -> 900",
      ]);
    });

    it("balloon-while-pinned: 4 blocks of 64 pinned pages go with one dmaUnmap per block, and come back", () => {
      const s = summaries.get("balloon-while-pinned")!;
      expect(row(s, "vgpu0")).to.include({ pagesPinned: 512, peakPinned: 256, invalidations: 4 });
      expect(s.notes).to.include("vm0: balloon out of 4 blocks: 8388608 bytes removed");
    });

    it("memlock-pressure: pins stop at the lowered RLIMIT_MEMLOCK of 256 pages, the rest are scratch", () => {
      const s = summaries.get("memlock-pressure")!;
      expect(row(s, "vm0")).to.include({ lockedVmPeak: 256, memlockLimit: 256, pinsRefused: 256 });
      expect(row(s, "vgpu1")).to.include({ pagesPinned: 256, pinsRefused: 256 });
    });

    it("memslot-churn: recreating the slot revokes the 64 translations; KVM refuses a move with a vGPU attached", () => {
      const s = summaries.get("memslot-churn")!;
      expect(s.notes).to.include.members([
        "vm0: memslot deleted and recreated: ok; vgpu0 pin references 64 -> 0, mappings 64 -> 0",
        "vm0: memslot move by 1 TiB with vgpu0 attached: -EINVAL",
        "vgpu0: write-protecting a frame in no memslot: -EINVAL",
      ]);
    });

    it("multi-vgpu: GVT takes one vGPU per VM, so a third comes in a VM of its own; none reaches another's addresses", () => {
      const s = summaries.get("multi-vgpu")!;
      expect(s.rows.map((r) => r.name)).to.deep.equal(["vm0", "vgpu0", "vm1", "vgpu1", "extra-vm1", "extra-vgpu2", "host"]);
      expect(s.notes).to.include.members(["extra-vgpu2: added to extra-vm1 (one per VM)", "extra-vgpu2: 256 device addresses visible, 0 of another vGPU, 0 unmapped"]);
    });

    it("races: entries written inside dmaUnmap after the vendor's sweep make type1 call it again", () => {
      const s = summaries.get("races")!;
      const line = s.notes.find((n) => n.startsWith("vgpu0: 8 rounds: "))!;
      expect(line).to.match(/inside dmaUnmap, after the vendor's sweep: pinned, 2 dmaUnmap calls/);
    });

    it("huge-pages: 2M entries on THP-backed guests, 64K split into 16, 1G refused", () => {
      const s = summaries.get("huge-pages")!;
      expect(s.notes).to.include("vgpu0: a 1G entry: EINVAL (gvt-1g-entry-refused)");
      expect(s.notes.filter((n) => n.startsWith("vgpu0: 1 64K entries on thp RAM: 16 pages pinned"))).to.have.length(1);
    });
  });

  describe("the default stack's own scenario (npm start)", () => {
    it("lifecycle: 2,025 scanout pages and 128 balloon pages per vGPU, charged to each VMM, all released", async () => {
      const r = await vgpuIommu(["run", "--json", "--no-progress"]);
      expect(r.status).to.equal(0);
      const s = JSON.parse(r.stdout) as Summary;
      expect(s).to.include({ scenario: "lifecycle", result: "ok", seed: 1 });
      expect(s.params).to.deep.equal({ width: 1920, height: 1080, balloonBlocks: 4, pagesPerBlock: 32 });
      expectClean(s);
      expect(row(s, "vm0")).to.include({ pagesPinned: 2153, lockedVmPeak: 2153, memlockLimit: 2_097_152, mappingsMade: 2153, invalidations: 4 });
      expect(row(s, "vgpu1")).to.include({ pagesPinned: 2153, peakPinned: 2153, mappingsMade: 2153, iovaBytesPeak: 2153 * 4096 });
      expect(row(s, "host")).to.include({ pagesPinned: 4306, peakPinned: 4306, pinnedAtEnd: 0 });
      expect(s.phases.map((p) => p.name)).to.deep.equal(["boot", "boot: scanout mapped", "display: dma-buf exported", "balloon memory pinned", "balloon out", "balloon in", "migration round", "reset (FLR)", "teardown"]);
      // FLR leaves the pages the exported dma-buf holds; the VM's shutdown releases them.
      expect(s.notes).to.include("vgpu0: reset (flr): pin references 2025 -> 2025, device mappings 2025 -> 2025");
    });
  });

  for (const vendor of VENDORS) {
    describe(`on a small stack per hypervisor: ${vendor.label}`, () => {
      let adapters: string[] = [];
      before(async () => {
        adapters = await platformAdapters();
      });

      it("runs on both hypervisor adapters", () => {
        expect(adapters).to.deep.equal([KVM, "@vgpu-iommu/adapter-xen"]);
      });

      for (const name of NAMES) {
        it(`${name}`, async () => {
          for (const hv of adapters) {
            const s = (await runStack(smallStack(hv, vendor, name), `${vendor.label}.yaml`)).summary;
            expectClean(s);
            const skip = SKIPS[vendor.label]![name];
            expect(s.skipped, `${hv}: ${name}`).to.equal(skip ?? null);
            expect(s.result).to.equal(skip === undefined ? "ok" : "skipped");
            expectFigures(hv, vendor, name, s);
          }
        });
      }
    });
  }

  it("a vendor that ignores dmaUnmap: type1 retries ten times, then BUG, and the command exits 1", async () => {
    const file = writeTemp("bug.yaml", smallStack(KVM, VENDORS[0]!, "balloon-while-pinned", { blocks: 1, pagesPerBlock: 8, vendorIgnoresUnmap: true }));
    const r = await vgpuIommu(["run", file, "--json", "--no-progress"]);
    expect(r.status).to.equal(1);
    const s = JSON.parse(r.stdout) as Summary;
    expect(s.result).to.equal("bug");
    expect(s.bugs).to.deep.equal(["host: BUG at vfio_dma_do_unmap: vendor driver did not unpin after dma_unmap"]);
    expect(row(s, "gpu-a").invalidations).to.equal(11);
    expect(row(s, "host").bugs).to.equal(1);
    expect(s.phases.map((p) => `${p.name}:${p.status}`)).to.deep.equal(["boot:ok", "pin into balloon memory:ok", "balloon out:crashed"]);
  });
});

/** Figures that follow from each scenario on the small stacks, per vendor. */
function expectFigures(hv: string, vendor: VendorUnderTest, name: string, s: Summary): void {
  const a = row(s, "gpu-a");
  const pins = vendor.export !== "vfPlugin";
  if (name === "boot-framebuffer") {
    // 2,025 entries for 1920x1080 (the mock: its 512-entry table), then 900 for 1280x720.
    // Frames of the new mode that the old one used are already pinned: a few fewer new pins.
    const first = vendor.label === "mock GPU" ? 512 : 2025;
    const second = Math.min(first, 900);
    expect(a.pagesPinned).to.be.within(pins ? first + second - 64 : 0, pins ? first + second : 0);
    expect(a.peakPinned).to.be.within(pins ? first : 0, pins ? first + second : 0);
    expect(a.mappingsMade).to.equal(vendor.package === NVIDIA ? (pins ? 4 + 2 : 0) : a.pagesPinned);
  }
  if (name === "memlock-pressure" && pins && hv === KVM) {
    // type1 charges the VMM: pins stop at the limit; vm-b has CAP_IPC_LOCK, so nothing is refused there.
    expect(row(s, "vm-a")).to.include({ lockedVmPeak: 256, memlockLimit: 256 });
    expect(row(s, "gpu-b")).to.include({ pinsRefused: 0, pagesPinned: 512 });
    expect(row(s, "vm-b")).to.include({ lockedVmPeak: 512, memlockLimit: 256 });
  }
  if (name === "memlock-pressure" && hv !== KVM) {
    // Xen pins through P2M references and charges no locked_vm.
    expect(row(s, "vm-a")).to.include({ lockedVmPeak: 0, memlockLimit: 256 });
    expect(s.notes).to.include(`no VFIO type1 container on ${hv}: the type1 invariants do not apply, the leak checks do`);
  }
  if (name === "migration-dirty" && vendor.package === NVIDIA && pins) {
    expect(s.notes.filter((n) => /round \d: 2025 dirty pages, 2025 still pinned/.test(n))).to.have.length(6);
  }
  if (name === "sriov-vf" && !pins) {
    expect(s.notes.some((n) => /NV-2Q: \d+ more created, then ENOSPC/.test(n))).to.equal(true);
    expect(a.pagesPinned).to.equal(0);
  }
  if (name === "huge-pages" && vendor.package === GVT) {
    expect(s.notes).to.include("gpu-a: a 1G entry: EINVAL (gvt-1g-entry-refused)");
    expect(s.notes).to.include("gpu-b: 4 2M entries on scattered-4k RAM: 2048 pages pinned, 2048 device mappings");
  }
  if (name === "ring-submission" && vendor.package === GVT) {
    expect(s.notes).to.include("gpu-a: workload 1 completed: 64 leaves shadowed, 64 pages pinned, 4 table pages write-protected, 0 bytes copied");
  }
  if (name === "vm-reset" && vendor.package === GVT) {
    // FLR drops every GGTT pin but the exported dma-buf's.
    expect(s.notes).to.include("gpu-a: reset (flr): pin references 2025 -> 2025, device mappings 2025 -> 2025");
  }
}
