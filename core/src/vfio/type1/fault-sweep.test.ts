/**
 * Fault sweep in the manner of iommufd's fail_nth selftest: for a fixed call
 * sequence per variant, make the n-th fallible step fail, for n = 1, 2, ...
 * until a run completes with nothing injected. After every run the type1
 * invariants must hold and teardown must leave nothing behind.
 *
 * The failing call must return the errno of the site that fired (kzalloc, gup
 * and iommu_map -ENOMEM; mmap_lock -EINTR) and leave the state it found: every
 * call of the sequence that can fail is all-or-nothing in the kernel.
 *
 * An uncharge cannot be interrupted in the model (see Accounting.mmLockAcct),
 * so every injection point fails a call with its site's errno.
 */
import { expect } from "chai";
import { errnoOf, kernelErrorOf } from "../../testing/errors.js";
import { Fixture, NO_LEAKS, VTD, X86_MSI, type Variant } from "../../testing/fixture.js";
import { createHost } from "../../host/host.js";
import type { FaultSite } from "../../host/fault-injector.js";
import type { BackingKind } from "../../host/memory-object.js";

import { ERRNO } from "../../errors/errno.js";
import { IOMMU_READ, IOMMU_WRITE, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_TYPE1v2_IOMMU } from "./type1-iommu.js";
import { vfioDmaRw, vfioPinPages, vfioUnpinPages } from "../vendor-api.js";
import type { VfioDevice } from "../vfio-device.js";
import {
  VFIO_GROUP_SET_CONTAINER,
  VFIO_GROUP_UNSET_CONTAINER,
  VFIO_IOMMU_DIRTY_PAGES,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_SET_IOMMU,
} from "../uapi.js";
import type { IommuHardware } from "../../iommu/iommu-domain.js";
import type { Iova } from "../../address/address.js";

const SITE_ERRNO: Readonly<Record<FaultSite, number>> = { kzalloc: -ERRNO.ENOMEM, gup: -ERRNO.ENOMEM, iommu_map: -ERRNO.ENOMEM, mmap_lock: -ERRNO.EINTR };
const SITES: readonly FaultSite[] = ["kzalloc", "gup", "iommu_map", "mmap_lock"];

const PIN_IOVA = 0x4000n as Iova;
const PIN_PAGE = Number(PIN_IOVA >> 12n);
const PIN_PAGES = 8;
/** The second MAP_DMA maps the same guest RAM again, above 4 GiB (charged twice, as type1 does). */
const SECOND_IOVA = 1n << 32n;
/** Another IOMMU driver: it never shares a domain with VT-d, so attaching it next to VT-d replays. */
const OTHER_IOMMU: IommuHardware = { ...VTD, driver: "amd-iommu" };
const MAX_RUNS = 5000;

interface Case {
  readonly variant: Variant;
  readonly backing: BackingKind;
  /** 32 scattered pages: the memlock-limited variant (64 pages) can charge them twice. */
  readonly guestPages: number;
  /** Injection points per site, each of which failed a call. */
  readonly expected: Readonly<Record<FaultSite, number>>;
}

/*
 * Expected counts, derived by hand from the sequence (scattered-4k: every page
 * is its own physically contiguous run, so each run charges and maps once):
 * mdev-only: kzalloc = MAP 1 + 8 vfio_pfn + group 1 + bitmap 1 + MAP 1 + bitmap 1;
 *   gup = 8 single-page pins + 1 replay batch + 1 MAP batch; iommu_map = 32
 *   replayed runs + 32 runs; mmap_lock = 8 pins + 24 replayed runs (8 pages
 *   already charged by their pins) + 32 runs.
 * iommu-backed: the replay copies the first domain (no pin, no charge), the
 *   second MAP maps each run into two domains.
 * mixed: as iommu-backed, plus the 8 pins (no charge: a domain exists).
 * thp: a 4 MiB guest is two 2 MiB runs; 512-frame batches.
 */
