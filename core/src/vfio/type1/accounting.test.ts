/**
 * Page accounting of type1 (linux-vfio.md section 3.1, invariants 7 and 8):
 * what is charged to which mm and when, RLIMIT_MEMLOCK and CAP_IPC_LOCK, and
 * the charge-owner transfer of VFIO_DMA_MAP_FLAG_VADDR (section 2.1 "VADDR").
 *
 * Every number is exact: `mm.lockedVm` of each process, `dma.lockedVm` of each
 * mapping, and the host's FOLL_PIN count.
 */
import { expect } from "chai";
import { Fixture, iovaOf } from "../../testing/fixture.js";
import { expectKernelError } from "../../testing/errors.js";
import type { Process } from "../../host/process.js";
import type { BackingKind } from "../../host/memory-object.js";
import { VfioError } from "../../errors/kernel-error.js";
import { ERRNO } from "../../errors/errno.js";
import { pageOf, type Hva } from "../../address/address.js";
import { IOMMU_READ, IOMMU_WRITE, vfioPinPages } from "../vendor-api.js";
import { VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_VADDR, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_VADDR } from "./type1-iommu.js";
import { VFIO_IOMMU_UNMAP_DMA } from "../uapi.js";

const PAGE = 4096n;
const RW = IOMMU_READ | IOMMU_WRITE;
const MAP_RW = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
/** The fixture's guest RAM: 4 MiB. */
const GUEST_PAGES = 1024;
const GUEST_BYTES = BigInt(GUEST_PAGES) * PAGE;
/** The memlock-limited variant's RLIMIT_MEMLOCK, in pages. */
const LIMIT_PAGES = 64;
const LIMIT_BYTES = BigInt(LIMIT_PAGES) * PAGE;
const UNTOUCHED = 0xdeadbeef;

async function invalidateVaddr(f: Fixture, iova: bigint, size: bigint): Promise<void> {
  const arg = { argsz: 24, flags: VFIO_DMA_UNMAP_FLAG_VADDR, iova, size };
  expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, arg)).to.equal(0);
  expect(arg.size).to.equal(size);
  f.check();
}

/** A second process that received the container fd (SCM_RIGHTS), as a live-updated QEMU or a helper does. */
function withContainerFd(f: Fixture, p: Process): number {
  return p.installFile(f.qemu.files.get(f.containerFd)!);
}

const pinnedWarn = (p: Process): string => `vfio_pin_page_external: Task ${p.comm} (${p.pid}) RLIMIT_MEMLOCK (${p.rlimitMemlock}) exceeded`;
const remoteWarn = (limitPages: number): string => `vfio_pin_pages_remote: RLIMIT_MEMLOCK (${limitPages * 4096}) exceeded`;

