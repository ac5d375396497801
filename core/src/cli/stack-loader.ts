/**
 * Loading a stack file: YAML or JSON text (JSON is read by the YAML parser,
 * which keeps positions for both) -> schema check -> cross-reference checks ->
 * a normalized `Stack` with sizes in bytes and defaults filled in.
 *
 * Every problem found is reported at once, as a StackError whose issues name
 * the path inside the file, its line and column, the bad value and what is
 * allowed. Nothing is composed or run from a file with an issue.
 */
import { LineCounter, parseDocument, isNode, type Document } from "yaml";
import type { Capability } from "../host/process.js";
import type { BackingKind } from "../host/memory-object.js";
import { checkSchema } from "./schema-check.js";
import { StackError, type StackIssue } from "./stack-error.js";
import { STACK_SCHEMA, type StackFile } from "./stack-schema.js";
import { formatSize, parseSize } from "./sizes.js";

const PAGE = 4096n;
const MiB = 1n << 20n;

export interface StackProcess {
  readonly name: string;
  /** undefined: unlimited. */
  readonly memlockBytes: bigint | undefined;
  readonly capabilities: readonly Capability[];
}

export interface StackVm {
  readonly name: string;
  readonly ramBytes: bigint;
  readonly backing: BackingKind;
  readonly process: StackProcess;
  readonly balloon: { readonly bytes: bigint; readonly blockBytes: bigint } | undefined;
}

export interface StackPlugin {
  readonly package: string;
  /** The export holding the manifest ("plugin" unless the stack names another). */
  readonly export: string;
  readonly settings: Readonly<Record<string, unknown>>;
}

export interface Stack {
  /** Where the stack came from: a path, or "(embedded default)". */
  readonly source: string;
  readonly name: string;
  readonly seed: number;
  readonly hostRamBytes: bigint;
  readonly fragmentation: number;
  readonly hypervisor: StackPlugin;
  readonly iommu: { readonly backend: "vfio-type1v2"; readonly dmaEntryLimit: number | undefined; readonly disableHugepages: boolean | undefined; readonly allowUnsafeInterrupts: boolean | undefined };
  readonly vendors: readonly StackPlugin[];
  readonly plugins: readonly string[];
  readonly vms: readonly StackVm[];
  readonly vgpus: readonly { readonly name: string; readonly vm: string; readonly vendor: string; readonly type: string }[];
  readonly scenario: { readonly name: string; readonly params: Readonly<Record<string, unknown>> };
  /** Finds the line and column of a JSON pointer in the file's text. */
  readonly locate: (path: string) => { line: number; column: number } | undefined;
}

export const DEFAULT_HOST_RAM = 64n << 30n;

/** Parses and checks a stack file's text; throws StackError listing every issue. */
export function loadStack(text: string, source: string): Stack {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const locate = (path: string): { line: number; column: number } | undefined => locateIn(doc, lines, path);
  if (doc.errors.length > 0) {
    throw new StackError(
      source,
      doc.errors.map((e) => {
        const pos = lines.linePos(e.pos[0]);
        return { path: "", value: text.slice(e.pos[0], Math.min(e.pos[1], e.pos[0] + 40)), allowed: `valid YAML or JSON (${e.code}: ${e.message.split("\n")[0]!})`, line: pos.line, column: pos.col };
      }),
    );
  }
  const data: unknown = doc.toJS({ maxAliasCount: 100 });
  const schemaIssues = checkSchema(STACK_SCHEMA, data);
  if (schemaIssues.length > 0) throw new StackError(source, withPositions(schemaIssues, locate));
  const file = data as StackFile;
  const issues: StackIssue[] = [];
  const stack = normalize(file, source, issues, locate);
  if (issues.length > 0) throw new StackError(source, withPositions(issues, locate));
  return stack;
}

export function withPositions(issues: readonly StackIssue[], locate: Stack["locate"]): StackIssue[] {
  return issues.map((i) => {
    const at = locate(i.path);
    return at === undefined ? i : { ...i, line: at.line, column: at.column };
  });
}

function locateIn(doc: Document, lines: LineCounter, path: string): { line: number; column: number } | undefined {
  const segments = path === "" ? [] : path.slice(1).split("/").map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
  // A missing key is reported where its parent is.
  for (let n = segments.length; n >= 0; n--) {
    const keys = segments.slice(0, n).map((s) => (/^(0|[1-9][0-9]*)$/.test(s) ? Number(s) : s));
    const node = n === 0 ? doc.contents : doc.getIn(keys, true);
    if (isNode(node) && node.range !== undefined && node.range !== null) {
      const pos = lines.linePos(node.range[0]);
      return { line: pos.line, column: pos.col };
    }
  }
  return undefined;
}

