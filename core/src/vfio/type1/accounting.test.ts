/**
 * Page accounting of type1 (linux-vfio.md section 3.1, invariants 7 and 8):
 * what is charged to which mm and when, RLIMIT_MEMLOCK and CAP_IPC_LOCK, and
 * the charge-owner transfer of VFIO_DMA_MAP_FLAG_VADDR (section 2.1 "VADDR").
 *
 * Every number is exact: `mm.lockedVm` of each process, `dma.lockedVm` of each
 * mapping, and the host's FOLL_PIN count.
 */
import { expect } from "chai";
import { Fixture, NO_LEAKS, type Leaks } from "../../testing/fixture.js";
import type { Process } from "../../host/process.js";
import type { BackingKind } from "../../host/memory-object.js";
import { VfioError } from "../../errors/kernel-error.js";
import { ERRNO, type ErrnoName } from "../../errors/errno.js";
import { pageOf, type Hva, type Iova } from "../../address/address.js";
import { IOMMU_READ, IOMMU_WRITE, vfioPinPages, vfioUnpinPages } from "../vendor-api.js";
import { VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_VADDR, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL, VFIO_DMA_UNMAP_FLAG_VADDR } from "./type1-iommu.js";
import { VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA } from "../uapi.js";
import type { VfioDma } from "./vfio-dma.js";

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

const iovaOf = (page: number): Iova => (BigInt(page) << 12n) as Iova;