const CASES: readonly Case[] = [
  { variant: "mdev-only", backing: "scattered-4k", guestPages: 32, expected: { kzalloc: 13, gup: 10, iommu_map: 64, mmap_lock: 64 } },
  { variant: "iommu-backed", backing: "scattered-4k", guestPages: 32, expected: { kzalloc: 5, gup: 2, iommu_map: 128, mmap_lock: 64 } },
  { variant: "mixed", backing: "scattered-4k", guestPages: 32, expected: { kzalloc: 13, gup: 10, iommu_map: 128, mmap_lock: 64 } },
  { variant: "memlock-limited", backing: "scattered-4k", guestPages: 32, expected: { kzalloc: 13, gup: 10, iommu_map: 64, mmap_lock: 64 } },
  { variant: "mdev-only", backing: "thp", guestPages: 1024, expected: { kzalloc: 13, gup: 12, iommu_map: 4, mmap_lock: 12 } },
  { variant: "iommu-backed", backing: "thp", guestPages: 1024, expected: { kzalloc: 5, gup: 4, iommu_map: 8, mmap_lock: 4 } },
  { variant: "mixed", backing: "thp", guestPages: 1024, expected: { kzalloc: 13, gup: 12, iommu_map: 8, mmap_lock: 4 } },
];

interface Run {
  readonly f: Fixture;
  readonly guestBytes: bigint;
  /** What the emulated device holds: IOVA page -> references. */
  readonly pinned: Map<number, number>;
  readonly extraFd: number;
}

interface Step {
  readonly name: string;
  run(r: Run): Promise<number>;
}

/** The vendor's side of dma_unmap and close_device: drop every reference it holds in [first, end). */
function unpinRange(vdev: VfioDevice, pinned: Map<number, number>, first: number, end: number): void {
  for (const [page, refs] of [...pinned]) {
    if (page < first || page >= end) continue;
    for (let r = 0; r < refs; r++) vfioUnpinPages(vdev, (BigInt(page) << 12n) as Iova, 1);
    pinned.delete(page);
  }
}

async function createRun(c: Case): Promise<Run> {
  const pinned = new Map<number, number>();
  const guestBytes = BigInt(c.guestPages) << 12n;
  const f = await Fixture.create({
    variant: c.variant,
    backing: c.backing,
    guestBytes,
    deviceOps: {
      dmaUnmap(vdev, iova, length) {
        unpinRange(vdev, pinned, Number(iova >> 12n), Number((iova + length) >> 12n));
      },
      closeDevice(vdev) {
        unpinRange(vdev, pinned, 0, Number.MAX_SAFE_INTEGER);
      },
    },
  });
  // The extra group exists before arming; only its SET_CONTAINER is part of the sequence.
  const mdevOnly = f.iommu.domains.length === 0;
  const node = f.host.vfio.addIommuGroup(mdevOnly ? VTD : OTHER_IOMMU, [X86_MSI]);
  f.host.vfio.addDevice(node, "0000:02:00.0");
  return { f, guestBytes, pinned, extraFd: f.host.open(f.qemu, `/dev/vfio/${node.number}`) };
}

function pinStep(name: string): Step {
  return {
    name,
   
    async run({ f, pinned }) {
      const pages = new Uint32Array(PIN_PAGES).fill(0xdead);
      const err = kernelErrorOf(() => vfioPinPages(f.device!, PIN_IOVA, PIN_PAGES, IOMMU_READ | IOMMU_WRITE, pages));
      if (err !== undefined) {
        // pin_unwind: pages[0..i] are cleared (i = the failing page), later entries are not written.
        const done = err.fields.done!;
        expect([...pages]).to.deep.equal([...new Array<number>(done + 1).fill(0), ...new Array<number>(PIN_PAGES - done - 1).fill(0xdead)]);
        return -err.errno;
      }
      expect(pages.every((p) => p !== 0 && p !== 0xdead)).to.equal(true);
      for (let i = 0; i < PIN_PAGES; i++) pinned.set(PIN_PAGE + i, (pinned.get(PIN_PAGE + i) ?? 0) + 1);
      return 0;
    },
  };
}

