/**
 * The mock GPU on a platform (KVM unless one is given) in one call: a host,
 * its parent GPU, a VM with a balloon, and one open mock vGPU with a guest
 * driver for its table. What a test author needs to start from:
 *
 *   const s = await mockGpuStack();           // or mockGpuStack({ platform: XEN_PLATFORMS[2] })
 *   s.driver.mapAll([0x100, 0x101, 0x100]);   // 2 pins, 2 DMA mappings, refcount 2 on 0x100
 *   await s.vm.balloonOut(0, 1);              // dmaUnmap of block 0 reaches the vGPU
 *   await s.vm.shutdown();                    // close releases everything
 *   expect(s.host.phys.totalPins).to.equal(0);
 */
import type { KvmStackOptions } from "@vgpu-iommu/adapter-kvm";
import type { PlatformVm, VmSpec } from "@vgpu-iommu/core";
import { MOCK_SMALL, MockGpuVendor, MockGuestDriver, type MockGpuOptions, type MockVgpu } from "@vgpu-iommu/plugin-mock-gpu";
import { KVM, type PlatformFactory, type PlatformStack, type PlatformStackOptions } from "./platforms.js";

export interface MockGpuStackOptions {
  readonly platform?: PlatformFactory;
  readonly kvm?: KvmStackOptions;
  readonly xen?: PlatformStackOptions["xen"];
  readonly mock?: MockGpuOptions;
  readonly vm?: Partial<VmSpec>;
  readonly type?: string;
}

export interface MockGpuStack extends PlatformStack {
  readonly vendor: MockGpuVendor;
  readonly vm: PlatformVm;
  readonly vgpu: MockVgpu;
  readonly driver: MockGuestDriver;
}

const MiB = 1n << 20n;

export async function mockGpuStack(options: MockGpuStackOptions = {}): Promise<MockGpuStack> {
  const stack = (options.platform ?? KVM).create({ host: { ramBytes: 1n << 30n, seed: 5 }, ...(options.kvm === undefined ? {} : { kvm: options.kvm }), ...(options.xen === undefined ? {} : { xen: options.xen }) });
  const vendor = new MockGpuVendor(options.mock);
  const vm = await stack.platform.createVm({ name: "vm0", ramBytes: 64n * MiB, balloon: { bytes: 8n * MiB, blockBytes: 2n * MiB }, ...options.vm });
  const vgpu = (await vm.addVgpu(vendor, options.type ?? MOCK_SMALL, "mock0")) as MockVgpu;
  return { ...stack, vendor, vm, vgpu, driver: new MockGuestDriver(vgpu, vgpu.geometry) };
}
