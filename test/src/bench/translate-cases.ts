/**
 * Bench cases of the translate API, the KVM adapter and the IOVA allocator:
 * GPA -> HPA lookups through KVM memslots and the VMM's page tables,
 * mapForDevice of 512-frame lists over a 16 GiB guest in dma-iommu mode (pin,
 * charge, allocate, map), and an allocate/free pair of iova.c's allocator with
 * 65,536 live ranges.
 */
import { IOMMU_READ, IOMMU_WRITE, IovaDomain, createHost, type Vgpu, type VgpuServices, type VgpuVendor } from "@vgpu-iommu/core";
import { KvmVm, createKvmStack } from "@vgpu-iommu/adapter-kvm";
import { median, type Measured } from "./result.js";

const now = (): number => Number(process.hrtime.bigint());

/** A 16 GiB guest in one memslot, every page faulted in once before timing. */
function bootVm(guestBytes: bigint): { vm: KvmVm; pages: number } {
  const host = createHost({ ramBytes: guestBytes + (2n << 30n), seed: 5 });
  const qemu = host.spawn({ comm: "qemu" });
  const hva = qemu.mmap({ length: guestBytes, backing: "scattered-4k" });
  const vm = new KvmVm(host, qemu, { name: "bench" });
  if (vm.setUserMemoryRegion({ slot: 0, flags: 0, guest_phys_addr: 0n, memory_size: guestBytes, userspace_addr: hva }) !== 0) throw new Error("memslot");
  const pages = Number(guestBytes >> 12n);
  for (let g = 0; g < pages; g++) vm.gfnToPfn(g);
  return { vm, pages };
}

/** `translate.gpa-to-hpa.random` and `.hot`: ns per lookup. */
export function measureGpaToHpa(guestBytes: bigint, reps: number): { random: Measured; hot: Measured } {
  const { vm, pages } = bootVm(guestBytes);
  const lookups = 1 << 22;
  const gpas = new Float64Array(lookups);
  let seed = 12345;
  for (let i = 0; i < lookups; i++) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    gpas[i] = (seed % pages) * 4096 + (i & 4095);
  }
  const hot = new Float64Array(lookups);
  const hotBase = Math.floor(pages / 2) * 4096;
  for (let i = 0; i < lookups; i++) hot[i] = hotBase + (i & 511) * 4096 + (i & 4095);
  const run = (addrs: Float64Array): number => {
    let sum = 0;
    const t0 = now();
    for (let i = 0; i < addrs.length; i++) {
      const gpa = addrs[i]!;
      const gfn = Math.floor(gpa / 4096);
      sum += vm.gfnToPfn(gfn) * 4096 + (gpa - gfn * 4096);
    }
    const ns = (now() - t0) / addrs.length;
    if (sum <= 0) throw new Error("lookups found nothing");
    return ns;
  };
  const random: number[] = [];
  const hotRuns: number[] = [];
  for (let r = 0; r < reps; r++) {
    random.push(run(gpas));
    hotRuns.push(run(hot));
  }
  return {
    random: { value: median(random), runs: random, note: `${lookups} random GPAs over ${pages} guest pages` },
    hot: { value: median(hotRuns), runs: hotRuns, note: "lookups within one 2 MiB region" },
  };
}

class MapVendor implements VgpuVendor {
  readonly capabilities = { onePerVm: true, migration: false, ownRequesterId: false };
  services: VgpuServices | undefined;
  listTypes() {
    return [{ name: "bench", description: "maps frames for its parent", resources: {} }];
  }
  availableInstances(): number {
    return 1;
  }
  create(type: string, name: string, services: VgpuServices): Vgpu {
    this.services = services;
    const idle = async (): Promise<void> => undefined;
    return { name, type, open: idle, close: idle, reset: idle, read: () => new Uint8Array(0), write: () => undefined, dmaUnmap: () => undefined, onGuestWrite: () => undefined, onMemslotRemoved: () => undefined, queryPlane: () => undefined, getDmabuf: () => undefined, releaseDmabuf: () => undefined };
  }
  destroy(): void {}
}

/** `translate.map-for-device.4k`: ns per page of mapForDevice in 512-frame lists over the guest, dma-iommu mode. */
export async function measureMapForDevice(guestBytes: bigint, reps: number): Promise<Measured> {
  const runs: number[] = [];
  let segments = 0;
  for (let r = 0; r < reps; r++) {
    const { platform } = createKvmStack({ host: { ramBytes: guestBytes + (4n << 30n), seed: 9 }, dmaMode: "dma-iommu" });
    const vm = await platform.createVm({ name: "bench", ramBytes: guestBytes, backing: "scattered-4k" });
    const vendor = new MapVendor();
    await vm.addVgpu(vendor, "bench", "vgpu0");
    const services = vendor.services!;
    // Faulted in, as a running guest's memory is: the case measures pin, charge, allocate and map.
    for (const [start, npages] of [[0, Math.min(Number(guestBytes >> 12n), 0xc0000)], [0x100000, Number(guestBytes >> 12n) - Math.min(Number(guestBytes >> 12n), 0xc0000)]] as const) {
      const buf = new Uint8Array(1);
      for (let g = start; g < start + npages; g++) vm.guestRead(BigInt(g) << 12n, buf);
    }
    // Guest RAM is below 3 GiB and above 4 GiB (the PCI hole lies between): map every RAM frame.
    const low = Math.min(Number(guestBytes >> 12n), 0xc0000);
    const ram = [[0, low], [0x100000, 0x100000 + Number(guestBytes >> 12n) - low]] as const;
    const handles = [];
    let pages = 0;
    const t0 = now();
    for (const [first, end] of ram) {
      for (let g = first; g + 512 <= end; g += 512) {
        const t = services.translate({ start: g, npages: 512 }, { prot: IOMMU_READ | IOMMU_WRITE, device: services.parentDevice });
        segments += t.segments!.count;
        handles.push(t.handle);
        pages += 512;
      }
    }
    runs.push((now() - t0) / pages);
    for (const h of handles) services.release(h);
    await vm.shutdown();
  }
  return { value: median(runs), runs, note: `${segments / reps} segments per pass (merged by __finalise_sg, max 64 KiB each)` };
}

/** `iova.alloc-free.65536`: ns per alloc_iova + free_iova pair with 65,536 live ranges. */
export function measureIovaAllocFree(reps: number): Measured {
  const runs: number[] = [];
  for (let r = 0; r < reps; r++) {
    const iovad = new IovaDomain(4096, 1);
    const limit = (1 << 27) - 1;
    const live = 65536;
    for (let i = 0; i < live; i++) if (iovad.allocIova(1 + (i % 8), limit, true) === 0) throw new Error("fill");
    const pairs = 1 << 18;
    let x = 7;
    const t0 = now();
    for (let i = 0; i < pairs; i++) {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      const pfn = iovad.allocIova(1 + (x % 8), limit, true);
      iovad.freeIova(pfn);
    }
    runs.push((now() - t0) / pairs);
    if (iovad.rangeCount < live) throw new Error("ranges lost");
  }
  return { value: median(runs), runs, note: "alloc_iova (size-aligned, 1-8 granules, no rcache) then free_iova, 65,536 ranges live" };
}
