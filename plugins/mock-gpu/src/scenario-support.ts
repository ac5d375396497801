/**
 * The mock GPU's contribution to scenarios: its guest driver, so the
 * command's built-in scenarios can make a guest write the mock's table
 * (one 8-byte BAR0 write per entry, or two 4-byte halves), and read back the
 * device addresses its shadow table exposes for the isolation check.
 */
import type { GuestDriver, ScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { gttEntry } from "./gtt-geometry.js";
import { MockGuestDriver } from "./mock-guest-driver.js";
import { MockVgpu } from "./mock-vgpu.js";

export function mockGuestDriver(vgpu: MockVgpu): GuestDriver {
  const guest = new MockGuestDriver(vgpu, vgpu.geometry);
  return {
    slots: vgpu.geometry.tableEntries,
    map: (first, gfns) => guest.mapAll(gfns, first),
    unmap(first, n) {
      for (let i = 0; i < n; i++) guest.clear(first + i);
    },
    mapHalves: (slot, gfn) => guest.writeRaw(slot, gttEntry(gfn), true),
    visibleAddresses: () => vgpu.deviceVisibleAddresses(),
  };
}

export const mockScenarioProvider: ScenarioProvider = {
  guestOps: ["map", "unmap", "mapHalves", "visibleAddresses"],
  guestDriver: (vgpu) => (vgpu instanceof MockVgpu ? mockGuestDriver(vgpu) : undefined),
};
