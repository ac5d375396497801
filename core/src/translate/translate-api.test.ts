import { expect } from "chai";
import { container } from "tsyringe";
import { Fixture, NO_LEAKS } from "../testing/fixture.js";
import { DeviceAddressSpaces, TranslateApi } from "./translate-api.js";
import { VfioGuestPins } from "./vfio-guest-pins.js";
import { IHypervisorAdapter, type DeviceHandle, type DeviceMapping, type GuestInvalidation, type HypervisorAdapter, type HypervisorCapabilities } from "../hypervisor/hypervisor-adapter.js";
import { IOMMU_READ, IOMMU_WRITE } from "../vfio/type1/vfio-dma.js";
import type { VfioDevice } from "../vfio/vfio-device.js";
import { VfioError } from "../errors/kernel-error.js";

/** A hypervisor adapter whose device addresses are the host addresses (direct mode), one segment per frame. */
class DirectAdapter implements HypervisorAdapter {
  readonly devices = new Set<DeviceHandle>();
  mapped = 0;
  unmapped = 0;
  #listeners: ((inv: GuestInvalidation) => void)[] = [];

  capabilities(): HypervisorCapabilities {
    return { addressModel: "host-dma-api", coreChoosesIova: false, mergesSegments: false, maxSegmentSize: 65536, segmentBoundaryMask: 0xffffffffn, dmaMaskBits: 64, maxPinPerCall: 512, maxOpsPerBatch: 512, flushModel: "per-call", isolationPerVgpu: false, supportsWriteTrack: true };
  }

  guestPins(vdev: unknown): VfioGuestPins {
    return new VfioGuestPins(vdev as VfioDevice);
  }

  mapForDevice(device: DeviceHandle, frames: Uint32Array, n: number): DeviceMapping {
    if (!this.devices.has(device)) throw new VfioError("ENODEV", "device-not-registered");
    const segAddr = new BigUint64Array(n);
    const segLength = new Float64Array(n).fill(4096);
    for (let i = 0; i < n; i++) segAddr[i] = BigInt(frames[i]!) << 12n;
    this.mapped++;
    return { device, nents: n, count: n, segAddr, segLength };
  }

  unmapForDevice(): void {
    this.unmapped++;
  }

