/**
 * What the command's suites share: small stacks per hypervisor and vendor,
 * and running `vgpu-iommu` as a child process (the way the README runs it).
 */
import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadPlugin } from "@vgpu-iommu/core";
import { IVgpuPlatform } from "@vgpu-iommu/core";

export const MAIN = fileURLToPath(new URL("../../../core/dist/cli/main.js", import.meta.url));
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));

export interface CommandResult {
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `node core/dist/cli/main.js ...args`; resolves with its exit status and output whatever the status. */
export function vgpuIommu(args: readonly string[], cwd = REPO): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { cwd, maxBuffer: 64 << 20, env: { ...process.env, NO_COLOR: "1" } }, (err, stdout, stderr) => {
      const status = err === null ? 0 : typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : 1;
      resolve({ status, stdout, stderr });
    });
  });
}

/** Runs `fn` over `items`, at most `width` at a time, keeping the order of results. */
export async function pool<T, R>(items: readonly T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
  return out;
}

export const tempDir = (): string => mkdtempSync(join(tmpdir(), "vgpu-iommu-cli-"));

export function writeTemp(name: string, text: string): string {
  const file = join(tempDir(), name);
  writeFileSync(file, text);
  return file;
}

export interface VendorUnderTest {
  /** A label for test titles. */
  readonly label: string;
  readonly package: string;
  readonly export?: string;
  readonly type: string;
}

export const KVM = "@vgpu-iommu/adapter-kvm";
export const XEN = "@vgpu-iommu/adapter-xen";

export const VENDORS: readonly VendorUnderTest[] = [
  { label: "mock GPU", package: "@vgpu-iommu/plugin-mock-gpu", type: "mock-small" },
  { label: "GVT-g", package: "@vgpu-iommu/plugin-gvt", type: "GVTg_V5_8" },
  { label: "NVIDIA (mdev)", package: "@vgpu-iommu/plugin-nvidia", type: "NV-2Q" },
  { label: "NVIDIA (SR-IOV VF)", package: "@vgpu-iommu/plugin-nvidia", export: "vfPlugin", type: "NV-2Q" },
];

/** Hypervisor adapters whose package exports a plugin that provides a platform (the Xen adapter once it does). */
export async function platformAdapters(): Promise<string[]> {
  const out: string[] = [];
  for (const pkg of [KVM, XEN]) {
    try {
      if ((await loadPlugin(pkg)).provides.includes(IVgpuPlatform)) out.push(pkg);
    } catch {
      // Not (yet) a platform plugin.
    }
  }
  return out;
}

/**
 * A small stack: two 256 MiB guests with balloon memory, one with an 64 MiB
 * memlock limit and THP, the other unlimited with CAP_IPC_LOCK; one vGPU each.
 */
export function smallStack(hypervisor: string, v: VendorUnderTest, scenario: string, params: Record<string, unknown> = {}, settings = "{ }"): string {
  return `name: ${hypervisor.split("/")[1]}-${v.label.replace(/[^a-zA-Z0-9]+/g, "-").toLowerCase()}
seed: 3
host: { memory: 4GiB, fragmentation: 0.1 }
processes:
  - { name: qemu-a, memlock: 64MiB }
  - { name: qemu-b, memlock: unlimited, capabilities: [CAP_IPC_LOCK] }
hypervisor:
  package: "${hypervisor}"
  settings: ${settings}
vendors:
  - package: "${v.package}"${v.export === undefined ? "" : `\n    export: ${v.export}`}
vms:
  - { name: vm-a, process: qemu-a, memory: 256MiB, backing: thp, balloon: { size: 64MiB, block: 2MiB } }
  - { name: vm-b, process: qemu-b, memory: 256MiB, balloon: { size: 32MiB, block: 4MiB } }
vgpus:
  - { name: gpu-a, vm: vm-a, vendor: "${v.package}", type: ${v.type} }
  - { name: gpu-b, vm: vm-b, vendor: "${v.package}", type: ${v.type} }
scenario:
  name: ${scenario}
  params: ${JSON.stringify(params)}
`;
}