describe("type1 accounting: what is charged, and when", () => {
  for (const variant of ["mdev-only", "memlock-limited"] as const) {
    it(`${variant}: charges 1 page on the first pin of an IOVA only, and uncharges it at the last unpin`, async () => {
      const f = await Fixture.create({ variant });
      expect(await f.map()).to.equal(0);
      const dma = f.dmaAt(0);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0, 0]);
      f.pin(3, 1);
      f.pin(3, 1);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([1, 1, 1]);
      f.pin(2, 4);
      expect(dma.refsAt(3)).to.equal(3);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([4, 4, 4]);
      f.unpin(3, 1);
      f.unpin(3, 1);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([4, 4, 4]);
      f.unpin(2, 4);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0, 0]);
      await f.finish();
    });
  }

  for (const backing of ["scattered-4k", "thp", "hugetlbfs"] as const satisfies readonly BackingKind[]) {
    it(`iommu-backed: MAP_DMA pins and charges every page (${backing} backing), UNMAP_DMA gives it all back`, async () => {
      const f = await Fixture.create({ variant: "iommu-backed", backing });
      expect(await f.map()).to.equal(0);
      f.check();
      const dma = f.dmaAt(0);
      expect(dma.lockedVm).to.equal(GUEST_PAGES);
      expect(f.qemu.mm.lockedVm).to.equal(GUEST_PAGES);
      expect(f.host.phys.totalPins).to.equal(GUEST_PAGES);
      expect(f.iommu.domains[0]!.domain.mappedPages).to.equal(GUEST_PAGES);
      expect(f.host.phys.pins[f.iommu.domains[0]!.domain.iovaToPfn(517)]).to.equal(1);
      await f.unmapAll();
      expect([f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0]);
      await f.finish();
    });
  }

  it("mixed: external pins ride on MAP_DMA's charge: a second host pin, no charge", async () => {
    const f = await Fixture.create({ variant: "mixed" });
    expect(await f.map()).to.equal(0);
    const dma = f.dmaAt(0);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, GUEST_PAGES, GUEST_PAGES]);
    const frames = f.pin(100, 16);
    f.pin(100, 16);
    expect(frames.every((fr) => f.host.phys.pins[fr] === 2)).to.equal(true);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, GUEST_PAGES, GUEST_PAGES + 16]);
    f.unpin(100, 16);
    f.unpin(100, 16);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, GUEST_PAGES, GUEST_PAGES]);
    await f.finish();
  });

  for (const variant of ["iommu-backed", "mixed"] as const) {
    it(`${variant}: reserved (PFNMAP) pages are mapped but never pinned nor charged`, async () => {
      const f = await Fixture.create({ variant });
      expect(await f.map()).to.equal(0);
      const bar = f.qemu.mmap({ length: 16n * PAGE, backing: "pfnmap" });
      expect(await f.mapFrom(f.qemu, f.containerFd, bar, 1n << 32n, 16n * PAGE, MAP_RW)).to.equal(0);
      f.check();
      const barDma = f.dmaAt(pageOf(1n << 32n));
      expect(barDma.lockedVm).to.equal(0);
      expect(f.qemu.mm.lockedVm).to.equal(GUEST_PAGES);
      expect(f.host.phys.totalPins).to.equal(GUEST_PAGES);
      expect(f.iommu.domains[0]!.domain.mappedPages).to.equal(GUEST_PAGES + 16);
      expect(f.iommu.domains[0]!.domain.iovaToPfn(pageOf(1n << 32n))).to.equal(f.qemu.mm.translate(pageOf(bar)));
      await f.unmapAll();
      expect([f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0]);
      await f.finish();
    });
  }

  for (const variant of ["mdev-only", "mixed"] as const) {
    it(`${variant}: repeated pins of the same pages never charge twice`, async () => {
      const f = await Fixture.create({ variant });
      expect(await f.map()).to.equal(0);
      const base = variant === "mixed" ? GUEST_PAGES : 0;
      for (let k = 0; k < 5; k++) f.pin(40, 8);
      const dma = f.dmaAt(0);
      expect(dma.refsAt(40)).to.equal(5);
      expect(f.qemu.mm.lockedVm).to.equal(base + (variant === "mixed" ? 0 : 8));
      expect(dma.lockedVm).to.equal(f.qemu.mm.lockedVm);
      expect(f.host.phys.totalPins).to.equal(base + 8);
      for (let k = 0; k < 5; k++) f.unpin(40, 8);
      expect(f.qemu.mm.lockedVm).to.equal(base);
      await f.finish();
    });
  }

  it("iommu-backed: two MAP_DMAs of the same vaddr pin and charge twice (no cross-mapping dedup)", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    expect(await f.map(0n)).to.equal(0);
    expect(await f.map(16n << 20n)).to.equal(0);
    f.check();
    expect(f.dmaAt(0).lockedVm).to.equal(GUEST_PAGES);
    expect(f.dmaAt(pageOf(16n << 20n)).lockedVm).to.equal(GUEST_PAGES);
    expect(f.qemu.mm.lockedVm).to.equal(2 * GUEST_PAGES);
    expect(f.host.phys.totalPins).to.equal(2 * GUEST_PAGES);
    expect(f.host.phys.pins[f.qemu.mm.translate(pageOf(f.guestRam) + 9)]).to.equal(2);
    await f.finish();
  });

  it("mdev-only: one host page pinned through two mappings is charged once per mapping", async () => {
    const f = await Fixture.create({ variant: "mdev-only" });
    expect(await f.map(0n)).to.equal(0);
    expect(await f.map(16n << 20n)).to.equal(0);
    const a = f.pin(9, 1)[0]!;
    const b = f.pin(pageOf(16n << 20n) + 9, 1)[0]!;
    expect(b).to.equal(a);
    expect(f.host.phys.pins[a]).to.equal(2);
    expect([f.dmaAt(0).lockedVm, f.dmaAt(pageOf(16n << 20n)).lockedVm, f.qemu.mm.lockedVm]).to.deep.equal([1, 1, 2]);
    await f.unmapAll();
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0]);
    await f.finish();
  });

  it("mdev-only: a failed vfio_pfn allocation or an interrupted charge undoes the pins and charges of the call", async () => {
    const f = await Fixture.create({ variant: "mdev-only" });
    expect(await f.map()).to.equal(0);
    f.pin(1, 1);
    // The 2nd allocation is page 2's vfio_pfn (page 1 only takes a reference): pages 0 and 1 succeeded before it.
    f.host.faults.failNth(2, ["kzalloc"]);
    const pages = new Uint32Array(4).fill(UNTOUCHED);
    let err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(0), 4, RW, pages), "ENOMEM", "vfio-pfn-alloc", VfioError);
    expect(f.host.faults.fired).to.equal("kzalloc");
    expect(err.fields["done"]).to.equal(2);
    f.check();
    expect([...pages]).to.deep.equal([0, 0, 0, UNTOUCHED]);
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins, f.dmaAt(0).refsAt(1), f.dmaAt(0).vpfnCount]).to.deep.equal([1, 1, 1, 1]);
    // mmap_write_lock_killable fails for page 2's charge: -EINTR, no pr_warn (only -ENOMEM logs).
    f.host.faults.failNth(2, ["mmap_lock"]);
    pages.fill(UNTOUCHED);
    err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(0), 4, RW, pages), "EINTR", "pin-external-failed", VfioError);
    expect(f.host.faults.fired).to.equal("mmap_lock");
    expect(err.fields["done"]).to.equal(2);
    f.check();
    expect([...pages]).to.deep.equal([0, 0, 0, UNTOUCHED]);
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins, f.dmaAt(0).vpfnCount]).to.deep.equal([1, 1, 1]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    f.host.faults.disarm();
    f.unpin(1, 1);
    await f.finish();
  });
});

