import { expect } from "chai";
import sinon from "sinon";
import { container } from "tsyringe";
import { Fixture, NO_LEAKS } from "../testing/fixture.js";
import { DeviceAddressSpaces, TranslateApi } from "./translate-api.js";
import { VfioGuestPins } from "./vfio-guest-pins.js";
import { IHypervisorAdapter, apertureOfMask, type DeviceHandle, type DeviceMapping, type GuestInvalidation, type HypervisorAdapter, type HypervisorCapabilities } from "../hypervisor/hypervisor-adapter.js";
import { IOMMU_READ, IOMMU_WRITE } from "../vfio/type1/vfio-dma.js";
import type { VfioDevice } from "../vfio/vfio-device.js";
import { KernelError, VfioError } from "../errors/kernel-error.js";

/** A hypervisor adapter whose device addresses are the host addresses (direct mode), one segment per frame. */
class DirectAdapter implements HypervisorAdapter {
  readonly devices = new Set<DeviceHandle>();
  mapped = 0;
  unmapped = 0;
  /** The `dfn` argument of each map call. */
  readonly dfns: (number | undefined)[] = [];
  #listeners: ((inv: GuestInvalidation) => void)[] = [];

  capabilities(): HypervisorCapabilities {
    return { addressModel: "host-dma-api", coreChoosesIova: false, mergesSegments: false, maxSegmentSize: 65536, segmentBoundaryMask: 0xffffffffn, dmaMaskBits: 64, iovaAperture: apertureOfMask(64), maxPinPerCall: 512, maxOpsPerBatch: 512, flushModel: "per-call", isolationPerVgpu: false, supportsWriteTrack: true };
  }

  guestPins(vdev: unknown): VfioGuestPins {
    return new VfioGuestPins(vdev as VfioDevice);
  }

  mapForDevice(device: DeviceHandle, frames: Uint32Array, n: number, _write: boolean, dfn?: number): DeviceMapping {
    this.dfns.push(dfn);
    if (!this.devices.has(device)) throw new VfioError("ENODEV", "device-not-registered");
    const segAddr = new BigUint64Array(n);
    const segLength = new Float64Array(n).fill(4096);
    for (let i = 0; i < n; i++) segAddr[i] = this.address(frames[i]!, dfn, i);
    this.mapped++;
    return { device, nents: n, count: n, segAddr, segLength };
  }

