import { expect } from "chai";
import { createHost, type Host, type Process } from "@vgpu-iommu/core";
import { KvmVm, KVM_MEM_READONLY, KVM_PFN_ERR_RO_FAULT, KVM_PFN_NOSLOT, KVM_HVA_ERR_BAD, KVM_USER_MEM_SLOTS, KVM_PFN_ERROR_VALUES, type TrackNotifier } from "./kvm-vm.js";

describe("KvmVm", () => {
  let host: Host;
  let qemu: Process;
  let vm: KvmVm;
  let ram: bigint;

  beforeEach(() => {
    host = createHost({ ramBytes: 1n << 30n, seed: 3 });
    qemu = host.spawn({ comm: "qemu" });
    vm = new KvmVm(host, qemu, { name: "vm0" });
    ram = qemu.mmap({ length: 16n << 20n });
  });

  afterEach(() => {
    qemu.exit();
    expect(host.phys.framesInUse).to.equal(0);
  });

  const region = (slot: number, gpa: bigint, size: bigint, hva: bigint, flags = 0) => ({ slot, flags, guest_phys_addr: gpa, memory_size: size, userspace_addr: hva });

  it("validates KVM_SET_USER_MEMORY_REGION in the kernel's order", () => {
    expect(vm.setUserMemoryRegion(region(0, 0n, 1n << 20n, ram, 4))).to.equal(-22);
    expect(vm.setUserMemoryRegion(region(KVM_USER_MEM_SLOTS.current, 0n, 1n << 20n, ram))).to.equal(-22);
    expect(vm.setUserMemoryRegion(region(0, 0n, 4097n, ram))).to.equal(-22);
    expect(vm.setUserMemoryRegion(region(0, 1n, 4096n, ram))).to.equal(-22);
    expect(vm.setUserMemoryRegion(region(0, 0n, 4096n, ram + 1n))).to.equal(-22);
    expect(vm.setUserMemoryRegion(region(2 << 16, 0n, 4096n, ram))).to.equal(-22);
    expect(vm.setUserMemoryRegion(region(0, 0n, 0n, ram))).to.equal(-22);
    expect(vm.setUserMemoryRegion(region(0, 0n, 8n << 20n, ram))).to.equal(0);
    expect(vm.setUserMemoryRegion(region(1, 4n << 20n, 1n << 20n, ram + (8n << 20n)))).to.equal(-17);
    expect(vm.setUserMemoryRegion(region(0, 0n, 4n << 20n, ram))).to.equal(-22);
    expect(vm.setUserMemoryRegion(region(0, 0n, 8n << 20n, ram))).to.equal(0);
    expect(vm.memslots().length).to.equal(1);
  });

  it("allows 509 user slots in the 2016 generation and 32764 today", () => {
    const old = new KvmVm(host, qemu, { name: "old", generation: "2016" });
    expect(old.setUserMemoryRegion(region(508, 0n, 4096n, ram))).to.equal(0);
    expect(old.setUserMemoryRegion(region(509, 1n << 20n, 4096n, ram))).to.equal(-22);
    expect(vm.setUserMemoryRegion(region(32763, 0n, 4096n, ram))).to.equal(0);
    expect(vm.setUserMemoryRegion(region(32764, 1n << 20n, 4096n, ram))).to.equal(-22);
  });

  it("walks GFN -> HVA -> PFN, with error values for holes and read-only slots", () => {
    expect(vm.setUserMemoryRegion(region(0, 0n, 8n << 20n, ram))).to.equal(0);
    expect(vm.setUserMemoryRegion(region(1 | (1 << 16), 0n, 4096n, ram))).to.equal(0);
    expect(vm.setUserMemoryRegion(region(2, 0xfffc0000n, 0x40000n, ram + (8n << 20n), KVM_MEM_READONLY))).to.equal(0);
    expect(vm.gfnToHva(5)).to.equal(Number(ram >> 12n) + 5);
    expect(vm.gfnToHva(0x10000)).to.equal(KVM_HVA_ERR_BAD);
    const pfn = vm.gfnToPfn(5);
    expect(pfn).to.equal(qemu.mm.translate(Number(ram >> 12n) + 5));
    expect(vm.gfnToPfn(0x10000)).to.equal(KVM_PFN_NOSLOT);
    expect(vm.gfnToPfn(0xfffc0, true)).to.equal(KVM_PFN_ERR_RO_FAULT);
    expect(vm.gfnToPfn(0xfffc0)).to.be.greaterThan(0);
    expect(KVM_PFN_ERROR_VALUES[KVM_PFN_NOSLOT]).to.equal(1n << 63n);
    expect(host.phys.totalPins).to.equal(0);
  });

  it("reads and writes guest memory through the slots", () => {
    expect(vm.setUserMemoryRegion(region(0, 0n, 8n << 20n, ram))).to.equal(0);
    expect(vm.writeGuest(0x1ffcn, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8))).to.equal(0);
    const out = new Uint8Array(8);
    expect(vm.readGuest(0x1ffcn, out)).to.equal(0);
    expect([...out]).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(vm.readGuest(8n << 20n, out)).to.equal(-14);
  });

  it("tracks writes to protected frames: -EINVAL outside memslots, notified after the write, dropped with the slot", () => {
    expect(vm.setUserMemoryRegion(region(0, 0n, 8n << 20n, ram))).to.equal(0);
    const writes: [bigint, number[]][] = [];
    const removed: [number, number][] = [];
    const notifier: TrackNotifier = {
      trackWrite: (gpa, data) => {
        const seen = new Uint8Array(data.length);
        expect(vm.readGuest(gpa, seen)).to.equal(0);
        writes.push([gpa, [...seen]]);
      },
      trackRemoveRegion: (g, n) => removed.push([g, n]),
    };
    const other = host.spawn({ comm: "other" });
    expect(vm.registerTrackNotifier(notifier, other)).to.equal(-3);
    expect(vm.registerTrackNotifier(notifier, qemu)).to.equal(0);
    expect(vm.writeTrackAdd(0x9000)).to.equal(-22);
    expect(vm.writeTrackAdd(0x10)).to.equal(0);
    expect(vm.guestWrite(0x10008n, Uint8Array.of(0xaa, 0xbb))).to.equal(0);
    expect(vm.guestWrite(0x11000n, Uint8Array.of(1))).to.equal(0);
    expect(writes).to.deep.equal([[0x10008n, [0xaa, 0xbb]]]);
    expect(vm.setUserMemoryRegion(region(0, 0n, 0n, ram))).to.equal(0);
    expect(removed).to.deep.equal([[0, 2048]]);
    expect(vm.trackedCount).to.equal(0);
    other.exit();
  });

  it("refuses to move a memslot while a page-track user is registered", () => {
    expect(vm.setUserMemoryRegion(region(0, 0n, 8n << 20n, ram))).to.equal(0);
    expect(vm.registerTrackNotifier({ trackWrite: () => undefined, trackRemoveRegion: () => undefined }, qemu)).to.equal(0);
    expect(vm.setUserMemoryRegion(region(0, 1n << 30n, 8n << 20n, ram))).to.equal(-22);
  });
});