describe("type1 accounting: RLIMIT_MEMLOCK and CAP_IPC_LOCK", () => {
  it("memlock-limited: 64 pages pin, the 65th is -ENOMEM with a pr_warn, and a failing call is undone whole", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    expect(f.qemu.rlimitMemlock).to.equal(LIMIT_BYTES);
    expect(await f.map()).to.equal(0);
    const dma = f.dmaAt(0);
    f.pin(0, LIMIT_PAGES);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([64, 64, 64]);
    let err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(64), 1, RW, new Uint32Array(1)), "ENOMEM", "pin-external-failed", VfioError);
    expect(err.fields).to.deep.equal({ iova: 64n * PAGE, done: 0 });
    expect(f.host.kernel.messages).to.deep.equal([pinnedWarn(f.qemu)]);
    expect(f.host.kernel.messages[0]).to.equal("vfio_pin_page_external: Task qemu (100) RLIMIT_MEMLOCK (262144) exceeded");
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([64, 64, 64]);
    // Pinning again what is already pinned charges nothing, so it succeeds at the limit.
    f.pin(10, 20);
    expect(f.qemu.mm.lockedVm).to.equal(64);
    f.unpin(10, 20);
    // Free 4 pages, then pin 58..69: 58 and 59 take references, 60..63 are charged back to 64, 64 fails.
    f.unpin(60, 4);
    expect(f.qemu.mm.lockedVm).to.equal(60);
    const pages = new Uint32Array(12).fill(UNTOUCHED);
    err = expectKernelError(() => vfioPinPages(f.device!, iovaOf(58), 12, RW, pages), "ENOMEM", "pin-external-failed", VfioError);
    expect(err.fields["done"]).to.equal(6);
    f.check();
    expect([...pages]).to.deep.equal([0, 0, 0, 0, 0, 0, 0, ...new Array<number>(5).fill(UNTOUCHED)]);
    expect([dma.refsAt(58), dma.refsAt(59), dma.refsAt(60), dma.vpfnCount]).to.deep.equal([1, 1, 0, 60]);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([60, 60, 60]);
    expect(f.host.kernel.messages).to.deep.equal([pinnedWarn(f.qemu), pinnedWarn(f.qemu)]);
    await f.unmapAll();
    expect(f.qemu.mm.lockedVm).to.equal(0);
    await f.finish();
  });

  it("iommu-backed: MAP_DMA beyond RLIMIT_MEMLOCK is -ENOMEM with a pr_warn and leaves nothing pinned or charged", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    f.qemu.rlimitMemlock = LIMIT_BYTES;
    expect(await f.map(0n, 65n * PAGE)).to.equal(-ERRNO.ENOMEM);
    f.check();
    expect(f.host.kernel.messages).to.deep.equal([remoteWarn(LIMIT_PAGES)]);
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins, f.host.stats().mappings, f.iommu.dmaAvail]).to.deep.equal([0, 0, 0, 65535]);
    expect(await f.map(0n, LIMIT_BYTES)).to.equal(0);
    expect([f.qemu.mm.lockedVm, f.dmaAt(0).lockedVm, f.host.phys.totalPins]).to.deep.equal([64, 64, 64]);
    expect(await f.map(LIMIT_BYTES, PAGE, LIMIT_BYTES)).to.equal(-ERRNO.ENOMEM);
    f.check();
    expect(f.host.kernel.messages).to.deep.equal([remoteWarn(LIMIT_PAGES), remoteWarn(LIMIT_PAGES)]);
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins, f.host.stats().mappings, f.iommu.dmaAvail]).to.deep.equal([64, 64, 1, 65534]);
    await f.finish();
  });

  it("CAP_IPC_LOCK bypasses the limit but the pages still count (process option, iommu-backed)", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    const vmm = f.host.spawn({ comm: "vmm", memlockBytes: LIMIT_BYTES, capabilities: ["CAP_IPC_LOCK"] });
    const fd = withContainerFd(f, vmm);
    const ram = vmm.mmap({ length: 256n * PAGE });
    expect(await f.mapFrom(vmm, fd, ram, 0n, 256n * PAGE, MAP_RW)).to.equal(0);
    f.check();
    const dma = f.dmaAt(0);
    expect(dma.lockCap).to.equal(true);
    expect(dma.task).to.equal(vmm);
    expect([vmm.mm.lockedVm, dma.lockedVm, f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([256, 256, 0, 256]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    await f.finish({}, [vmm]);
  });

  it("CAP_IPC_LOCK bypasses the limit but the pages still count (memlock-limited, external pins)", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    f.qemu.setCapability("CAP_IPC_LOCK", true);
    expect(await f.map()).to.equal(0);
    f.pin(0, 100);
    expect([f.qemu.mm.lockedVm, f.dmaAt(0).lockedVm]).to.deep.equal([100, 100]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    await f.unmapAll();
    expect(f.qemu.mm.lockedVm).to.equal(0);
    await f.finish();
  });

  it("lock_cap is snapshotted at MAP_DMA: dropping CAP_IPC_LOCK afterwards does not limit the mapping's pins", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    f.qemu.setCapability("CAP_IPC_LOCK", true);
    expect(await f.map()).to.equal(0);
    f.qemu.setCapability("CAP_IPC_LOCK", false);
    expect(f.dmaAt(0).lockCap).to.equal(true);
    f.pin(0, 100);
    expect(f.qemu.mm.lockedVm).to.equal(100);
    // A mapping made without the capability is limited, and already over the limit.
    expect(await f.map(16n << 20n)).to.equal(0);
    expect(f.dmaAt(pageOf(16n << 20n)).lockCap).to.equal(false);
    expectKernelError(() => vfioPinPages(f.device!, iovaOf(pageOf(16n << 20n)), 1, RW, new Uint32Array(1)), "ENOMEM", "pin-external-failed", VfioError);
    expect(f.qemu.mm.lockedVm).to.equal(100);
    expect(f.host.kernel.messages).to.deep.equal([pinnedWarn(f.qemu)]);
    await f.unmapAll();
    expect(f.qemu.mm.lockedVm).to.equal(0);
    await f.finish();
  });

  it("lock_cap is snapshotted at MAP_DMA: granting CAP_IPC_LOCK afterwards does not lift the limit", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    expect(await f.map()).to.equal(0);
    f.qemu.setCapability("CAP_IPC_LOCK", true);
    expect(f.dmaAt(0).lockCap).to.equal(false);
    f.pin(0, LIMIT_PAGES);
    expectKernelError(() => vfioPinPages(f.device!, iovaOf(LIMIT_PAGES), 1, RW, new Uint32Array(1)), "ENOMEM", "pin-external-failed", VfioError);
    expect(f.qemu.mm.lockedVm).to.equal(LIMIT_PAGES);
    // A mapping made with the capability bypasses the limit.
    expect(await f.map(16n << 20n)).to.equal(0);
    expect(f.dmaAt(pageOf(16n << 20n)).lockCap).to.equal(true);
    f.pin(pageOf(16n << 20n), 10);
    expect([f.qemu.mm.lockedVm, f.dmaAt(0).lockedVm, f.dmaAt(pageOf(16n << 20n)).lockedVm]).to.deep.equal([74, 64, 10]);
    await f.unmapAll();
    expect(f.qemu.mm.lockedVm).to.equal(0);
    await f.finish();
  });

  it("the limit is the mapping task's (dma.task) and the charge lands on its mm, not on the device's process", async () => {
    // The device's process (qemu) has no limit; the mapping's process has 64 pages.
    const f = await Fixture.create({ variant: "mdev-only" });
    const mapper = f.host.spawn({ comm: "mapper", memlockBytes: LIMIT_BYTES });
    const fd = withContainerFd(f, mapper);
    const ram = mapper.mmap({ length: 128n * PAGE });
    expect(await f.mapFrom(mapper, fd, ram, 0n, 128n * PAGE, MAP_RW)).to.equal(0);
    expect(f.dmaAt(0).task).to.equal(mapper);
    f.pin(0, LIMIT_PAGES);
    expect([mapper.mm.lockedVm, f.qemu.mm.lockedVm]).to.deep.equal([64, 0]);
    expectKernelError(() => vfioPinPages(f.device!, iovaOf(LIMIT_PAGES), 1, RW, new Uint32Array(1)), "ENOMEM", "pin-external-failed", VfioError);
    expect(f.host.kernel.messages).to.deep.equal([`vfio_pin_page_external: Task mapper (${mapper.pid}) RLIMIT_MEMLOCK (262144) exceeded`]);
    // Unlike lock_cap, the rlimit is read when charging: raising it lets the next pin through.
    mapper.rlimitMemlock = 128n * PAGE;
    f.pin(LIMIT_PAGES, 1);
    expect([mapper.mm.lockedVm, f.dmaAt(0).lockedVm, f.qemu.mm.lockedVm]).to.deep.equal([65, 65, 0]);
    await f.unmapAll();
    expect(mapper.mm.lockedVm).to.equal(0);
    await f.finish({}, [mapper]);
  });

  it("the limit is the mapping task's: a limited device process pins beyond its own limit for an unlimited mapper", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    const mapper = f.host.spawn({ comm: "mapper" });
    const fd = withContainerFd(f, mapper);
    const ram = mapper.mmap({ length: 128n * PAGE });
    expect(await f.mapFrom(mapper, fd, ram, 0n, 128n * PAGE, MAP_RW)).to.equal(0);
    f.pin(0, 100);
    expect([mapper.mm.lockedVm, f.dmaAt(0).lockedVm, f.qemu.mm.lockedVm]).to.deep.equal([100, 100, 0]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    await f.unmapAll();
    expect(mapper.mm.lockedVm).to.equal(0);
    await f.finish({}, [mapper]);
  });
});

