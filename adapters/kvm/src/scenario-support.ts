/**
 * The KVM adapter's contribution to scenarios: memslot operations the
 * platform port does not offer, done the way QEMU does them, through
 * KVM_SET_USER_MEMORY_REGION on the VM's slots (an SMRAM or ROM remap deletes
 * a slot and recreates it; a BAR move changes its base).
 */
import type { PlatformVm } from "@vgpu-iommu/core";
import type { HypervisorDriver, ScenarioProvider } from "@vgpu-iommu/core/scenarios";
import { ERRNO } from "@vgpu-iommu/core";
import { KvmVm } from "./kvm-vm.js";

const PAGE_SHIFT = 12n;

export function kvmHypervisorDriver(kvm: KvmVm): HypervisorDriver {
  const region = (gpa: bigint) => {
    const slot = kvm.gfnToMemslot(Number(gpa >> PAGE_SHIFT));
    if (slot === undefined) return undefined;
    return { slot: (slot.asId << 16) | slot.id, flags: slot.flags, guest_phys_addr: BigInt(slot.baseGfn) << PAGE_SHIFT, memory_size: BigInt(slot.npages) << PAGE_SHIFT, userspace_addr: BigInt(slot.userspacePage) << PAGE_SHIFT };
  };
  return {
    async recreateMemslot(gpa) {
      const mem = region(gpa);
      if (mem === undefined) return -ERRNO.EINVAL;
      const r = kvm.setUserMemoryRegion({ ...mem, memory_size: 0n });
      return r !== 0 ? r : kvm.setUserMemoryRegion(mem);
    },
    async moveMemslot(gpa, deltaBytes) {
      const mem = region(gpa);
      if (mem === undefined) return -ERRNO.EINVAL;
      return kvm.setUserMemoryRegion({ ...mem, guest_phys_addr: mem.guest_phys_addr + deltaBytes });
    },
  };
}

export const kvmScenarioProvider: ScenarioProvider = {
  hypervisorOps: ["recreateMemslot", "moveMemslot"],
  hypervisorDriver(vm: PlatformVm) {
    const kvm = (vm as { vm?: unknown }).vm;
    return kvm instanceof KvmVm ? kvmHypervisorDriver(kvm) : undefined;
  },
};
