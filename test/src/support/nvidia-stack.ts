/**
 * The NVIDIA-like vendor on a platform (KVM unless one is given) in one call:
 * a host, its parent GPU, a VM with guest RAM and a balloon, and open vGPUs
 * added the way the VMM adds them. What the nvidia suites start from:
 *
 *   const s = await nvidiaStack();
 *   s.vgpus[0].translateGfns([0x100, 0x2345], "GET_IOVA");  // 2 pins, 1 sg mapping
 *   await s.vm.balloonOut(0, 1);                               // the notifier reaches the vGPU
 *   await s.vm.shutdown();                                     // close sweeps everything
 */
import { createKvmStack, type KvmStackOptions } from "@vgpu-iommu/adapter-kvm";
import type { PlatformVm, VmSpec } from "@vgpu-iommu/core";
import { NvidiaVendor, type GetIovaBenchSetup, type NvidiaVendorOptions, type NvidiaVgpu } from "@vgpu-iommu/plugin-nvidia";
import { KVM, type PlatformFactory, type PlatformStack } from "./platforms.js";

export interface NvidiaStackOptions {
  readonly platform?: PlatformFactory;
  readonly kvm?: KvmStackOptions;
  readonly vendor?: NvidiaVendorOptions;
  readonly vm?: Partial<VmSpec>;
  readonly type?: string;
  /** vGPUs to add to the VM (default 1). */
  readonly count?: number;
}

export interface NvidiaStack extends PlatformStack {
  readonly vendor: NvidiaVendor;
  readonly vm: PlatformVm;
  readonly vgpus: NvidiaVgpu[];
  /** First frame of balloon block `block`, and frames per block. */
  balloonBlock(block: number): { first: number; npages: number };
}

const MiB = 1n << 20n;
export const BLOCK_PAGES = 512;

export async function nvidiaStack(options: NvidiaStackOptions = {}): Promise<NvidiaStack> {
  const stack = (options.platform ?? KVM).create({ host: { ramBytes: 1n << 30n, seed: 7 }, ...(options.kvm === undefined ? {} : { kvm: options.kvm }) });
  const vendor = new NvidiaVendor(options.vendor);
  const vm = await stack.platform.createVm({ name: "vm0", ramBytes: 64n * MiB, balloon: { bytes: 8n * MiB, blockBytes: 2n * MiB }, ...options.vm });
  const vgpus: NvidiaVgpu[] = [];
  for (let i = 0; i < (options.count ?? 1); i++) vgpus.push((await vm.addVgpu(vendor, options.type ?? "NV-2Q", `nv${i}`)) as NvidiaVgpu);
  return {
    ...stack,
    vendor,
    vm,
    vgpus,
    balloonBlock: (block) => ({ first: Number(vm.balloonBase! >> 12n) + block * BLOCK_PAGES, npages: BLOCK_PAGES }),
  };
}

/**
 * The `nvidia.get-iova.512` setup on KVM (for measureGetIova512): a VM with
 * `ramBytes` of prefaulted-on-demand guest RAM, one mdev vGPU added the way
 * QEMU does, every low-RAM frame above 1 MiB offered to the case, and the
 * host's GUP pin count as the platform's cross-check.
 */
export function nvidiaKvmBenchSetup(ramBytes: bigint, kvm: KvmStackOptions = {}): GetIovaBenchSetup {
  return async (vendor, type) => {
    const stack = createKvmStack({ host: { ramBytes: ramBytes + (256n << 20n), seed: 11 }, ...kvm });
    const vm = await stack.platform.createVm({ name: "bench-vm", ramBytes });
    const vgpu = (await vm.addVgpu(vendor, type, "nv-bench")) as NvidiaVgpu;
    const low = ramBytes < 3n << 30n ? ramBytes : 3n << 30n;
    return {
      vgpu,
      firstGfn: 256,
      pages: Number(low >> 12n) - 256,
      platformPins: () => stack.host.phys.totalPins,
      teardown: () => vm.shutdown(),
    };
  };
}
