/**
 * Test fixture: a GVT vendor and one open vGPU on the fake services, a guest
 * driver over them, and the leak check every test ends with.
 */
import { expect } from "chai";
import { FakeVgpuServices, NO_FAKE_LEAKS, type FakeServicesOptions } from "@vgpu-iommu/core/testing";
import { GuestGfxDriver } from "./testing/guest-driver.js";
import { GvtVendor, type GvtGpuOptions } from "./gvt-vendor.js";
import type { GvtVgpu } from "./gvt-vgpu.js";

export interface Rig {
  readonly vendor: GvtVendor;
  readonly vgpu: GvtVgpu;
  readonly svc: FakeVgpuServices;
  readonly drv: GuestGfxDriver;
}

/** Guest frames [POOL_GFN, POOL_GFN + POOL_PAGES) hold the driver's tables, contexts and rings. */
export const POOL_GFN = 0x7000;
export const POOL_PAGES = 0x800;

export async function makeRig(
  options: { services?: Partial<FakeServicesOptions>; vendor?: GvtGpuOptions; type?: string; name?: string } = {},
): Promise<Rig> {
  const svc = new FakeVgpuServices({ guestPages: 0x10000, ...options.services });
  const vendor = new GvtVendor(options.vendor);
  const vgpu = vendor.create(options.type ?? "GVTg_V5_4", options.name ?? "vgpu0", svc);
  svc.onTrackedWrite = (gpa, data) => vgpu.onGuestWrite(gpa, data);
  await vgpu.open();
  const drv = new GuestGfxDriver(vgpu, svc.guest, POOL_GFN, POOL_PAGES);
  return { vendor, vgpu, svc, drv };
}

/** Closes and destroys the vGPU and checks that nothing is left pinned, mapped or protected. */
export async function closeAndCheck(rig: Rig): Promise<void> {
  await rig.vgpu.close();
  rig.vendor.destroy(rig.vgpu);
  expect(rig.svc.leaks()).to.deep.equal(NO_FAKE_LEAKS);
  expect(rig.vgpu.cache.size).to.equal(0);
  expect(rig.vgpu.warnings).to.equal(0);
}

/** The GGTT index of the first page of the vGPU's aperture slice, plus `i`. */
export const apIndex = (rig: Rig, i = 0): number => rig.vgpu.ggtt.apStart + i;
export const hiIndex = (rig: Rig, i = 0): number => rig.vgpu.ggtt.hiStart + i;