function expectErr(fn: () => unknown, code: ErrnoName, reason: string): VfioError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected ${code} (${reason})`).to.be.instanceOf(VfioError);
  const err = caught as VfioError;
  expect({ code: err.code, errno: err.errno, reason: err.reason }).to.deep.equal({ code, errno: ERRNO[code], reason });
  return err;
}

const dmaAt = (f: Fixture, page: number): VfioDma => {
  const dma = f.iommu.dmas.get(page);
  expect(dma, `a mapping at IOVA page ${page}`).to.not.equal(undefined);
  return dma!;
};

function pin(f: Fixture, page: number, npage: number): Uint32Array {
  const pages = new Uint32Array(npage);
  expect(vfioPinPages(f.device!, iovaOf(page), npage, RW, pages)).to.equal(npage);
  for (let i = 0; i < npage; i++) f.pinned.set(page + i, (f.pinned.get(page + i) ?? 0) + 1);
  f.check();
  return pages;
}

function unpin(f: Fixture, page: number, npage: number): void {
  vfioUnpinPages(f.device!, iovaOf(page), npage);
  for (let i = 0; i < npage; i++) {
    const refs = (f.pinned.get(page + i) ?? 0) - 1;
    if (refs > 0) f.pinned.set(page + i, refs);
    else f.pinned.delete(page + i);
  }
  f.check();
}

function ioctlMap(f: Fixture, current: Process, fd: number, flags: number, vaddr: bigint, iova: bigint, size: bigint): Promise<number> {
  return f.host.ioctl(current, fd, VFIO_IOMMU_MAP_DMA, { argsz: 32, flags, vaddr, iova, size });
}

async function invalidateVaddr(f: Fixture, iova: bigint, size: bigint): Promise<void> {
  const arg = { argsz: 24, flags: VFIO_DMA_UNMAP_FLAG_VADDR, iova, size };
  expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, arg)).to.equal(0);
  expect(arg.size).to.equal(size);
  f.check();
}

async function unmapAll(f: Fixture): Promise<void> {
  const arg = { argsz: 24, flags: VFIO_DMA_UNMAP_FLAG_ALL, iova: 0n, size: 0n };
  expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, arg)).to.equal(0);
  expect(f.pinned.size).to.equal(0);
  f.check();
}

/** A second process that received the container fd (SCM_RIGHTS), as a live-updated QEMU or a helper does. */
function withContainerFd(f: Fixture, p: Process): number {
  return p.installFile(f.qemu.files.get(f.containerFd)!);
}

async function finish(f: Fixture, expected: Partial<Leaks> = {}, others: readonly Process[] = []): Promise<void> {
  await f.teardown();
  for (const p of others) p.exit();
  expect(f.leaks()).to.deep.equal({ ...NO_LEAKS, ...expected });
}

const pinnedWarn = (p: Process): string => `vfio_pin_page_external: Task ${p.comm} (${p.pid}) RLIMIT_MEMLOCK (${p.rlimitMemlock}) exceeded`;
const remoteWarn = (limitPages: number): string => `vfio_pin_pages_remote: RLIMIT_MEMLOCK (${limitPages * 4096}) exceeded`;

describe("type1 accounting: what is charged, and when", () => {
  for (const variant of ["mdev-only", "memlock-limited"] as const) {
    it(`${variant}: charges 1 page on the first pin of an IOVA only, and uncharges it at the last unpin`, async () => {
      const f = await Fixture.create({ variant });
      expect(await f.map()).to.equal(0);
      const dma = dmaAt(f, 0);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0, 0]);
      pin(f, 3, 1);
      pin(f, 3, 1);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([1, 1, 1]);
      pin(f, 2, 4);
      expect(dma.refsAt(3)).to.equal(3);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([4, 4, 4]);
      unpin(f, 3, 1);
      unpin(f, 3, 1);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([4, 4, 4]);
      unpin(f, 2, 4);
      expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0, 0]);
      await finish(f);
    });
  }

  for (const backing of ["scattered-4k", "thp", "hugetlbfs"] as const satisfies readonly BackingKind[]) {
    it(`iommu-backed: MAP_DMA pins and charges every page (${backing} backing), UNMAP_DMA gives it all back`, async () => {
      const f = await Fixture.create({ variant: "iommu-backed", backing });
      expect(await f.map()).to.equal(0);
      f.check();
      const dma = dmaAt(f, 0);
      expect(dma.lockedVm).to.equal(GUEST_PAGES);
      expect(f.qemu.mm.lockedVm).to.equal(GUEST_PAGES);
      expect(f.host.phys.totalPins).to.equal(GUEST_PAGES);
      expect(f.iommu.domains[0]!.domain.mappedPages).to.equal(GUEST_PAGES);
      expect(f.host.phys.pins[f.iommu.domains[0]!.domain.iovaToPfn(517)]).to.equal(1);
      await unmapAll(f);
      expect([f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0]);
      await finish(f);
    });
  }

  it("mixed: external pins ride on MAP_DMA's charge: a second host pin, no charge", async () => {
    const f = await Fixture.create({ variant: "mixed" });
    expect(await f.map()).to.equal(0);
    const dma = dmaAt(f, 0);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, GUEST_PAGES, GUEST_PAGES]);
    const frames = pin(f, 100, 16);
    pin(f, 100, 16);
    expect(frames.every((fr) => f.host.phys.pins[fr] === 2)).to.equal(true);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, GUEST_PAGES, GUEST_PAGES + 16]);
    unpin(f, 100, 16);
    unpin(f, 100, 16);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, GUEST_PAGES, GUEST_PAGES]);
    await finish(f);
  });

  for (const variant of ["iommu-backed", "mixed"] as const) {
    it(`${variant}: reserved (PFNMAP) pages are mapped but never pinned nor charged`, async () => {
      const f = await Fixture.create({ variant });
      expect(await f.map()).to.equal(0);
      const bar = f.qemu.mmap({ length: 16n * PAGE, backing: "pfnmap" });
      expect(await ioctlMap(f, f.qemu, f.containerFd, MAP_RW, bar, 1n << 32n, 16n * PAGE)).to.equal(0);
      f.check();
      const barDma = dmaAt(f, pageOf(1n << 32n));
      expect(barDma.lockedVm).to.equal(0);
      expect(f.qemu.mm.lockedVm).to.equal(GUEST_PAGES);
      expect(f.host.phys.totalPins).to.equal(GUEST_PAGES);
      expect(f.iommu.domains[0]!.domain.mappedPages).to.equal(GUEST_PAGES + 16);
      expect(f.iommu.domains[0]!.domain.iovaToPfn(pageOf(1n << 32n))).to.equal(f.qemu.mm.translate(pageOf(bar)));
      await unmapAll(f);
      expect([f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0]);
      await finish(f);
    });
  }

  for (const variant of ["mdev-only", "mixed"] as const) {
    it(`${variant}: repeated pins of the same pages never charge twice`, async () => {
      const f = await Fixture.create({ variant });
      expect(await f.map()).to.equal(0);
      const base = variant === "mixed" ? GUEST_PAGES : 0;
      for (let k = 0; k < 5; k++) pin(f, 40, 8);
      const dma = dmaAt(f, 0);
      expect(dma.refsAt(40)).to.equal(5);
      expect(f.qemu.mm.lockedVm).to.equal(base + (variant === "mixed" ? 0 : 8));
      expect(dma.lockedVm).to.equal(f.qemu.mm.lockedVm);
      expect(f.host.phys.totalPins).to.equal(base + 8);
      for (let k = 0; k < 5; k++) unpin(f, 40, 8);
      expect(f.qemu.mm.lockedVm).to.equal(base);
      await finish(f);
    });
  }

  it("iommu-backed: two MAP_DMAs of the same vaddr pin and charge twice (no cross-mapping dedup)", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    expect(await f.map(0n)).to.equal(0);
    expect(await f.map(16n << 20n)).to.equal(0);
    f.check();
    expect(dmaAt(f, 0).lockedVm).to.equal(GUEST_PAGES);
    expect(dmaAt(f, pageOf(16n << 20n)).lockedVm).to.equal(GUEST_PAGES);
    expect(f.qemu.mm.lockedVm).to.equal(2 * GUEST_PAGES);
    expect(f.host.phys.totalPins).to.equal(2 * GUEST_PAGES);
    expect(f.host.phys.pins[f.qemu.mm.translate(pageOf(f.guestRam) + 9)]).to.equal(2);
    await finish(f);
  });

  it("mdev-only: one host page pinned through two mappings is charged once per mapping", async () => {
    const f = await Fixture.create({ variant: "mdev-only" });
    expect(await f.map(0n)).to.equal(0);
    expect(await f.map(16n << 20n)).to.equal(0);
    const a = pin(f, 9, 1)[0]!;
    const b = pin(f, pageOf(16n << 20n) + 9, 1)[0]!;
    expect(b).to.equal(a);
    expect(f.host.phys.pins[a]).to.equal(2);
    expect([dmaAt(f, 0).lockedVm, dmaAt(f, pageOf(16n << 20n)).lockedVm, f.qemu.mm.lockedVm]).to.deep.equal([1, 1, 2]);
    await unmapAll(f);
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0]);
    await finish(f);
  });

  it("mdev-only: a failed vfio_pfn allocation or an interrupted charge undoes the pins and charges of the call", async () => {
    const f = await Fixture.create({ variant: "mdev-only" });
    expect(await f.map()).to.equal(0);
    pin(f, 1, 1);
    // The 2nd allocation is page 2's vfio_pfn (page 1 only takes a reference): pages 0 and 1 succeeded before it.
    f.host.faults.failNth(2, ["kzalloc"]);
    const pages = new Uint32Array(4).fill(UNTOUCHED);
    let err = expectErr(() => vfioPinPages(f.device!, iovaOf(0), 4, RW, pages), "ENOMEM", "vfio-pfn-alloc");
    expect(f.host.faults.fired).to.equal("kzalloc");
    expect(err.fields["done"]).to.equal(2);
    f.check();
    expect([...pages]).to.deep.equal([0, 0, 0, UNTOUCHED]);
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins, dmaAt(f, 0).refsAt(1), dmaAt(f, 0).vpfnCount]).to.deep.equal([1, 1, 1, 1]);
    // mmap_write_lock_killable fails for page 2's charge: -EINTR, no pr_warn (only -ENOMEM logs).
    f.host.faults.failNth(2, ["mmap_lock"]);
    pages.fill(UNTOUCHED);
    err = expectErr(() => vfioPinPages(f.device!, iovaOf(0), 4, RW, pages), "EINTR", "pin-external-failed");
    expect(f.host.faults.fired).to.equal("mmap_lock");
    expect(err.fields["done"]).to.equal(2);
    f.check();
    expect([...pages]).to.deep.equal([0, 0, 0, UNTOUCHED]);
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins, dmaAt(f, 0).vpfnCount]).to.deep.equal([1, 1, 1]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    f.host.faults.disarm();
    unpin(f, 1, 1);
    await finish(f);
  });
});

describe("type1 accounting: RLIMIT_MEMLOCK and CAP_IPC_LOCK", () => {
  it("memlock-limited: 64 pages pin, the 65th is -ENOMEM with a pr_warn, and a failing call is undone whole", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    expect(f.qemu.rlimitMemlock).to.equal(LIMIT_BYTES);
    expect(await f.map()).to.equal(0);
    const dma = dmaAt(f, 0);
    pin(f, 0, LIMIT_PAGES);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([64, 64, 64]);
    let err = expectErr(() => vfioPinPages(f.device!, iovaOf(64), 1, RW, new Uint32Array(1)), "ENOMEM", "pin-external-failed");
    expect(err.fields).to.deep.equal({ iova: 64n * PAGE, done: 0 });
    expect(f.host.kernel.messages).to.deep.equal([pinnedWarn(f.qemu)]);
    expect(f.host.kernel.messages[0]).to.equal("vfio_pin_page_external: Task qemu (100) RLIMIT_MEMLOCK (262144) exceeded");
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([64, 64, 64]);
    // Pinning again what is already pinned charges nothing, so it succeeds at the limit.
    pin(f, 10, 20);
    expect(f.qemu.mm.lockedVm).to.equal(64);
    unpin(f, 10, 20);
    // Free 4 pages, then pin 58..69: 58 and 59 take references, 60..63 are charged back to 64, 64 fails.
    unpin(f, 60, 4);
    expect(f.qemu.mm.lockedVm).to.equal(60);
    const pages = new Uint32Array(12).fill(UNTOUCHED);
    err = expectErr(() => vfioPinPages(f.device!, iovaOf(58), 12, RW, pages), "ENOMEM", "pin-external-failed");
    expect(err.fields["done"]).to.equal(6);
    f.check();
    expect([...pages]).to.deep.equal([0, 0, 0, 0, 0, 0, 0, ...new Array<number>(5).fill(UNTOUCHED)]);
    expect([dma.refsAt(58), dma.refsAt(59), dma.refsAt(60), dma.vpfnCount]).to.deep.equal([1, 1, 0, 60]);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([60, 60, 60]);
    expect(f.host.kernel.messages).to.deep.equal([pinnedWarn(f.qemu), pinnedWarn(f.qemu)]);
    await unmapAll(f);
    expect(f.qemu.mm.lockedVm).to.equal(0);
    await finish(f);
  });

  it("iommu-backed: MAP_DMA beyond RLIMIT_MEMLOCK is -ENOMEM with a pr_warn and leaves nothing pinned or charged", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    f.qemu.rlimitMemlock = LIMIT_BYTES;
    expect(await f.map(0n, 65n * PAGE)).to.equal(-ERRNO.ENOMEM);
    f.check();
    expect(f.host.kernel.messages).to.deep.equal([remoteWarn(LIMIT_PAGES)]);
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins, f.host.stats().mappings, f.iommu.dmaAvail]).to.deep.equal([0, 0, 0, 65535]);
    expect(await f.map(0n, LIMIT_BYTES)).to.equal(0);
    expect([f.qemu.mm.lockedVm, dmaAt(f, 0).lockedVm, f.host.phys.totalPins]).to.deep.equal([64, 64, 64]);
    expect(await f.map(LIMIT_BYTES, PAGE, LIMIT_BYTES)).to.equal(-ERRNO.ENOMEM);
    f.check();
    expect(f.host.kernel.messages).to.deep.equal([remoteWarn(LIMIT_PAGES), remoteWarn(LIMIT_PAGES)]);
    expect([f.qemu.mm.lockedVm, f.host.phys.totalPins, f.host.stats().mappings, f.iommu.dmaAvail]).to.deep.equal([64, 64, 1, 65534]);
    await finish(f);
  });

  it("CAP_IPC_LOCK bypasses the limit but the pages still count (process option, iommu-backed)", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    const vmm = f.host.spawn({ comm: "vmm", memlockBytes: LIMIT_BYTES, capabilities: ["CAP_IPC_LOCK"] });
    const fd = withContainerFd(f, vmm);
    const ram = vmm.mmap({ length: 256n * PAGE });
    expect(await ioctlMap(f, vmm, fd, MAP_RW, ram, 0n, 256n * PAGE)).to.equal(0);
    f.check();
    const dma = dmaAt(f, 0);
    expect(dma.lockCap).to.equal(true);
    expect(dma.task).to.equal(vmm);
    expect([vmm.mm.lockedVm, dma.lockedVm, f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([256, 256, 0, 256]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    await finish(f, {}, [vmm]);
  });

  it("CAP_IPC_LOCK bypasses the limit but the pages still count (memlock-limited, external pins)", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    f.qemu.setCapability("CAP_IPC_LOCK", true);
    expect(await f.map()).to.equal(0);
    pin(f, 0, 100);
    expect([f.qemu.mm.lockedVm, dmaAt(f, 0).lockedVm]).to.deep.equal([100, 100]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    await unmapAll(f);
    expect(f.qemu.mm.lockedVm).to.equal(0);
    await finish(f);
  });

  it("lock_cap is snapshotted at MAP_DMA: dropping CAP_IPC_LOCK afterwards does not limit the mapping's pins", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    f.qemu.setCapability("CAP_IPC_LOCK", true);
    expect(await f.map()).to.equal(0);
    f.qemu.setCapability("CAP_IPC_LOCK", false);
    expect(dmaAt(f, 0).lockCap).to.equal(true);
    pin(f, 0, 100);
    expect(f.qemu.mm.lockedVm).to.equal(100);
    // A mapping made without the capability is limited, and already over the limit.
    expect(await f.map(16n << 20n)).to.equal(0);
    expect(dmaAt(f, pageOf(16n << 20n)).lockCap).to.equal(false);
    expectErr(() => vfioPinPages(f.device!, iovaOf(pageOf(16n << 20n)), 1, RW, new Uint32Array(1)), "ENOMEM", "pin-external-failed");
    expect(f.qemu.mm.lockedVm).to.equal(100);
    expect(f.host.kernel.messages).to.deep.equal([pinnedWarn(f.qemu)]);
    await unmapAll(f);
    expect(f.qemu.mm.lockedVm).to.equal(0);
    await finish(f);
  });

  it("lock_cap is snapshotted at MAP_DMA: granting CAP_IPC_LOCK afterwards does not lift the limit", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    expect(await f.map()).to.equal(0);
    f.qemu.setCapability("CAP_IPC_LOCK", true);
    expect(dmaAt(f, 0).lockCap).to.equal(false);
    pin(f, 0, LIMIT_PAGES);
    expectErr(() => vfioPinPages(f.device!, iovaOf(LIMIT_PAGES), 1, RW, new Uint32Array(1)), "ENOMEM", "pin-external-failed");
    expect(f.qemu.mm.lockedVm).to.equal(LIMIT_PAGES);
    // A mapping made with the capability bypasses the limit.
    expect(await f.map(16n << 20n)).to.equal(0);
    expect(dmaAt(f, pageOf(16n << 20n)).lockCap).to.equal(true);
    pin(f, pageOf(16n << 20n), 10);
    expect([f.qemu.mm.lockedVm, dmaAt(f, 0).lockedVm, dmaAt(f, pageOf(16n << 20n)).lockedVm]).to.deep.equal([74, 64, 10]);
    await unmapAll(f);
    expect(f.qemu.mm.lockedVm).to.equal(0);
    await finish(f);
  });

  it("the limit is the mapping task's (dma.task) and the charge lands on its mm, not on the device's process", async () => {
    // The device's process (qemu) has no limit; the mapping's process has 64 pages.
    const f = await Fixture.create({ variant: "mdev-only" });
    const mapper = f.host.spawn({ comm: "mapper", memlockBytes: LIMIT_BYTES });
    const fd = withContainerFd(f, mapper);
    const ram = mapper.mmap({ length: 128n * PAGE });
    expect(await ioctlMap(f, mapper, fd, MAP_RW, ram, 0n, 128n * PAGE)).to.equal(0);
    expect(dmaAt(f, 0).task).to.equal(mapper);
    pin(f, 0, LIMIT_PAGES);
    expect([mapper.mm.lockedVm, f.qemu.mm.lockedVm]).to.deep.equal([64, 0]);
    expectErr(() => vfioPinPages(f.device!, iovaOf(LIMIT_PAGES), 1, RW, new Uint32Array(1)), "ENOMEM", "pin-external-failed");
    expect(f.host.kernel.messages).to.deep.equal([`vfio_pin_page_external: Task mapper (${mapper.pid}) RLIMIT_MEMLOCK (262144) exceeded`]);
    // Unlike lock_cap, the rlimit is read when charging: raising it lets the next pin through.
    mapper.rlimitMemlock = 128n * PAGE;
    pin(f, LIMIT_PAGES, 1);
    expect([mapper.mm.lockedVm, dmaAt(f, 0).lockedVm, f.qemu.mm.lockedVm]).to.deep.equal([65, 65, 0]);
    await unmapAll(f);
    expect(mapper.mm.lockedVm).to.equal(0);
    await finish(f, {}, [mapper]);
  });

  it("the limit is the mapping task's: a limited device process pins beyond its own limit for an unlimited mapper", async () => {
    const f = await Fixture.create({ variant: "memlock-limited" });
    const mapper = f.host.spawn({ comm: "mapper" });
    const fd = withContainerFd(f, mapper);
    const ram = mapper.mmap({ length: 128n * PAGE });
    expect(await ioctlMap(f, mapper, fd, MAP_RW, ram, 0n, 128n * PAGE)).to.equal(0);
    pin(f, 0, 100);
    expect([mapper.mm.lockedVm, dmaAt(f, 0).lockedVm, f.qemu.mm.lockedVm]).to.deep.equal([100, 100, 0]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    await unmapAll(f);
    expect(mapper.mm.lockedVm).to.equal(0);
    await finish(f, {}, [mapper]);
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
    const dma = dmaAt(f, 0);
    const domain = f.iommu.domains[0]!.domain;
    const frame = domain.iovaToPfn(33);
    const { next, fd, ram } = await liveUpdate(f, { comm: "qemu-next" });
    expect([dma.vaddrInvalid, f.iommu.vaddrInvalidCount]).to.deep.equal([true, 1]);
    // Invalidation unpins and uncharges nothing.
    expect([f.qemu.mm.lockedVm, next.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, 0, GUEST_PAGES]);
    const updated: boolean[] = [];
    const sub = f.iommu.on("vaddrUpdated", (e) => updated.push(e.ownerChanged));
    expect(await ioctlMap(f, next, fd, VFIO_DMA_MAP_FLAG_VADDR, ram, 0n, GUEST_BYTES)).to.equal(0);
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
    await unmapAll(f);
    expect([f.qemu.mm.lockedVm, next.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0, 0]);
    await finish(f, {}, [next]);
  });

  it("a new owner over its RLIMIT_MEMLOCK without CAP_IPC_LOCK is -ENOMEM and nothing moves; with it the charge moves", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    expect(await f.map()).to.equal(0);
    const dma = dmaAt(f, 0);
    const { next, fd, ram } = await liveUpdate(f, { comm: "qemu-next", memlockBytes: LIMIT_BYTES });
    expect(await ioctlMap(f, next, fd, VFIO_DMA_MAP_FLAG_VADDR, ram, 0n, GUEST_BYTES)).to.equal(-ERRNO.ENOMEM);
    f.check();
    expect([f.qemu.mm.lockedVm, next.mm.lockedVm, dma.lockedVm]).to.deep.equal([GUEST_PAGES, 0, GUEST_PAGES]);
    expect(dma.mm).to.equal(f.qemu.mm);
    expect(dma.task).to.equal(f.qemu);
    expect(dma.vaddrPage).to.equal(pageOf(f.guestRam));
    expect([dma.vaddrInvalid, f.iommu.vaddrInvalidCount]).to.deep.equal([true, 1]);
    expect(f.host.kernel.messages).to.deep.equal([]);
    next.setCapability("CAP_IPC_LOCK", true);
    expect(await ioctlMap(f, next, fd, VFIO_DMA_MAP_FLAG_VADDR, ram, 0n, GUEST_BYTES)).to.equal(0);
    f.check();
    expect([f.qemu.mm.lockedVm, next.mm.lockedVm]).to.deep.equal([0, GUEST_PAGES]);
    expect(dma.lockCap).to.equal(true);
    expect(f.iommu.vaddrInvalidCount).to.equal(0);
    await finish(f, {}, [next]);
  });

  it("a VADDR update from the same mm moves nothing, and keeps the lock_cap taken at MAP_DMA", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    expect(await f.map()).to.equal(0);
    const dma = dmaAt(f, 0);
    await invalidateVaddr(f, 0n, GUEST_BYTES);
    const again = f.qemu.mmap({ length: GUEST_BYTES, object: f.qemu.objectAt(f.guestRam) });
    f.qemu.setCapability("CAP_IPC_LOCK", true);
    const updated: boolean[] = [];
    const sub = f.iommu.on("vaddrUpdated", (e) => updated.push(e.ownerChanged));
    expect(await ioctlMap(f, f.qemu, f.containerFd, VFIO_DMA_MAP_FLAG_VADDR, again, 0n, GUEST_BYTES)).to.equal(0);
    sub.dispose();
    f.check();
    expect(updated).to.deep.equal([false]);
    expect([f.qemu.mm.lockedVm, dma.lockedVm, f.host.phys.totalPins]).to.deep.equal([GUEST_PAGES, GUEST_PAGES, GUEST_PAGES]);
    expect(dma.vaddrPage).to.equal(pageOf(again));
    expect(dma.lockCap).to.equal(false);
    expect(f.iommu.vaddrInvalidCount).to.equal(0);
    await finish(f);
  });

  it("the old mm already exited: the new owner is charged, the dead mm is not uncharged", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    const old = f.host.spawn({ comm: "old" });
    const oldFd = withContainerFd(f, old);
    const oldRam = old.mmap({ length: 16n * PAGE });
    expect(await ioctlMap(f, old, oldFd, MAP_RW, oldRam, 0n, 16n * PAGE)).to.equal(0);
    expect(old.mm.lockedVm).to.equal(16);
    await invalidateVaddr(f, 0n, 16n * PAGE);
    const next = f.host.spawn({ comm: "next" });
    const fd = withContainerFd(f, next);
    const ram = next.mmap({ length: 16n * PAGE, object: old.objectAt(oldRam) });
    old.exit();
    expect(await ioctlMap(f, next, fd, VFIO_DMA_MAP_FLAG_VADDR, ram, 0n, 16n * PAGE)).to.equal(0);
    f.check();
    expect([next.mm.lockedVm, dmaAt(f, 0).lockedVm, f.host.phys.totalPins]).to.deep.equal([16, 16, 16]);
    expect(dmaAt(f, 0).mm).to.equal(next.mm);
    // mmget_not_zero(old mm) failed, so its counter was left as the exit found it.
    expect(old.mm.lockedVm).to.equal(16);
    await unmapAll(f);
    expect([next.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([0, 0]);
    await finish(f, { lockedVm: 16 }, [next]);
  });

  it("VADDR errors: -ENOENT with no mapping there, -EINVAL for a valid vaddr, an inexact range or a prot flag", async () => {
    const f = await Fixture.create({ variant: "iommu-backed" });
    expect(await f.map()).to.equal(0);
    const map = (flags: number, iova: bigint, size: bigint, vaddr: bigint = f.guestRam): Promise<number> => ioctlMap(f, f.qemu, f.containerFd, flags, vaddr, iova, size);
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
    const dma = dmaAt(f, 0);
    expect([dma.vaddrInvalid, f.iommu.vaddrInvalidCount, f.qemu.mm.lockedVm, f.host.phys.totalPins]).to.deep.equal([true, 1, GUEST_PAGES, GUEST_PAGES]);
    expect(await map(VFIO_DMA_MAP_FLAG_VADDR, 0n, GUEST_BYTES)).to.equal(0);
    expect([dma.vaddrInvalid, f.iommu.vaddrInvalidCount]).to.deep.equal([false, 0]);
    f.check();
    await finish(f);
  });
});