describe("type1 accounting: charge-owner transfer with VFIO_DMA_MAP_FLAG_VADDR", () => {
  /** Invalidates the whole guest mapping of an iommu-backed fixture and hands its memory object to a new process. */
  async function liveUpdate(f: Fixture, options: Parameters<Fixture["host"]["spawn"]>[0]): Promise<{ next: Process; fd: number; ram: Hva }> {
    await invalidateVaddr(f, 0n, GUEST_BYTES);
    const next = f.host.spawn(options);
    const fd = withContainerFd(f, next);
    const ram = next.mmap({ length: GUEST_BYTES, object: f.qemu.objectAt(f.guestRam) });
    return { next, fd, ram };
  }

  it("moves the mapping's charge from the old mm to the new one; pins and IOMMU mappings stay", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    expect(await f.map()).to.equal(0);
    const dma = f.dmaAt(0);
    const domain = f.iommu.domains[0]!.domain;
    const frame = domain.iovaToPfn(33);
    const { next, fd, ram } = await liveUpdate(f, { comm: "qemu-next" });
    expect([dma.vaddrInvalid, f.iommu.vaddrInvalidCount]).to.deep.equal([true, 1]);
    // Invalidation unpins and uncharges nothing.
    expect([f.qemu.mm.lockedVm, next.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, 0, GUEST_PAGES]);
    const updated: boolean[] = [];
    const sub = f.iommu.on("vaddrUpdated", (e) => updated.push(e.ownerChanged));
    expect(await f.mapFrom(next, fd, ram, 0n, GUEST_BYTES, VFIO_DMA_MAP_FLAG_VADDR)).to.equal(0);
    sub.dispose();
    f.check();
    expect(updated).to.deep.equal([true]);
    expect([f.qemu.mm.lockedVm, next.mm.lockedVm, dma.lockedVm]).to.deep.equal([0, GUEST_PAGES, GUEST_PAGES]);
    expect(dma.mm).to.equal(next.mm);
    expect(dma.task).to.equal(next);
    expect(dma.lockCap).to.equal(false);
    expect(dma.vaddrPage).to.equal(pageOf(ram));
    expect([dma.vaddrInvalid, f.iommu.vaddrInvalidCount]).to.deep.equal([false, 0]);
    expect(f.host.phys.totalPins).to.equal(GUEST_PAGES);
    expect(domain.iovaToPfn(33)).to.equal(frame);
    expect(next.mm.translate(pageOf(ram) + 33)).to.equal(frame);
    // UNMAP_DMA now uncharges the new owner.
    await f.unmapAll();
    expect([f.qemu.mm.lockedVm, next.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0, 0]);
    await f.finish({}, [next]);
  });

  it("a new owner over its RLIMIT_MEMLOCK without CAP_IPC_LOCK is -ENOMEM and nothing moves; with it the charge moves", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    expect(await f.map()).to.equal(0);
    const dma = f.dmaAt(0);
    const { next, fd, ram } = await liveUpdate(f, { comm: "qemu-next", memlockBytes: LIMIT_BYTES });
    expect(await f.mapFrom(next, fd, ram, 0n, GUEST_BYTES, VFIO_DMA_MAP_FLAG_VADDR)).to.equal(-ERRNO.ENOMEM);
    f.check();
    expect([f.qemu.mm.lockedVm, next.mm.lockedVm, dma.lockedVm]).to.deep.equal([GUEST_PAGES, 0, GUEST_PAGES]);
    expect(dma.mm).to.equal(f.qemu.mm);
    expect(dma.task).to.equal(f.qemu);
    expect(dma.vaddrPage).to.equal(pageOf(f.guestRam));
    expect([dma.vaddrInvalid, f.iommu.vaddrInvalidCount]).to.deep.equal([true, 1]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    next.setCapability("CAP_IPC_LOCK", true);
    expect(await f.mapFrom(next, fd, ram, 0n, GUEST_BYTES, VFIO_DMA_MAP_FLAG_VADDR)).to.equal(0);
    f.check();
    expect([f.qemu.mm.lockedVm, next.mm.lockedVm]).to.deep.equal([0, GUEST_PAGES]);
    expect(dma.lockCap).to.equal(true);
    expect(f.iommu.vaddrInvalidCount).to.equal(0);
    await f.finish({}, [next]);
  });

  it("a VADDR update from the same mm moves nothing, and keeps the lock_cap taken at MAP_DMA", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    expect(await f.map()).to.equal(0);
    const dma = f.dmaAt(0);
    await invalidateVaddr(f, 0n, GUEST_BYTES);
    const again = f.qemu.mmap({ length: GUEST_BYTES, object: f.qemu.objectAt(f.guestRam) });
    f.qemu.setCapability("CAP_IPC_LOCK", true);
    const updated: boolean[] = [];
    const sub = f.iommu.on("vaddrUpdated", (e) => updated.push(e.ownerChanged));
    expect(await f.mapFrom(f.qemu, f.containerFd, again, 0n, GUEST_BYTES, VFIO_DMA_MAP_FLAG_VADDR)).to.equal(0);
    sub.dispose();
    f.check();
    expect(updated).to.deep.equal([false]);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, GUEST_PAGES, GUEST_PAGES]);
    expect(dma.vaddrPage).to.equal(pageOf(again));
    expect(dma.lockCap).to.equal(false);
    expect(f.iommu.vaddrInvalidCount).to.equal(0);
    await f.finish();
  });

  it("the old mm already exited: the new owner is charged, the dead mm is not uncharged", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    const old = f.host.spawn({ comm: "old" });
    const oldFd = withContainerFd(f, old);
    const oldRam = old.mmap({ length: 16n * PAGE });
    expect(await f.mapFrom(old, oldFd, oldRam, 0n, 16n * PAGE, MAP_RW)).to.equal(0);
    expect(old.mm.lockedVm).to.equal(16);
    await invalidateVaddr(f, 0n, 16n * PAGE);
    const next = f.host.spawn({ comm: "next" });
    const fd = withContainerFd(f, next);
    const ram = next.mmap({ length: 16n * PAGE, object: old.objectAt(oldRam) });
    old.exit();
    expect(await f.mapFrom(next, fd, ram, 0n, 16n * PAGE, VFIO_DMA_MAP_FLAG_VADDR)).to.equal(0);
    f.check();
    expect([next.mm.lockedVm, f.dmaAt(0).lockedVm, f.host.phys.totalPins]).to.deep.equal([16, 16, 16]);
    expect(f.dmaAt(0).mm).to.equal(next.mm);
    // mmget_not_zero(old mm) failed, so its counter was left as the exit found it.
    expect(old.mm.lockedVm).to.equal(16);
    await f.unmapAll();
    expect([next.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0]);
    await f.finish({ lockedVm: 16 }, [next]);
  });

  it("VADDR errors: -ENOENT with no mapping there, -EINVAL for a valid vaddr, an inexact range or a prot flag", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    expect(await f.map()).to.equal(0);
    const map = (flags: number, iova: bigint, size: bigint, vaddr: bigint = f.guestRam): Promise<number> => f.mapFrom(f.qemu, f.containerFd, vaddr, iova, size, flags);
    expect(await map(VFIO_DMA_MAP_FLAG_VADDR, 1n << 32n, 16n * PAGE)).to.equal(-ERRNO.ENOENT);
    // The mapping's vaddr was never invalidated.
    expect(await map(VFIO_DMA_MAP_FLAG_VADDR, 0n, GUEST_BYTES)).to.equal(-ERRNO.EINVAL);
    await invalidateVaddr(f, 0n, GUEST_BYTES);
    // Invalidating again is -EINVAL and changes nothing.
    expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, { argsz: 24, flags: VFIO_DMA_UNMAP_FLAG_VADDR, iova: 0n, size: GUEST_BYTES })).to.equal(-ERRNO.EINVAL);
    expect(f.iommu.vaddrInvalidCount).to.equal(1);
    expect(await map(VFIO_DMA_MAP_FLAG_VADDR, 0n, GUEST_BYTES / 2n)).to.equal(-ERRNO.EINVAL);
    expect(await map(VFIO_DMA_MAP_FLAG_VADDR, PAGE, GUEST_BYTES - PAGE, f.guestRam + PAGE)).to.equal(-ERRNO.EINVAL);
    expect(await map(VFIO_DMA_MAP_FLAG_VADDR | VFIO_DMA_MAP_FLAG_READ, 0n, GUEST_BYTES)).to.equal(-ERRNO.EINVAL);
    expect(await map(0, 0n, GUEST_BYTES)).to.equal(-ERRNO.EINVAL);
    // A plain MAP_DMA over the invalidated mapping still overlaps it.
    expect(await map(MAP_RW, 0n, GUEST_BYTES)).to.equal(-ERRNO.EEXIST);
    f.check();
    const dma = f.dmaAt(0);
    expect([dma.vaddrInvalid, f.iommu.vaddrInvalidCount, f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([true, 1, GUEST_PAGES, GUEST_PAGES]);
    expect(await map(VFIO_DMA_MAP_FLAG_VADDR, 0n, GUEST_BYTES)).to.equal(0);
    expect([dma.vaddrInvalid, f.iommu.vaddrInvalidCount]).to.deep.equal([false, 0]);
    f.check();
    await f.finish();
  });
});
