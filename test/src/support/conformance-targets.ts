/**
 * Conformance targets on a platform (KVM unless one is given, or Xen in one of
 * its configurations; see platforms.ts): each call builds a fresh host and
 * parent GPU (a check that leaks or crashes the host must not poison the next
 * one) and reports the parent's live DMA mappings as a counter that must come
 * back to zero.
 */
import type { KvmStackOptions } from "@vgpu-iommu/adapter-kvm";
import type { PlatformVm, Vgpu, VgpuVendor } from "@vgpu-iommu/core";
import type { ConformanceTarget } from "@vgpu-iommu/conformance";
import { fixtureTarget, type FixtureVendor } from "@vgpu-iommu/conformance/fixtures";
import { MOCK_SMALL, MockGpuVendor, MockGuestDriver, type MockGpuOptions, type MockVgpu } from "@vgpu-iommu/plugin-mock-gpu";
import { KVM, type PlatformFactory, type PlatformStack } from "./platforms.js";

const HOST = { ramBytes: 1n << 30n, seed: 3 };

function stackOn(platform: PlatformFactory, kvm: KvmStackOptions = {}): PlatformStack {
  return platform.create({ host: HOST, kvm });
}

const parentCounters = (stack: PlatformStack) => (): Readonly<Record<string, number>> => ({ parentLiveMappings: stack.parentMappings() });

/** The mock GPU: exercise = the guest driver pointing table entries 0, 1, ... at the frames (after what it mapped before). */
export function mockGpuTarget(mock: MockGpuOptions = {}, options: KvmStackOptions = {}, type = MOCK_SMALL, platform: PlatformFactory = KVM): () => Promise<ConformanceTarget> {
  return async () => {
    const stack = stackOn(platform, options);
    const next = new WeakMap<Vgpu, number>();
    return {
      platform: stack.platform,
      vendor: new MockGpuVendor(mock),
      type,
      exercise(vgpu: Vgpu, _vm: PlatformVm, gfns: readonly number[]) {
        const m = vgpu as MockVgpu;
        const first = next.get(m) ?? 0;
        new MockGuestDriver(m, m.geometry).mapAll(gfns, first);
        next.set(m, first + gfns.length);
      },
      counters: parentCounters(stack),
    };
  };
}

/** A fixture vendor of the kit on a platform. */
export function fixtureOn(platform: PlatformFactory, create: () => FixtureVendor): () => Promise<ConformanceTarget> {
  return async () => {
    const stack = stackOn(platform);
    return { ...fixtureTarget(stack.platform, create()), counters: parentCounters(stack) };
  };
}

/** A fixture vendor of the kit on KVM. */
export function fixtureOnKvm(create: () => FixtureVendor): () => Promise<ConformanceTarget> {
  return fixtureOn(KVM, create);
}

/** Any vendor with its own exercise callback, on a platform. */
export function vendorOn(
  platform: PlatformFactory,
  vendor: () => VgpuVendor,
  type: string,
  exercise: ConformanceTarget["exercise"],
  extra: Partial<ConformanceTarget> = {},
  options: KvmStackOptions = {},
): () => Promise<ConformanceTarget> {
  return async () => {
    const stack = stackOn(platform, options);
    return { platform: stack.platform, vendor: vendor(), type, exercise, counters: parentCounters(stack), ...extra };
  };
}

/** Any vendor with its own exercise callback, on KVM. */
export function vendorOnKvm(vendor: () => VgpuVendor, type: string, exercise: ConformanceTarget["exercise"], extra: Partial<ConformanceTarget> = {}, options: KvmStackOptions = {}): () => Promise<ConformanceTarget> {
  return vendorOn(KVM, vendor, type, exercise, extra, options);
}