  onInvalidate(listener: (inv: GuestInvalidation) => void) {
    this.#listeners.push(listener);
    return { dispose: () => void this.#listeners.splice(this.#listeners.indexOf(listener), 1) };
  }

  invalidate(inv: GuestInvalidation): void {
    for (const l of this.#listeners) l(inv);
  }
}

describe("translate API", () => {
  let f: Fixture;
  let adapter: DirectAdapter;
  let api: TranslateApi;
  const gpu: DeviceHandle = { name: "0000:00:02.0" };

  beforeEach(async () => {
    f = await Fixture.create({ variant: "mdev-only" });
    expect(await f.map()).to.equal(0);
    adapter = new DirectAdapter();
    adapter.devices.add(gpu);
    const vm = container.createChildContainer();
    vm.register(IHypervisorAdapter, { useValue: adapter });
    vm.register(DeviceAddressSpaces, { useValue: new DeviceAddressSpaces() });
    api = vm.resolve(TranslateApi);
    api.attach("vm0", f.device!);
  });

  afterEach(async () => {
    api.dispose();
    await f.teardown();
    expect(f.leaks()).to.deep.equal(NO_LEAKS);
  });

  it("pins for the CPU once through type1 and charges each frame once", () => {
    const t = api.pinForCpu(f.device!, { start: 0x10, npages: 8 }, IOMMU_READ | IOMMU_WRITE);
    expect(t.pfns.length).to.equal(8);
    expect(t.dmaAddrs).to.equal(undefined);
    expect(f.qemu.mm.lockedVm).to.equal(8);
    expect(f.host.phys.totalPins).to.equal(8);
    f.check();
    api.release(t.handle);
    expect(f.qemu.mm.lockedVm).to.equal(0);
    expect(f.host.phys.totalPins).to.equal(0);
  });

  it("maps for the vendor's device without changing accounting, and returns per-frame addresses", () => {
    const t = api.mapForDevice(f.device!, [0x40, 0x41, 0x99], IOMMU_READ, gpu);
    expect(f.qemu.mm.lockedVm).to.equal(3);
    expect([...t.dmaAddrs!]).to.deep.equal([...t.pfns].map((p) => BigInt(p) << 12n));
    expect(t.segments!.count).to.equal(3);
    api.release(t.handle);
    expect(adapter.unmapped).to.equal(1);
    expect(() => api.release(t.handle)).to.throw(VfioError).with.property("reason", "translate-unknown-handle");
  });

  it("rejects bad input with the documented errno and changes nothing", () => {
    const before = f.host.phys.totalPins;
    const errno = (fn: () => unknown): number => {
      try {
        fn();
      } catch (e) {
        return (e as VfioError).errno;
      }
      return 0;
    };
    expect(errno(() => api.pinForCpu(f.device!, { start: 0, npages: 513 }, IOMMU_READ))).to.equal(7);
    expect(errno(() => api.pinForCpu(f.device!, { start: 0, npages: 0 }, IOMMU_READ))).to.equal(22);
    expect(errno(() => api.pinForCpu(f.device!, { start: 0, npages: 1 }, 4))).to.equal(22);
    expect(errno(() => api.pinForCpu(f.device!, [1, -2], IOMMU_READ))).to.equal(22);
    expect(errno(() => api.pinForCpu(f.device!, { start: 1023, npages: 2 }, IOMMU_READ))).to.equal(22);
    expect(errno(() => api.mapForDevice(f.device!, [1], IOMMU_READ, { name: "unregistered" }))).to.equal(19);
    expect(f.host.phys.totalPins).to.equal(before);
    expect(f.qemu.mm.lockedVm).to.equal(0);
  });

  it("releases every translation touching an invalidated range, unmapping before unpinning", () => {
    const a = api.mapForDevice(f.device!, { start: 0x100, npages: 4 }, IOMMU_READ, gpu);
    const b = api.pinForCpu(f.device!, { start: 0x200, npages: 4 }, IOMMU_READ);
    adapter.invalidate({ vm: "vm0", firstGfn: 0x102, npages: 1, reason: "balloon" });
    expect(api.liveCount(f.device!)).to.equal(1);
    expect(adapter.unmapped).to.equal(1);
    expect(f.qemu.mm.lockedVm).to.equal(4);
    expect(() => api.release(a.handle)).to.throw(VfioError);
    api.release(b.handle);
  });

  it("reports device addresses of another vGPU or no longer mapped", () => {
    const other = { name: "other-vgpu" };
    const t = api.mapForDevice(f.device!, [0x10], IOMMU_READ, gpu);
    const addr = t.dmaAddrs![0]!;
    expect(api.checkIsolation(f.device!, gpu, [addr, addr + 4095n])).to.deep.equal([]);
    expect(api.checkIsolation(other, gpu, [addr])).to.deep.equal([{ addr, kind: "other-vgpu", owner: "mdev0" }]);
    api.release(t.handle);
    expect(api.checkIsolation(f.device!, gpu, [addr])).to.deep.equal([{ addr, kind: "unmapped" }]);
  });

  it("keeps an address two live translations share (one host frame mapped twice in direct mode) until both are released", () => {
    const a = api.mapForDevice(f.device!, [0x30], IOMMU_READ, gpu);
    const b = api.mapForDevice(f.device!, [0x30], IOMMU_READ, gpu);
    const addr = a.dmaAddrs![0]!;
    expect(b.dmaAddrs![0]).to.equal(addr);
    api.release(a.handle);
    expect(api.checkIsolation(f.device!, gpu, [addr])).to.deep.equal([]);
    api.release(b.handle);
    expect(api.checkIsolation(f.device!, gpu, [addr])).to.deep.equal([{ addr, kind: "unmapped" }]);
  });
});
