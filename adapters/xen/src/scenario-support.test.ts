/**
 * The Xen adapter's scenario operations on a platform VM: the guest's own
 * decrease_reservation and populate_physmap, their refusals, what the P2M
 * change reaches (the ioreq tracker), and the provider's wiring.
 */
import { expect } from "chai";
import { createXenStack, type XenStack } from "./xen-stack.js";
import { P2mType } from "./p2m.js";
import { xenHypervisorDriver, xenScenarioProvider } from "./scenario-support.js";
import type { XenPlatformVm } from "./xen-platform.js";

const MiB = 1n << 20n;
const BLOCK = 2n * MiB;

async function world(): Promise<{ s: XenStack; vm: XenPlatformVm; base: number }> {
  const s = createXenStack({ config: "pv-identity", host: { ramBytes: 1n << 30n, seed: 3 }, dom0MemoryBytes: 32n * MiB, swiotlbBytes: 4 << 20 });
  const vm = (await s.platform.createVm({ name: "vm0", ramBytes: 64n * MiB, balloon: { bytes: 4n * MiB, blockBytes: BLOCK } })) as XenPlatformVm;
  return { s, vm, base: Number(vm.balloonBase! >> 12n) };
}

async function finish(s: XenStack, vm: XenPlatformVm): Promise<void> {
  await vm.shutdown();
  s.adapter.dispose();
  s.xen.shutdown();
  expect([s.host.phys.framesInUse, s.host.phys.totalPins, s.host.kernel.warnings.length]).to.deep.equal([0, 0, 0]);
}

describe("Xen scenario operations: the guest's own balloon", () => {
  it("the provider offers them for a Xen VM only, with its scenario", async () => {
    const { s, vm } = await world();
    expect(xenScenarioProvider.hypervisorOps).to.deep.equal(["decreaseReservation", "populatePhysmap"]);
    expect(xenScenarioProvider.scenarios!.map((d) => d.name)).to.deep.equal(["xen-guest-balloon"]);
    expect(Object.keys(xenScenarioProvider.hypervisorDriver!(vm)!)).to.deep.equal(["decreaseReservation", "populatePhysmap"]);
    expect(xenScenarioProvider.hypervisorDriver!({ name: "elsewhere" } as unknown as XenPlatformVm)).to.equal(undefined);
    await finish(s, vm);
  });

  it("decrease_reservation takes the RAM frames of a range (holes stay holes); populate_physmap brings fresh ram_rw frames", async () => {
    const { s, vm, base } = await world();
    const hv = xenHypervisorDriver(vm);
    const p2m = vm.guest.p2m!;
    const inUse = s.host.phys.framesInUse;
    expect(await hv.decreaseReservation!(vm.balloonBase!, BLOCK)).to.equal(BLOCK);
    expect([p2m.type(base), p2m.type(base + 511), p2m.type(base + 512)]).to.deep.equal([P2mType.invalid, P2mType.invalid, P2mType.ram_rw]);
    expect(s.host.phys.framesInUse).to.equal(inUse - 512);
    expect(await hv.decreaseReservation!(vm.balloonBase! - 4096n, 2n * 4096n)).to.equal(0n);
    expect(await hv.populatePhysmap!(vm.balloonBase!, BLOCK)).to.equal(0);
    expect([p2m.type(base), p2m.type(base + 511)]).to.deep.equal([P2mType.ram_rw, P2mType.ram_rw]);
    expect(s.host.phys.framesInUse).to.equal(inUse);
    await finish(s, vm);
  });

  it("refuses a misaligned, empty or out-of-guest range, and a populate over present frames, with -EINVAL; -ESRCH once the guest crashed; nothing changes", async () => {
    const { s, vm, base } = await world();
    const hv = xenHypervisorDriver(vm);
    const p2m = vm.guest.p2m!;
    const beyond = BigInt(vm.guest.maxGfn) << 12n;
    for (const [gpa, length] of [
      [0x1001n, 4096n],
      [0n, 4095n],
      [0n, 0n],
      [-4096n, 4096n],
      [beyond - 4096n, 2n * 4096n],
    ] as const) {
      expect(await hv.decreaseReservation!(gpa, length), `${gpa}+${length}`).to.equal(-22);
      expect(await hv.populatePhysmap!(gpa, length), `${gpa}+${length}`).to.equal(-22);
    }
    expect(await hv.populatePhysmap!(vm.balloonBase!, BLOCK)).to.equal(-22);
    expect(p2m.type(0)).to.equal(P2mType.ram_rw);
    expect(await hv.decreaseReservation!(vm.balloonBase!, 4096n)).to.equal(4096n);
    // One frame of the block is a hole now, the others are present: still refused whole.
    expect(await hv.populatePhysmap!(vm.balloonBase!, 2n * 4096n)).to.equal(-22);
    expect(p2m.type(base)).to.equal(P2mType.invalid);
    vm.guest.crash("test");
    expect(await hv.decreaseReservation!(vm.balloonBase! + 4096n, 4096n)).to.equal(-3);
    expect(await hv.populatePhysmap!(vm.balloonBase!, 4096n)).to.equal(-3);
    expect(p2m.type(base + 1)).to.equal(P2mType.ram_rw);
    await finish(s, vm);
  });

  it("populate_physmap: -ENOMEM when the host runs out, and what it had populated is given back", async () => {
    const { s, vm, base } = await world();
    const hv = xenHypervisorDriver(vm);
    expect(await hv.decreaseReservation!(vm.balloonBase!, BLOCK)).to.equal(BLOCK);
    const hoard: number[] = [];
    for (let f = s.host.phys.allocFrame(); f !== 0; f = s.host.phys.allocFrame()) hoard.push(f);
    for (const f of hoard.splice(0, 5)) s.host.phys.release(f);
    const inUse = s.host.phys.framesInUse;
    expect(await hv.populatePhysmap!(vm.balloonBase!, BLOCK)).to.equal(-12);
    expect(s.host.phys.framesInUse).to.equal(inUse);
    for (let i = 0; i < 512; i++) expect(vm.guest.p2m!.type(base + i)).to.equal(P2mType.invalid);
    for (const f of hoard) s.host.phys.release(f);
    expect(await hv.populatePhysmap!(vm.balloonBase!, BLOCK)).to.equal(0);
    await finish(s, vm);
  });

  it("the P2M change ends write protection in the range: the protecting vGPU is told, the tracker keeps none there", async () => {
    const { s, vm, base } = await world();
    const hv = xenHypervisorDriver(vm);
    const told: [number, number][] = [];
    vm.tracker.attach("probe", { onGuestWrite: () => undefined, onMemslotRemoved: (first, n) => told.push([first, n]) });
    for (const gfn of [base + 7, base + 9, 0x40]) expect(vm.tracker.protect("probe", gfn)).to.equal(0);
    expect(await hv.decreaseReservation!(BigInt(base + 8) << 12n, 8n * 4096n)).to.equal(8n * 4096n);
    expect(told).to.deep.equal([[base + 8, 8]]);
    expect([vm.tracker.protectedIn("probe", base, 512), vm.tracker.protectedBy("probe")]).to.deep.equal([1, 2]);
    vm.tracker.detach("probe");
    await finish(s, vm);
  });
});