  protected address(frame: number, _dfn: number | undefined, _i: number): bigint {
    return BigInt(frame) << 12n;
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

/**
 * An adapter whose caller supplies the device address, as with the 2024
 * PV-IOMMU: 39-bit aperture, each device's own mask; the frames go to
 * [dfn, dfn + n). It records the ranges the core had placed when each unmap
 * ran, and can be told to fail its next map.
 */
class CallerChoosesAdapter extends DirectAdapter {
  readonly masks = new Map<DeviceHandle, number>();
  /** The core's placed ranges for the device, as seen at each unmap. */
  readonly placedAtUnmap: string[] = [];
  failNext = false;

  constructor(private readonly spaces: () => DeviceAddressSpaces) {
    super();
  }

  override capabilities(device?: DeviceHandle): HypervisorCapabilities {
    const bits = device === undefined ? 39 : this.masks.get(device);
    if (bits === undefined) throw new KernelError("ENODEV", "device-not-registered");
    return { ...super.capabilities(), addressModel: "pviommu-bfn", coreChoosesIova: true, dmaMaskBits: Math.min(39, bits), iovaAperture: apertureOfMask(39) };
  }

  override mapForDevice(device: DeviceHandle, frames: Uint32Array, n: number, write: boolean, dfn?: number): DeviceMapping {
    if (this.failNext) {
      this.failNext = false;
      this.dfns.push(dfn);
      throw new KernelError("EADDRINUSE", "map-pages-failed", { done: 0 });
    }
    return super.mapForDevice(device, frames, n, write, dfn);
  }

  override unmapForDevice(mapping?: DeviceMapping): void {
    super.unmapForDevice();
    this.placedAtUnmap.push(rangesOf(this.spaces(), mapping!.device));
  }

  protected override address(_frame: number, dfn: number | undefined, i: number): bigint {
    return BigInt(dfn! + i) << 12n;
  }
}

const TOP = 2 ** 27;
/** A device's placed ranges as "first-last" pages, lowest first. */
const rangesOf = (spaces: DeviceAddressSpaces, device: DeviceHandle): string => spaces.placedRanges(device).map((r) => `${r.pfnLo}-${r.pfnHi}`).join(" ");

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

  it("places nothing where the adapter allocates device addresses itself", () => {
    const t = api.mapForDevice(f.device!, { start: 0x10, npages: 3 }, IOMMU_READ, gpu);
    expect(adapter.dfns).to.deep.equal([undefined]);
    api.release(t.handle);
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

describe("translate API: device addresses the core chooses", () => {
  let f: Fixture;
  let adapter: CallerChoosesAdapter;
  let spaces: DeviceAddressSpaces;
  let api: TranslateApi;
  const gpu: DeviceHandle = { name: "0000:01:00.0" };
  const narrow: DeviceHandle = { name: "0000:02:00.0" };
  const RW = IOMMU_READ | IOMMU_WRITE;
  const pages = (t: { dmaAddrs?: BigUint64Array }): number[] => [...t.dmaAddrs!].map((a) => Number(a >> 12n));
  const caught = (fn: () => unknown): KernelError => {
    try {
      fn();
    } catch (e) {
      if (e instanceof KernelError) return e;
      throw e;
    }
    throw new Error("nothing thrown");
  };

  beforeEach(async () => {
    f = await Fixture.create({ variant: "mdev-only" });
    expect(await f.map()).to.equal(0);
    spaces = new DeviceAddressSpaces();
    adapter = new CallerChoosesAdapter(() => spaces);
    for (const [d, bits] of [[gpu, 64], [narrow, 32]] as const) {
      adapter.devices.add(d);
      adapter.masks.set(d, bits);
    }
    const vm = container.createChildContainer();
    vm.register(IHypervisorAdapter, { useValue: adapter });
    vm.register(DeviceAddressSpaces, { useValue: spaces });
    api = vm.resolve(TranslateApi);
    api.attach("vm0", f.device!);
  });

  afterEach(async () => {
    expect(api.liveCount()).to.equal(0);
    expect(spaces.placedRanges(gpu)).to.deep.equal([]);
    api.dispose();
    await f.teardown();
    expect(f.leaks()).to.deep.equal(NO_LEAKS);
  });

  it("places top-down from min(mask, aperture), a power of two below 32 pages, size-aligned, and gives the first page to the map", () => {
    const t1 = api.mapForDevice(f.device!, { start: 0x10, npages: 3 }, RW, gpu);
    const t2 = api.mapForDevice(f.device!, { start: 0x100, npages: 300 }, RW, gpu);
    const t3 = api.mapForDevice(f.device!, [0x20], IOMMU_READ, narrow);
    expect(adapter.dfns).to.deep.equal([TOP - 4, TOP - 512, 2 ** 20 - 1]);
    expect(pages(t1)).to.deep.equal([TOP - 4, TOP - 3, TOP - 2]);
    expect(pages(t2).slice(-1)).to.deep.equal([TOP - 512 + 299]);
    expect(pages(t3)).to.deep.equal([2 ** 20 - 1]);
    expect(rangesOf(spaces, gpu)).to.equal(`${TOP - 512}-${TOP - 213} ${TOP - 4}-${TOP - 1}`);
    expect(rangesOf(spaces, narrow)).to.equal(`${2 ** 20 - 1}-${2 ** 20 - 1}`);
    for (const t of [t1, t2, t3]) api.release(t.handle);
    expect(spaces.placedRanges(narrow)).to.deep.equal([]);
  });

  it("reuses a range once its translation is released", () => {
    const t1 = api.mapForDevice(f.device!, { start: 0x10, npages: 3 }, RW, gpu);
    const t2 = api.mapForDevice(f.device!, { start: 0x100, npages: 300 }, RW, gpu);
    api.release(t1.handle);
    const t3 = api.mapForDevice(f.device!, { start: 0x40, npages: 3 }, RW, gpu);
    expect(adapter.dfns).to.deep.equal([TOP - 4, TOP - 512, TOP - 4]);
    api.release(t2.handle);
    api.release(t3.handle);
  });

  it("frees each range exactly once, after the adapter unmapped it: on release and on invalidation", () => {
    const free = sinon.spy(spaces, "freeIova");
    const a = api.mapForDevice(f.device!, { start: 0x100, npages: 4 }, RW, gpu);
    const b = api.mapForDevice(f.device!, { start: 0x200, npages: 2 }, RW, gpu);
    const c = api.mapForDevice(f.device!, { start: 0x300, npages: 1 }, RW, gpu);
    expect(adapter.dfns).to.deep.equal([TOP - 4, TOP - 6, TOP - 7]);
    adapter.invalidate({ vm: "vm0", firstGfn: 0x101, npages: 0x100, reason: "balloon" });
    expect(api.liveCount()).to.equal(1);
    expect(free.args).to.deep.equal([
      [gpu, TOP - 4],
      [gpu, TOP - 6],
    ]);
    // Each unmap ran while its own range was still placed.
    expect(adapter.placedAtUnmap).to.deep.equal([`${TOP - 7}-${TOP - 7} ${TOP - 6}-${TOP - 5} ${TOP - 4}-${TOP - 1}`, `${TOP - 7}-${TOP - 7} ${TOP - 6}-${TOP - 5}`]);
    // A range given again after the invalidation is not freed by the revoked translation.
    const d = api.mapForDevice(f.device!, { start: 0x380, npages: 4 }, RW, gpu);
    expect(adapter.dfns[3]).to.equal(TOP - 4);
    expect(() => api.release(a.handle)).to.throw(VfioError).with.property("reason", "translate-unknown-handle");
    expect(rangesOf(spaces, gpu)).to.equal(`${TOP - 7}-${TOP - 7} ${TOP - 4}-${TOP - 1}`);
    api.release(c.handle);
    api.release(d.handle);
    expect(free.args.slice(2)).to.deep.equal([
      [gpu, TOP - 7],
      [gpu, TOP - 4],
    ]);
    expect(() => api.release(b.handle)).to.throw(VfioError);
    expect(free.callCount).to.equal(4);
  });

  it("frees the range at once when the map fails, and unpins", () => {
    adapter.failNext = true;
    const e = caught(() => api.mapForDevice(f.device!, { start: 0x10, npages: 8 }, RW, gpu));
    expect([e.code, e.reason]).to.deep.equal(["EADDRINUSE", "map-pages-failed"]);
    expect(spaces.placedRanges(gpu)).to.deep.equal([]);
    expect(f.host.phys.totalPins).to.equal(0);
    const t = api.mapForDevice(f.device!, { start: 0x10, npages: 8 }, RW, gpu);
    expect(adapter.dfns).to.deep.equal([TOP - 8, TOP - 8]);
    api.release(t.handle);
  });

  it("ENOMEM dma-mapping-error when no range fits, and ENODEV for a device the adapter does not know; nothing held", () => {
    const tiny: DeviceHandle = { name: "tiny" };
    adapter.devices.add(tiny);
    adapter.masks.set(tiny, 13);
    const t = api.mapForDevice(f.device!, [0x10], RW, tiny);
    expect(pages(t)).to.deep.equal([1]);
    const e = caught(() => api.mapForDevice(f.device!, [0x11], RW, tiny));
    expect([e.code, e.errno, e.reason, e.fields]).to.deep.equal(["ENOMEM", 12, "dma-mapping-error", { device: "tiny", npages: 1 }]);
    const stranger: DeviceHandle = { name: "stranger" };
    expect(caught(() => api.mapForDevice(f.device!, [0x11], RW, stranger)).code).to.equal("ENODEV");
    expect(spaces.placedRanges(stranger)).to.deep.equal([]);
    expect(adapter.dfns).to.deep.equal([1]);
    expect(f.host.phys.totalPins).to.equal(1);
    api.release(t.handle);
    expect(spaces.placedRanges(tiny)).to.deep.equal([]);
  });
});