function normalize(file: StackFile, source: string, issues: StackIssue[], locate: Stack["locate"]): Stack {
  const size = (path: string, v: string | number, what: string, opts: { page?: boolean; min?: bigint } = {}): bigint => {
    const bytes = parseSize(v);
    if (bytes === undefined) {
      issues.push({ path, value: v, allowed: `${what} in whole bytes` });
      return 0n;
    }
    if (opts.page === true && bytes % PAGE !== 0n) issues.push({ path, value: v, allowed: `${what} in whole 4 KiB pages` });
    if (opts.min !== undefined && bytes < opts.min) issues.push({ path, value: v, allowed: `${what} of at least ${formatSize(opts.min)}` });
    return bytes;
  };
  const unique = (list: readonly { name: string }[], where: string): void => {
    const first = new Map<string, number>();
    list.forEach((x, i) => {
      const j = first.get(x.name);
      if (j === undefined) first.set(x.name, i);
      else issues.push({ path: `/${where}/${i}/name`, value: x.name, allowed: `a name not used before: /${where}/${j}/name is already ${JSON.stringify(x.name)}` });
    });
  };

  const hostRamBytes = file.host?.memory === undefined ? DEFAULT_HOST_RAM : size("/host/memory", file.host.memory, "host RAM", { page: true, min: 16n * MiB });
  if (hostRamBytes > 0xf000_0000n * PAGE) issues.push({ path: "/host/memory", value: file.host?.memory, allowed: "host RAM below 960TiB (the model's frame numbers are 32-bit)" });

  const processes = file.processes ?? [];
  unique(processes, "processes");
  unique(file.vms, "vms");
  unique(file.vgpus, "vgpus");
  const vendorPackages = file.vendors.map((v) => v.package);
  vendorPackages.forEach((p, i) => {
    if (vendorPackages.indexOf(p) !== i) issues.push({ path: `/vendors/${i}/package`, value: p, allowed: `a vendor not listed before: it is already /vendors/${vendorPackages.indexOf(p)}` });
  });

  const procByName = new Map<string, StackProcess>();
  processes.forEach((p, i) => {
    const memlockBytes = p.memlock === undefined || p.memlock === "unlimited" ? undefined : size(`/processes/${i}/memlock`, p.memlock, "RLIMIT_MEMLOCK");
    procByName.set(p.name, { name: p.name, memlockBytes, capabilities: [...(p.capabilities ?? [])] });
  });
  const usedBy = new Map<string, number>();
  const vms: StackVm[] = file.vms.map((vm, i) => {
    const ramBytes = size(`/vms/${i}/memory`, vm.memory, "guest RAM", { page: true, min: 64n * MiB });
    let process: StackProcess = { name: `qemu-${vm.name}`, memlockBytes: undefined, capabilities: [] };
    if (vm.process !== undefined) {
      const p = procByName.get(vm.process);
      if (p === undefined) {
        issues.push({ path: `/vms/${i}/process`, value: vm.process, allowed: processes.length === 0 ? "the name of an entry of /processes, which has none" : `the name of an entry of /processes: ${processes.map((x) => x.name).join(", ")}` });
      } else {
        const other = usedBy.get(vm.process);
        if (other !== undefined) issues.push({ path: `/vms/${i}/process`, value: vm.process, allowed: `a process no other VM uses: /vms/${other} runs in ${vm.process}, and the platform runs one VMM process per VM` });
        usedBy.set(vm.process, i);
        process = p;
      }
    }
    let balloon: StackVm["balloon"];
    if (vm.balloon !== undefined) {
      const bytes = size(`/vms/${i}/balloon/size`, vm.balloon.size, "balloon size", { page: true, min: PAGE });
      const blockBytes = size(`/vms/${i}/balloon/block`, vm.balloon.block, "balloon block", { page: true, min: PAGE });
      if (blockBytes > 0n && bytes % blockBytes !== 0n) issues.push({ path: `/vms/${i}/balloon/size`, value: vm.balloon.size, allowed: `a whole number of balloon blocks of ${formatSize(blockBytes)}` });
      balloon = { bytes, blockBytes };
    }
    return { name: vm.name, ramBytes, backing: vm.backing ?? "scattered-4k", process, balloon };
  });

  const vmNames = file.vms.map((v) => v.name);
  file.vgpus.forEach((g, i) => {
    if (!vmNames.includes(g.vm)) issues.push({ path: `/vgpus/${i}/vm`, value: g.vm, allowed: `the name of an entry of /vms: ${vmNames.join(", ")}` });
    if (!vendorPackages.includes(g.vendor)) issues.push({ path: `/vgpus/${i}/vendor`, value: g.vendor, allowed: `the package of an entry of /vendors: ${vendorPackages.join(", ")}` });
  });

  return {
    source,
    name: file.name ?? source,
    seed: file.seed ?? 1,
    hostRamBytes,
    fragmentation: file.host?.fragmentation ?? 0,
    hypervisor: { package: file.hypervisor.package, export: "plugin", settings: file.hypervisor.settings ?? {} },
    iommu: {
      backend: file.iommu?.backend ?? "vfio-type1v2",
      dmaEntryLimit: file.iommu?.params?.dmaEntryLimit,
      disableHugepages: file.iommu?.params?.disableHugepages,
      allowUnsafeInterrupts: file.iommu?.params?.allowUnsafeInterrupts,
    },
    vendors: file.vendors.map((v) => ({ package: v.package, export: v.export ?? "plugin", settings: v.settings ?? {} })),
    plugins: [...(file.plugins ?? [])],
    vms,
    vgpus: file.vgpus.map((g) => ({ ...g })),
    scenario: { name: file.scenario.name, params: { ...(file.scenario.params ?? {}) } },
    locate,
  };
}