/** create fixture; MAP_DMA; pin x2; attach a replaying group; DIRTY START; MAP_DMA; dma_rw; UNMAP_DMA; detach. */
function sequence(variant: Variant): Step[] {
  const hasMdev = variant !== "iommu-backed";
  return [
    { name: "MAP_DMA guest RAM", run: ({ f, guestBytes }) => f.map(0n, guestBytes) },
    ...(hasMdev ? [pinStep("vfioPinPages"), pinStep("vfioPinPages again")] : []),
    { name: "SET_CONTAINER extra group", run: ({ f, extraFd }) => f.host.ioctl(f.qemu, extraFd, VFIO_GROUP_SET_CONTAINER, f.containerFd) },
    { name: "DIRTY_PAGES START", run: ({ f }) => f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_DIRTY_PAGES, { argsz: 8, flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_START }) },
    { name: "MAP_DMA second", run: ({ f, guestBytes }) => f.map(SECOND_IOVA, guestBytes) },
    ...(hasMdev
      ? [
          {
            name: "vfioDmaRw",
           
            run: async ({ f }: Run) => errnoOf(() => vfioDmaRw(f.device!, (PIN_IOVA + 0x800n) as Iova, new Uint8Array(0x1000).fill(0xa5), true)),
          },
        ]
      : []),
    {
      name: "UNMAP_DMA guest RAM",
     
      async run({ f, guestBytes, pinned }) {
        const unmap = { argsz: 24, flags: 0, iova: 0n, size: guestBytes };
        const ret = await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, unmap);
        expect(ret).to.equal(0);
        expect(unmap.size).to.equal(guestBytes);
        // The invalidation reached the device, which dropped both references of every page.
        expect(pinned.size).to.equal(0);
        return ret;
      },
    },
    { name: "UNSET_CONTAINER extra group", run: ({ f, extraFd }) => f.host.ioctl(f.qemu, extraFd, VFIO_GROUP_UNSET_CONTAINER) },
  ];
}

/** What an all-or-nothing call must give back on failure. */
function snapshot(r: Run): Record<string, unknown> {
  const iommu = r.f.iommu;
  const dmas = [...iommu.dmas.values()].map((d) => ({ iovaPage: d.iovaPage, npages: d.npages, lockedVm: d.lockedVm, vpfnCount: d.vpfnCount, mapped: d.iommuMapped, bitmap: d.bitmap !== null }));
  return {
    dmas,
    dmaAvail: iommu.dmaAvail,
    lockedVm: r.f.qemu.mm.lockedVm,
    totalPins: r.f.host.phys.totalPins,
    domains: iommu.domains.map((d) => ({ groups: d.groups.length, mappedPages: d.domain.mappedPages })),
    emulatedGroups: iommu.emulatedGroups.length,
    iovaList: iommu.iovaList.map((x) => `${x.start}-${x.last}`),
    tracking: iommu.dirtyPageTracking,
    numNonPinnedGroups: iommu.numNonPinnedGroups,
    pinned: [...r.pinned],
  };
}

interface SweepResult {
  readonly points: number;
  readonly failed: Record<FaultSite, number>;
  readonly failedSteps: Set<string>;
}

async function sweep(c: Case): Promise<SweepResult> {
  const failed: Record<FaultSite, number> = { kzalloc: 0, gup: 0, iommu_map: 0, mmap_lock: 0 };
  const failedSteps = new Set<string>();
  for (let n = 1; n <= MAX_RUNS; n++) {
    const r = await createRun(c);
    const { f } = r;
    const host = f.host;
    host.faults.failNth(n);
    for (const step of sequence(c.variant)) {
      const before = snapshot(r);
      const ret = await step.run(r);
      const site = host.faults.fired;
      const at = `${step.name}, n=${n}`;
      if (site === undefined) {
        expect(ret, at).to.equal(0);
        host.assertInvariants();
        continue;
      }
      expect(ret, `${at}: errno of ${site}`).to.equal(SITE_ERRNO[site]);
      expect(snapshot(r), `${at}: state after the failed call`).to.deep.equal(before);
      host.assertInvariants();
      failed[site]++;
      failedSteps.add(step.name);
      break;
    }
    const fired = host.faults.fired;
    host.faults.disarm();
    await f.teardown();
    expect(host.kernel.warnings, `warnings, n=${n}`).to.deep.equal([]);
    expect(f.leaks(), `leaks, n=${n}`).to.deep.equal(NO_LEAKS);
    expect(host.phys.framesInUse, `frames in use, n=${n}`).to.equal(0);
    if (fired === undefined) return { points: n - 1, failed, failedSteps };
  }
  throw new Error(`${c.variant}: still injecting after ${MAX_RUNS} runs`);
}

