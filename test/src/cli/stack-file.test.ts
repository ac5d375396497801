/**
 * Stack files: YAML or JSON, checked against the schema and against what the
 * plugins declare. An invalid file gets one line per problem naming the path
 * inside the file (with its line and column), the bad value and what is
 * allowed, exit status 2, and nothing runs (no trace or report is written).
 */
import { expect } from "chai";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_STACK_YAML, StackError, checkStack, formatIssue, loadStack, type StackIssue } from "@vgpu-iommu/core/cli";
import { KVM, VENDORS, smallStack, tempDir, vgpuIommu, writeTemp } from "./cli-support.js";

const issuesOf = async (text: string): Promise<StackIssue[]> => {
  try {
    await checkStack(text, "stack.yaml");
  } catch (e) {
    if (e instanceof StackError) return [...e.issues];
    throw e;
  }
  throw new Error("the stack was accepted");
};

const MOCK = VENDORS[0]!;

describe("vgpu-iommu stack files", () => {
  it("the embedded default is a valid stack: KVM, GVT-g, two vGPUs, 16 GiB guests, memlock at 8 GiB", async () => {
    const r = await checkStack(DEFAULT_STACK_YAML, "(embedded default)");
    expect(r.stack.vms.map((v) => [v.name, v.ramBytes, v.process.memlockBytes])).to.deep.equal([
      ["vm0", 16n << 30n, 8n << 30n],
      ["vm1", 16n << 30n, 8n << 30n],
    ]);
    expect(r.stack.hostRamBytes).to.equal(64n << 30n);
    expect(r.stack.fragmentation).to.equal(0.25);
    expect(r.scenario.name).to.equal("lifecycle");
    expect(r.params).to.deep.equal({ width: 1920, height: 1080, balloonBlocks: 4, pagesPerBlock: 32 });
    expect(r.stack.vgpus.map((g) => [g.name, g.vm, g.vendor, g.type])).to.deep.equal([
      ["vgpu0", "vm0", "@vgpu-iommu/plugin-gvt", "GVTg_V5_4"],
      ["vgpu1", "vm1", "@vgpu-iommu/plugin-gvt", "GVTg_V5_4"],
    ]);
  });

  it("JSON is read as well as YAML, with positions", async () => {
    const json = JSON.stringify({
      name: "json",
      hypervisor: { package: KVM },
      vendors: [{ package: MOCK.package }],
      vms: [{ name: "vm0", memory: 268435456 }],
      vgpus: [{ name: "g0", vm: "vm0", vendor: MOCK.package, type: "mock-small" }],
      scenario: { name: "shutdown", params: { width: 640, height: 480 } },
    });
    const r = await checkStack(json, "stack.json");
    expect(r.stack.vms[0]!.ramBytes).to.equal(256n << 20n);
    expect(r.params).to.deep.equal({ width: 640, height: 480 });
    expect(loadStack(smallStack(KVM, MOCK, "shutdown"), "a.yaml").vms).to.have.length(2);
    const bad = await issuesOf(json.replace("268435456", "-1"));
    expect(bad).to.have.length(1);
    expect(bad[0]).to.include({ path: "/vms/0/memory", value: -1, line: 1 });
  });

  it("schema problems: every one at once, each with its path, line, value and what is allowed", async () => {
    const text = `seed: -3
host: { memory: 16 GB, fragmentation: 2 }
hypervisor: { package: "@vgpu-iommu/adapter-kvm" }
vendors: [ { package: "@vgpu-iommu/plugin-mock-gpu" } ]
vms:
  - { name: vm0, memory: 1GiB, memroy: 2GiB, backing: huge }
vgpus: []
scenario: { name: shutdown }
`;
    const issues = await issuesOf(text);
    expect(issues.map((i) => formatIssue("stack.yaml", i))).to.deep.equal([
      "stack.yaml:1:7: /seed: -3 is not allowed: an integer in 0..2147483647",
      'stack.yaml:2:17: /host/memory: "16 GB" is not allowed: host RAM: a size such as "16GiB", "512MiB" or "4KiB" (units B, KiB, MiB, GiB, TiB), or a number of bytes',
      "stack.yaml:2:39: /host/fragmentation: 2 is not allowed: the fraction of host 2 MiB blocks broken up before the VMs boot, 0 to 0.99",
      'stack.yaml:6:40: /vms/0/memroy: "2GiB" is not allowed: an unknown key "memroy": the keys of /vms/0 are name, process, memory, backing, balloon',
      'stack.yaml:6:55: /vms/0/backing: "huge" is not allowed: one of "scattered-4k", "thp", "hugetlbfs"',
    ]);
  });

  it("a missing key is reported at its parent, as missing", async () => {
    const issues = await issuesOf(`hypervisor: {}\nvendors: [ { package: "@vgpu-iommu/plugin-mock-gpu" } ]\nvms: [ { name: vm0, memory: 1GiB } ]\nvgpus: []\nscenario: { name: shutdown }\n`);
    expect(issues.map((i) => formatIssue("s.yaml", i))).to.deep.equal(['s.yaml:1:13: /hypervisor/package: is missing: a required key: an npm package name such as "@vgpu-iommu/adapter-kvm"']);
  });

  it("cross-references: unknown VM, vendor and process; duplicate names; a process shared by two VMs; sizes that do not divide", async () => {
    const text = `processes: [ { name: q, memlock: 1GiB } ]
hypervisor: { package: "@vgpu-iommu/adapter-kvm" }
vendors: [ { package: "@vgpu-iommu/plugin-mock-gpu" } ]
vms:
  - { name: vm0, memory: 1GiB, process: q, balloon: { size: 5MiB, block: 2MiB } }
  - { name: vm0, memory: 1.5KiB, process: q }
vgpus:
  - { name: g0, vm: vm9, vendor: "@vgpu-iommu/plugin-nvidia", type: x }
scenario: { name: shutdown }
`;
    const issues = await issuesOf(text);
    expect(issues.map((i) => `${i.path} ${JSON.stringify(i.value)}: ${i.allowed}`)).to.deep.equal([
      '/vms/1/name "vm0": a name not used before: /vms/0/name is already "vm0"',
      "/vms/0/balloon/size \"5MiB\": a whole number of balloon blocks of 2MiB",
      '/vms/1/memory "1.5KiB": guest RAM in whole 4 KiB pages',
      '/vms/1/memory "1.5KiB": guest RAM of at least 64MiB',
      "/vms/1/process \"q\": a process no other VM uses: /vms/0 runs in q, and the platform runs one VMM process per VM",
      '/vgpus/0/vm "vm9": the name of an entry of /vms: vm0, vm0',
      '/vgpus/0/vendor "@vgpu-iommu/plugin-nvidia": the package of an entry of /vendors: @vgpu-iommu/plugin-mock-gpu',
    ]);
  });

  it("what only the plugins know: their settings schema, vGPU types, one vGPU per VM, the scenario and its parameters", async () => {
    const gvt = VENDORS[1]!;
    let text = smallStack(KVM, gvt, "boot-framebuffer", { width: 0, depth: 32 }, "{ dmaMode: fast, strict: 1 }");
    let issues = await issuesOf(text);
    expect(issues.map((i) => `${i.path} ${JSON.stringify(i.value)}: ${i.allowed}`)).to.deep.equal([
      '/hypervisor/settings/dmaMode "fast": one of "dma-iommu", "intel-2016", "direct"',
      "/hypervisor/settings/strict 1: strict IOTLB invalidation instead of the flush queue (true or false)",
    ]);
    text = smallStack(KVM, gvt, "boot-framebufer").replace("type: GVTg_V5_8 }\n  - { name: gpu-b, vm: vm-b", "type: GVTg_V9 }\n  - { name: gpu-b, vm: vm-a");
    issues = await issuesOf(text);
    expect(issues.map((i) => `${i.path} ${JSON.stringify(i.value)}: ${i.allowed}`)).to.deep.equal([
      '/vgpus/0/type "GVTg_V9": a type of @vgpu-iommu/plugin-gvt: GVTg_V5_8, GVTg_V5_4, GVTg_V5_2, GVTg_V5_1',
      '/vgpus/1/vm "vm-a": a VM without a vGPU of @vgpu-iommu/plugin-gvt, which allows one per VM: /vgpus/0 is already in vm-a',
      `/scenario/name "boot-framebufer": one of ${["boot-framebuffer", "ring-submission", "pte-churn", "huge-pages", "balloon-while-pinned", "memslot-churn", "vm-reset", "driver-reload", "shutdown", "migration-dirty", "memlock-pressure", "multi-vgpu", "hostile-guest", "races", "sriov-vf", "lifecycle"].join(", ")}`,
    ]);
    issues = await issuesOf(smallStack(KVM, gvt, "boot-framebuffer", { width: 0, depth: 32 }));
    expect(issues.map((i) => `${i.path} ${JSON.stringify(i.value)}: ${i.allowed}`)).to.deep.equal([
      '/scenario/params/depth 32: an unknown key "depth": the keys of /scenario/params are width, height, modeChange',
      "/scenario/params/width 0: scanout width in pixels (an integer in 1..8192)",
    ]);
  });

  it("a package that is not installed, or not the right kind of plugin", async () => {
    const text = smallStack("@vgpu-iommu/plugin-gvt", MOCK, "shutdown").replace('vendors:\n  - package: "@vgpu-iommu/plugin-mock-gpu"', 'vendors:\n  - package: "@vgpu-iommu/plugin-nope"').replaceAll('vendor: "@vgpu-iommu/plugin-mock-gpu"', 'vendor: "@vgpu-iommu/plugin-nope"');
    const issues = await issuesOf(text);
    expect(issues.map((i) => `${i.path}: ${i.allowed.replace(/ \(cannot load.*$/, "")}`)).to.deep.equal([
      "/hypervisor/package: a hypervisor-adapter plugin: @vgpu-iommu/plugin-gvt is a vendor plugin",
      "/vendors/0/package: an installed plugin package",
    ]);
  });

  it("through the command: exit 2, the problems on stderr, nothing run and no trace or report written", async () => {
    const dir = tempDir();
    const file = writeTemp("bad.yaml", smallStack(KVM, MOCK, "shutdown").replace("memory: 256MiB, backing: thp", "memory: 256 MB, backing: thp"));
    const r = await vgpuIommu(["run", file, "--trace", join(dir, "t.json"), "--report", join(dir, "r.html")]);
    expect(r.status).to.equal(2);
    expect(r.stdout).to.equal("");
    expect(r.stderr).to.equal(
      `${file}:13:44: /vms/0/memory: "256 MB" is not allowed: guest RAM: a size such as "16GiB", "512MiB" or "4KiB" (units B, KiB, MiB, GiB, TiB), or a number of bytes\n1 problem in ${file}; nothing was run\n`,
    );
    expect(existsSync(join(dir, "t.json"))).to.equal(false);
    expect(existsSync(join(dir, "r.html"))).to.equal(false);
    const check = await vgpuIommu(["check", file]);
    expect(check.status).to.equal(2);
    const good = await vgpuIommu(["check", writeTemp("good.yaml", smallStack(KVM, MOCK, "races"))]);
    expect(good.status).to.equal(0);
    expect(good.stdout).to.match(/good\.yaml: valid: @vgpu-iommu\/adapter-kvm, @vgpu-iommu\/plugin-mock-gpu; 2 VMs, 2 vGPUs; scenario races \{"rounds":8,"pages":16\}\n$/);
  });

  it("list: the adapters, the vendors with their types and guest operations, and every scenario with what runs it", async () => {
    const r = await vgpuIommu(["list", "--json"]);
    expect(r.status).to.equal(0);
    const out = JSON.parse(r.stdout) as { plugins: { package: string; kind: string; types: string[]; guestOps: string[]; hypervisorOps: string[] }[]; scenarios: { name: string; runsOn: string[] }[] };
    const by = (pkg: string) => out.plugins.find((p) => p.package === pkg)!;
    expect(by(KVM)).to.include({ kind: "hypervisor-adapter" });
    expect(by(KVM).hypervisorOps).to.deep.equal(["recreateMemslot", "moveMemslot"]);
    expect(by("@vgpu-iommu/adapter-xen")).to.include({ kind: "hypervisor-adapter" });
    expect(by("@vgpu-iommu/adapter-xen").hypervisorOps).to.deep.equal(["decreaseReservation", "populatePhysmap"]);
    expect(by(MOCK.package).types).to.deep.equal(["mock-small", "mock-large"]);
    expect(by(MOCK.package).guestOps).to.deep.equal(["map", "unmap", "mapHalves", "visibleAddresses"]);
    expect(by("@vgpu-iommu/plugin-gvt").guestOps).to.include.members(["submit", "mapHuge", "setPlane"]);
    // The sixteen built-ins and the Xen adapter's xen-guest-balloon.
    expect(out.scenarios).to.have.length(17);
    expect(out.scenarios.find((s) => s.name === "huge-pages")!.runsOn).to.include("@vgpu-iommu/plugin-gvt").and.not.include(MOCK.package);
    expect(out.scenarios.find((s) => s.name === "migration-dirty")!.runsOn).to.include("@vgpu-iommu/plugin-nvidia").and.not.include("@vgpu-iommu/plugin-gvt");
    const text = await vgpuIommu(["list"]);
    expect(text.stdout).to.match(/^Hypervisor adapters:\n {2}@vgpu-iommu\/adapter-kvm/);
    expect(text.stdout).to.include("  memslot-churn          Memslot churn (vendors.md 5.6)\n");
  });
});
