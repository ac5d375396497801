/**
 * The GVT-g-like vendor on a platform (KVM unless one is given) in one call: a
 * host, its parent GPU, a VM (64 MiB of RAM and an 8 MiB balloon in 2 MiB
 * blocks) and one open GVTg_V5_4 vGPU with a guest driver whose tables,
 * contexts and rings come from guest frames [0x3000, 0x3400).
 *
 *   const s = await gvtStack();                             // or gvtStack({ platform: XEN_PLATFORMS[0] })
 *   s.driver.ggttWriteRange(s.vgpu.ggtt.apStart, frames);   // one pin + one DMA map per new frame
 *   await s.vm.shutdown();                                  // close releases everything
 */
import { expect } from "chai";
import type { KvmStackOptions } from "@vgpu-iommu/adapter-kvm";
import type { PlatformVm, VmSpec } from "@vgpu-iommu/core";
import { GvtVendor, type GvtGpuOptions, type GvtVgpu } from "@vgpu-iommu/plugin-gvt";
import { GuestGfxDriver } from "@vgpu-iommu/plugin-gvt/testing";
import { KVM, type PlatformFactory, type PlatformStack } from "../support/platforms.js";

export interface GvtStackOptions {
  readonly platform?: PlatformFactory;
  readonly kvm?: KvmStackOptions;
  readonly gvt?: GvtGpuOptions;
  readonly vm?: Partial<VmSpec>;
  readonly type?: string;
}

export interface GvtStack extends PlatformStack {
  readonly vendor: GvtVendor;
  readonly vm: PlatformVm;
  readonly vgpu: GvtVgpu;
  readonly driver: GuestGfxDriver;
}

export const MiB = 1n << 20n;
export const POOL_GFN = 0x3000;
export const POOL_PAGES = 0x400;

export async function gvtStack(options: GvtStackOptions = {}): Promise<GvtStack> {
  const stack = (options.platform ?? KVM).create({ host: { ramBytes: 1n << 30n, seed: 5 }, ...(options.kvm === undefined ? {} : { kvm: options.kvm }) });
  const vendor = new GvtVendor(options.gvt);
  const vm = await stack.platform.createVm({ name: "vm0", ramBytes: 64n * MiB, balloon: { bytes: 8n * MiB, blockBytes: 2n * MiB }, ...options.vm });
  const vgpu = (await vm.addVgpu(vendor, options.type ?? "GVTg_V5_4", "gvt0")) as GvtVgpu;
  return { ...stack, vendor, vm, vgpu, driver: new GuestGfxDriver(vgpu, vm, POOL_GFN, POOL_PAGES) };
}

/** [pinned frames, locked_vm, parent DMA mappings, live translations, type1 external pins]. */
export function held(s: GvtStack): number[] {
  return [s.pinnedFrames(), s.vm.vmm.mm.lockedVm, s.parentMappings(), s.vm.translate.liveCount(), s.host.stats().externalPins];
}

/** What `held` is with `n` frames pinned and mapped: locked_vm and type1's external pins exist on KVM only. */
export function heldOf(s: GvtStack, n: number): number[] {
  const kvm = s.id === "kvm" ? n : 0;
  return [n, kvm, n, n, kvm];
}

/** Shuts the VM down and checks the host holds nothing: pins, locked_vm, DMA mappings, translations, tracking, WARNs. */
export async function expectClean(s: GvtStack): Promise<void> {
  await s.vm.shutdown();
  expect(held(s)).to.deep.equal([0, 0, 0, 0, 0]);
  expect([s.host.phys.totalPins, s.sweptAtShutdown()]).to.deep.equal([0, 0]);
  expect(s.trackedFrames(s.vm)).to.equal(0);
  expect(s.host.kernel.warnings).to.deep.equal([]);
  expect(s.host.kernel.crashed).to.equal(false);
  expect(s.vgpu.warnings).to.equal(0);
  expect(s.vendor.vgpuCount).to.equal(0);
}