describe("type1 fault sweep (fail_nth)", function () {
  this.timeout(60_000);
  for (const c of CASES) {
    const total = SITES.reduce((n, s) => n + c.expected[s], 0);
    it(`fails each of the ${total} fallible steps in turn, keeping invariants and leaking nothing (${c.variant}, ${c.backing})`, async () => {
      const result = await sweep(c);
      expect(result.failed).to.deep.equal(c.expected);
      expect(result.points).to.equal(total);
      // Every site is reachable in every variant, and fails a call somewhere in the sweep.
      for (const site of SITES) expect(result.failed[site], site).to.be.greaterThan(0);
      expect([...result.failedSteps]).to.include.members(["MAP_DMA guest RAM", "SET_CONTAINER extra group", "DIRTY_PAGES START", "MAP_DMA second"]);
      if (c.variant !== "iommu-backed") expect([...result.failedSteps]).to.include("vfioPinPages");
    });
  }
});

/** SET_IOMMU attaches every group of the container; a failure must undo the ones attached. */
describe("type1 fault sweep: SET_IOMMU with an mdev group and an IOMMU group", () => {
  it("fails each group's attach in turn and leaves the container unset and usable", async () => {
    let n = 1;
    for (; n <= 10; n++) {
      const host = createHost({ ramBytes: 1n << 30n, seed: 7 });
      const qemu = host.spawn({ comm: "qemu" });
      const containerFd = host.open(qemu, "/dev/vfio/vfio");
      const mdev = host.vfio.registerEmulatedDevice("mdev0", { dmaUnmap() {} });
      const node = host.vfio.addIommuGroup(VTD, [X86_MSI]);
      host.vfio.addDevice(node, "0000:01:00.0");
      const fds = [host.open(qemu, `/dev/vfio/${mdev.node.number}`), host.open(qemu, `/dev/vfio/${node.number}`)];
      for (const fd of fds) expect(await host.ioctl(qemu, fd, VFIO_GROUP_SET_CONTAINER, containerFd)).to.equal(0);
      host.faults.failNth(n);
      const ret = await host.ioctl(qemu, containerFd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
      const fired = host.faults.fired;
      host.faults.disarm();
      const container = [...host.vfio.containers][0]!;
      if (fired !== undefined) {
        expect(fired).to.equal("kzalloc");
        expect(ret).to.equal(-ERRNO.ENOMEM);
        expect(container.iommu).to.equal(undefined);
        expect(host.backends.length).to.equal(0);
        expect(await host.ioctl(qemu, containerFd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
      } else expect(ret).to.equal(0);
      const iommu = container.iommu!;
      expect(iommu.emulatedGroups.length).to.equal(1);
      expect(iommu.domains.length).to.equal(1);
      expect(iommu.numNonPinnedGroups).to.equal(1);
      const map = { argsz: 32, flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE, vaddr: qemu.mmap({ length: 0x10000n }), iova: 0n, size: 0x10000n };
      expect(await host.ioctl(qemu, containerFd, VFIO_IOMMU_MAP_DMA, map)).to.equal(0);
      expect(qemu.mm.lockedVm).to.equal(16);
      expect(host.phys.totalPins).to.equal(16);
      host.assertInvariants();
      qemu.exit();
      expect(host.phys.totalPins).to.equal(0);
      expect(host.phys.framesInUse).to.equal(0);
      expect(qemu.mm.lockedVm).to.equal(0);
      expect(host.kernel.warnings).to.deep.equal([]);
      if (fired === undefined) break;
    }
    // One vfio_iommu_group allocation per group attached.
    expect(n - 1).to.equal(2);
  });
});
