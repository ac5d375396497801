/**
 * The type1 container uapi, argument by argument: every check of
 * vfio_fops_unl_ioctl and vfio_iommu_type1_ioctl with its exact errno, in the
 * kernel's order (linux-vfio.md sections 2.1, 2.2, 2.7 and 5), and the rule
 * that a rejected call changes nothing: no mapping, no dma_avail, no locked_vm,
 * no pin, no field of the caller's argument.
 *
 * Where two checks fail with the same errno their order cannot be observed, so
 * each test makes exactly one thing wrong and shows that the corrected call
 * succeeds. Orders that can be observed (-EFAULT before -EINVAL, -EEXIST before
 * -ENOSPC before the IOVA ranges, -EBUSY before alignment) are asserted.
 */
import { expect } from "chai";
import { inspect } from "node:util";
import { Fixture, NO_LEAKS, VARIANTS, VTD, X86_MSI, hostLeaks, type Variant } from "../../testing/fixture.js";
import { createHost, type Host } from "../../host/host.js";
import type { Process } from "../../host/process.js";
import type { Hva, Iova } from "../../address/address.js";
import { vfioPinPages } from "../vendor-api.js";
import {
  VFIO_CHECK_EXTENSION,
  VFIO_DEVICE_RESET,
  VFIO_GET_API_VERSION,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOMMU_DIRTY_PAGES,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_SET_IOMMU,
  type VfioInfoCap,
} from "../uapi.js";
import {
  IOMMU_READ,
  IOMMU_WRITE,
  VFIO_DMA_CC_IOMMU,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_VADDR,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  VFIO_DMA_UNMAP_FLAG_VADDR,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
  VFIO_UPDATE_VADDR,
} from "./type1-iommu.js";

const ENOENT = -2;
const EACCES = -13;
const EFAULT = -14;
const EBUSY = -16;
const EEXIST = -17;
const ENODEV = -19;
const EINVAL = -22;
const ENOTTY = -25;
const ENOSPC = -28;

const KiB = 1n << 10n;
const MiB = 1n << 20n;
const PAGE = 4n * KiB;
const U64_MAX = (1n << 64n) - 1n;
const TOP_PAGE = (1n << 64n) - PAGE;
const RW = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
const GDB = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
const MSI_START = 0xfee00000n;
const MSI_END = 0xfef00000n;
const APERTURE_END = 1n << 48n;
/** DIRTY_BITMAP_SIZE_MAX: INT_MAX pages rounded up to u64 words, in bytes (256 MiB). */
const BITMAP_SIZE_MAX = 256n * MiB;
/** PAGE_MASK: the pgsize_bitmap of a container without an IOMMU domain. */
const PAGE_MASK = U64_MAX & ~0xfffn;
/** VTD's 4K | 2M | 1G. */
const VTD_PGSIZES = 0x1000n | 0x200000n | 0x40000000n;

/** Values that no u32 or u64 field can hold, nor a readable pointer be. */
const BAD_NUMBERS: readonly unknown[] = [-1, -4096n, 1.5, NaN, Infinity, 2 ** 64, 1n << 64n, (1n << 64n) + PAGE, "4096", true, null, {}, [], Symbol("x")];
/** Arbitrary junk for whole arguments and for fields. */
const GARBAGE: readonly unknown[] = [
  undefined,
  null,
  true,
  false,
  -1,
  -0.5,
  1.5,
  NaN,
  Infinity,
  -Infinity,
  2 ** 64,
  Number.MAX_VALUE,
  "",
  "32",
  Symbol("garbage"),
  -1n,
  1n << 64n,
  1n << 200n,
  -(1n << 200n),
  [],
  [32, 3],
  {},
  () => 32,
  new Uint8Array(4),
  new Date(0),
];

const label = (v: unknown): string => inspect(v, { depth: 3, breakLength: Infinity });

/** The counters a rejected call must leave alone. */
interface Counters {
  readonly dmas: number;
  readonly dmaAvail: number;
  readonly lockedVm: number;
  readonly totalPins: number;
  readonly tracking: boolean;
  readonly vaddrInvalid: number;
}

const counters = (f: Fixture): Counters => ({
  dmas: f.iommu.dmas.size,
  dmaAvail: f.iommu.dmaAvail,
  lockedVm: f.qemu.mm.lockedVm,
  totalPins: f.host.phys.totalPins,
  tracking: f.iommu.dirtyPageTracking,
  vaddrInvalid: f.iommu.vaddrInvalidCount,
});

const ioctl = (f: Fixture, request: number, arg?: unknown): Promise<number> => f.host.ioctl(f.qemu, f.containerFd, request, arg);

const shallow = (arg: unknown): unknown => (typeof arg === "object" && arg !== null && !ArrayBuffer.isView(arg) ? { ...arg } : arg);

/** A call rejected with `errno`: the counters and the caller's argument are unchanged. */
async function rejects(f: Fixture, request: number, arg: unknown, errno: number): Promise<void> {
  const before = counters(f);
  const fields = shallow(arg);
  expect(await ioctl(f, request, arg), label(arg)).to.equal(errno);
  expect(counters(f), label(arg)).to.deep.equal(before);
  expect(shallow(arg), "argument written on failure").to.deep.equal(fields);
  f.check();
}

async function succeeds(f: Fixture, request: number, arg: unknown): Promise<void> {
  expect(await ioctl(f, request, arg), label(arg)).to.equal(0);
  f.check();
}

type Fields = Record<string, unknown>;

const dmaMap = (f: Fixture, fields: Fields = {}): Fields => ({ argsz: 32, flags: RW, vaddr: f.guestRam, iova: 0n, size: f.guestBytes, ...fields });
const dmaUnmap = (fields: Fields = {}): Fields => ({ argsz: 24, flags: 0, iova: 0n, size: 4n * MiB, ...fields });
const bitmap = (bytes: number, fields: Fields = {}): Fields => ({ pgsize: PAGE, size: BigInt(bytes), data: new Uint8Array(bytes), ...fields });
const dirtyGet = (iova: bigint, size: bigint, bm: Fields, argsz = 48): Fields => ({ argsz, flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, data: { iova, size, bitmap: bm } });
const dirty = (flags: number): Fields => ({ argsz: 8, flags });

const isBacked = (v: Variant): boolean => v === "iommu-backed" || v === "mixed";
const hasEmulated = (v: Variant): boolean => v !== "iommu-backed";
const pages = (bytes: bigint): number => Number(bytes / PAGE);

/** Pins charged by MAP_DMA of `bytes` in this variant: all of them with a domain, none without. */
const mapPins = (v: Variant, bytes: bigint): number => (isBacked(v) ? pages(bytes) : 0);

/** Set bits of a little-endian bitmap, as page indices. */
function setBits(data: Uint8Array): number[] {
  const out: number[] = [];
  for (let b = 0; b < data.length * 8; b++) if ((data[b >>> 3]! & (1 << (b & 7))) !== 0) out.push(b);
  return out;
}

const range = (first: number, count: number): number[] => Array.from({ length: count }, (_, i) => first + i);

// ---------------------------------------------------------------- bare containers

/** A host, a process and a container whose groups and SET_IOMMU the test drives itself. */
interface Bare {
  readonly host: Host;
  readonly qemu: Process;
  readonly guestRam: Hva;
  readonly containerFd: number;
  readonly groupFds: number[];
}

type GroupKind = "mdev" | "iommu";

function bare(groups: readonly GroupKind[], dmaEntryLimit?: number): Bare {
  const host = createHost({ ramBytes: 1n << 30n, seed: 7 });
  if (dmaEntryLimit !== undefined) host.type1Params.dmaEntryLimit = dmaEntryLimit;
  const qemu = host.spawn({ comm: "qemu" });
  const guestRam = qemu.mmap({ length: 4n * MiB });
  const containerFd = host.open(qemu, "/dev/vfio/vfio");
  const groupFds: number[] = [];
  for (const kind of groups) {
    if (kind === "mdev") {
      const device = host.vfio.registerEmulatedDevice(`mdev${groupFds.length}`, { dmaUnmap() {} });
      groupFds.push(host.open(qemu, `/dev/vfio/${device.node.number}`));
    } else {
      const node = host.vfio.addIommuGroup(VTD, [X86_MSI]);
      host.vfio.addDevice(node, `0000:0${groupFds.length}:00.0`);
      groupFds.push(host.open(qemu, `/dev/vfio/${node.number}`));
    }
  }
  return { host, qemu, guestRam, containerFd, groupFds };
}

async function attachAll(b: Bare, type = VFIO_TYPE1v2_IOMMU): Promise<void> {
  for (const fd of b.groupFds) expect(await b.host.ioctl(b.qemu, fd, VFIO_GROUP_SET_CONTAINER, b.containerFd)).to.equal(0);
  expect(await b.host.ioctl(b.qemu, b.containerFd, VFIO_SET_IOMMU, type)).to.equal(0);
}

const bareIommu = (b: Bare) => [...b.host.vfio.containers][0]!.iommu!;

async function closeBare(b: Bare): Promise<void> {
  for (const fd of [...b.qemu.files.keys()].reverse()) expect(await b.host.close(b.qemu, fd)).to.equal(0);
  b.qemu.exit();
  expect(hostLeaks(b.host)).to.deep.equal(NO_LEAKS);
}

// ---------------------------------------------------------------- container ioctls

describe("uapi: container ioctls before and after SET_IOMMU", () => {
  const ALWAYS = [VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, VFIO_UNMAP_ALL];
  const UNKNOWN_EXTENSIONS = [0, 2, 5, 6, 7, 8, 11, 42, -1, 2 ** 40];

  it("VFIO_GET_API_VERSION is 0 with no group, with a group and with a backend", async () => {
    const b = bare(["mdev"]);
    const q = (req: number, arg?: unknown): Promise<number> => b.host.ioctl(b.qemu, b.containerFd, req, arg);
    expect(await q(VFIO_GET_API_VERSION)).to.equal(0);
    expect(await q(VFIO_GET_API_VERSION, "ignored")).to.equal(0);
    await attachAll(b);
    expect(await q(VFIO_GET_API_VERSION)).to.equal(0);
    b.host.assertInvariants();
    await closeBare(b);
  });

  it("VFIO_CHECK_EXTENSION without a backend: TYPE1, TYPE1v2, UNMAP_ALL = 1; UPDATE_VADDR, DMA_CC_IOMMU, unknown = 0", async () => {
    const b = bare(["mdev", "iommu"]);
    const q = (arg: unknown): Promise<number> => b.host.ioctl(b.qemu, b.containerFd, VFIO_CHECK_EXTENSION, arg);
    const expectBefore = async (): Promise<void> => {
      for (const ext of ALWAYS) expect(await q(ext), `ext ${ext}`).to.equal(1);
      expect(await q(VFIO_UPDATE_VADDR)).to.equal(0);
      expect(await q(VFIO_DMA_CC_IOMMU)).to.equal(0);
      for (const ext of UNKNOWN_EXTENSIONS) expect(await q(ext), `ext ${ext}`).to.equal(0);
    };
    await expectBefore();
    for (const fd of b.groupFds) expect(await b.host.ioctl(b.qemu, fd, VFIO_GROUP_SET_CONTAINER, b.containerFd)).to.equal(0);
    await expectBefore();
    expect([...b.host.vfio.containers][0]!.iommu).to.equal(undefined);
    await closeBare(b);
  });

  const AFTER: readonly { groups: GroupKind[]; updateVaddr: number }[] = [
    { groups: ["mdev"], updateVaddr: 0 },
    { groups: ["iommu"], updateVaddr: 1 },
    { groups: ["mdev", "iommu"], updateVaddr: 0 },
  ];
  for (const { groups, updateVaddr } of AFTER) {
    it(`VFIO_CHECK_EXTENSION after SET_IOMMU with ${groups.join(" + ")}: UPDATE_VADDR = ${updateVaddr}`, async () => {
      const b = bare(groups);
      await attachAll(b);
      const q = (arg: unknown): Promise<number> => b.host.ioctl(b.qemu, b.containerFd, VFIO_CHECK_EXTENSION, arg);
      for (const ext of ALWAYS) expect(await q(ext), `ext ${ext}`).to.equal(1);
      expect(await q(VFIO_UPDATE_VADDR)).to.equal(updateVaddr);
      // vfio_domains_have_enforce_cache_coherency starts at 1 and only a domain without it clears it:
      // VTD enforces it, and a container without any domain answers 1 as well.
      expect(await q(VFIO_DMA_CC_IOMMU)).to.equal(1);
      for (const ext of UNKNOWN_EXTENSIONS) expect(await q(ext), `ext ${ext}`).to.equal(0);
      expect(await q("not a number")).to.equal(0);
      b.host.assertInvariants();
      await closeBare(b);
    });
  }

  it("VFIO_SET_IOMMU: no group -> -EINVAL before the type is looked at", async () => {
    const b = bare([]);
    for (const type of [VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU, 42, "x"]) expect(await b.host.ioctl(b.qemu, b.containerFd, VFIO_SET_IOMMU, type), label(type)).to.equal(EINVAL);
    expect(b.host.backends).to.have.length(0);
    await closeBare(b);
  });

  it("VFIO_SET_IOMMU: an unsupported type -> -ENODEV; a type1 extension that is no IOMMU type -> -EINVAL; nothing is created", async () => {
    const b = bare(["mdev"]);
    expect(await b.host.ioctl(b.qemu, b.groupFds[0]!, VFIO_GROUP_SET_CONTAINER, b.containerFd)).to.equal(0);
    for (const type of [0, 2, 4, 7, 42, -1, "TYPE1v2", null]) expect(await b.host.ioctl(b.qemu, b.containerFd, VFIO_SET_IOMMU, type), label(type)).to.equal(ENODEV);
    // UNMAP_ALL is claimed by type1's CHECK_EXTENSION(NULL), so type1's open() is tried and refuses it;
    // UPDATE_VADDR is not claimed without a container (iommu NULL), so no driver is tried.
    expect(await b.host.ioctl(b.qemu, b.containerFd, VFIO_SET_IOMMU, VFIO_UNMAP_ALL)).to.equal(EINVAL);
    expect(await b.host.ioctl(b.qemu, b.containerFd, VFIO_SET_IOMMU, VFIO_UPDATE_VADDR)).to.equal(ENODEV);
    expect(b.host.backends).to.have.length(0);
    expect(await b.host.ioctl(b.qemu, b.containerFd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    expect(b.host.backends).to.have.length(1);
    b.host.assertInvariants();
    await closeBare(b);
  });

  for (const [type, v2] of [
    [VFIO_TYPE1_IOMMU, false],
    [VFIO_TYPE1v2_IOMMU, true],
  ] as const) {
    it(`VFIO_SET_IOMMU(${v2 ? "TYPE1v2" : "TYPE1"}) makes a ${v2 ? "v2" : "v1"} backend; a second SET_IOMMU -> -EINVAL whatever the type`, async () => {
      const b = bare(["iommu"]);
      await attachAll(b, type);
      const iommu = bareIommu(b);
      expect(iommu.v2).to.equal(v2);
      expect(iommu.dmaAvail).to.equal(65535);
      for (const again of [VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, 42]) expect(await b.host.ioctl(b.qemu, b.containerFd, VFIO_SET_IOMMU, again)).to.equal(EINVAL);
      expect(b.host.backends).to.have.length(1);
      expect(bareIommu(b)).to.equal(iommu);
      b.host.assertInvariants();
      await closeBare(b);
    });
  }

  it("backend ioctls before SET_IOMMU -> -EINVAL; unknown ioctls after -> -ENOTTY", async () => {
    const b = bare(["mdev"]);
    const q = (req: number, arg?: unknown): Promise<number> => b.host.ioctl(b.qemu, b.containerFd, req, arg);
    const map = { argsz: 32, flags: RW, vaddr: b.guestRam, iova: 0n, size: PAGE };
    const backendRequests: [number, unknown][] = [
      [VFIO_IOMMU_MAP_DMA, map],
      [VFIO_IOMMU_UNMAP_DMA, { argsz: 24, flags: 0, iova: 0n, size: PAGE }],
      [VFIO_IOMMU_GET_INFO, { argsz: 16, flags: 0, iova_pgsizes: 0n }],
      [VFIO_IOMMU_DIRTY_PAGES, dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START)],
      [0x3b00 + 199, {}],
      [VFIO_GROUP_GET_STATUS, { argsz: 8, flags: 0 }],
    ];
    for (const [req, arg] of backendRequests) expect(await q(req, arg), `request ${req.toString(16)}`).to.equal(EINVAL);
    expect(await b.host.ioctl(b.qemu, b.groupFds[0]!, VFIO_GROUP_SET_CONTAINER, b.containerFd)).to.equal(0);
    for (const [req, arg] of backendRequests) expect(await q(req, arg), `request ${req.toString(16)} with a group`).to.equal(EINVAL);
    expect(await q(VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    for (const req of [0x3b00 + 199, VFIO_GROUP_GET_STATUS, VFIO_GROUP_SET_CONTAINER, VFIO_DEVICE_RESET, 0, -1, 0xffffffff]) expect(await q(req, {}), `request ${req}`).to.equal(ENOTTY);
    expect(await q(VFIO_IOMMU_MAP_DMA, map)).to.equal(0);
    expect(bareIommu(b).dmas.size).to.equal(1);
    b.host.assertInvariants();
    await closeBare(b);
  });
});

// ---------------------------------------------------------------- dma_avail

describe("uapi: MAP_DMA against dma_entry_limit (-ENOSPC)", () => {
  for (const kind of ["mdev", "iommu"] as const) {
    it(`with ${kind === "mdev" ? "an emulated group" : "an IOMMU-backed group"}: -EEXIST, then -ENOSPC, then the IOVA ranges`, async () => {
      const b = bare([kind], 2);
      await attachAll(b);
      const iommu = bareIommu(b);
      const pinsPerPage = kind === "iommu" ? 1 : 0;
      const q = (req: number, arg: unknown): Promise<number> => b.host.ioctl(b.qemu, b.containerFd, req, arg);
      const map = (iova: bigint, offset = 0n, size = PAGE): Fields => ({ argsz: 32, flags: RW, vaddr: b.guestRam + offset, iova, size });
      const state = (): unknown => ({ dmas: iommu.dmas.size, avail: iommu.dmaAvail, locked: b.qemu.mm.lockedVm, pins: b.host.phys.totalPins });
      expect(iommu.dmaAvail).to.equal(2);
      expect(await q(VFIO_IOMMU_MAP_DMA, map(0n))).to.equal(0);
      expect(iommu.dmaAvail).to.equal(1);
      expect(await q(VFIO_IOMMU_MAP_DMA, map(MiB, PAGE))).to.equal(0);
      expect(state()).to.deep.equal({ dmas: 2, avail: 0, locked: 2 * pinsPerPage, pins: 2 * pinsPerPage });
      b.host.assertInvariants();
      const full = state();
      // Overlap (-EEXIST) is checked before dma_avail, dma_avail before the IOVA ranges, alignment before all.
      expect(await q(VFIO_IOMMU_MAP_DMA, map(2n * MiB, 2n * PAGE))).to.equal(ENOSPC);
      expect(await q(VFIO_IOMMU_MAP_DMA, map(0n, 0n, 2n * PAGE))).to.equal(EEXIST);
      expect(await q(VFIO_IOMMU_MAP_DMA, map(MiB + 0x800n))).to.equal(EINVAL);
      expect(await q(VFIO_IOMMU_MAP_DMA, map(MSI_START))).to.equal(ENOSPC);
      expect(await q(VFIO_IOMMU_MAP_DMA, map(APERTURE_END))).to.equal(ENOSPC);
      expect(state()).to.deep.equal(full);
      b.host.assertInvariants();
      const info: Fields = { argsz: 256, flags: 0, iova_pgsizes: 0n };
      expect(await q(VFIO_IOMMU_GET_INFO, info)).to.equal(0);
      expect((info["caps"] as VfioInfoCap[]).find((c) => c.id === 3)).to.include({ avail: 0 });
      const unmap = { argsz: 24, flags: 0, iova: MiB, size: PAGE };
      expect(await q(VFIO_IOMMU_UNMAP_DMA, unmap)).to.equal(0);
      expect(unmap.size).to.equal(PAGE);
      expect(iommu.dmaAvail).to.equal(1);
      // With a free entry the next check is the IOVA range: only an IOMMU-backed group has one.
      expect(await q(VFIO_IOMMU_MAP_DMA, map(MSI_START))).to.equal(kind === "iommu" ? EINVAL : 0);
      expect(iommu.dmaAvail).to.equal(kind === "iommu" ? 1 : 0);
      b.host.assertInvariants();
      await closeBare(b);
    });
  }
});

// ---------------------------------------------------------------- per variant

for (const variant of VARIANTS) {
  const backed = isBacked(variant);
  const emulated = hasEmulated(variant);

  describe(`uapi: VFIO_IOMMU_MAP_DMA validation (${variant})`, () => {
    let f: Fixture;
    beforeEach(async () => {
      f = await Fixture.create({ variant });
      f.check();
    });
    afterEach(async () => {
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    it("an unreadable argument or a missing field -> -EFAULT, before argsz is looked at", async () => {
      for (const arg of [undefined, null, 0, 32, "map", Symbol("map"), 1n, () => 0]) await rejects(f, VFIO_IOMMU_MAP_DMA, arg, EFAULT);
      for (const field of ["argsz", "flags", "vaddr", "iova", "size"]) {
        const missing = dmaMap(f);
        delete missing[field];
        await rejects(f, VFIO_IOMMU_MAP_DMA, missing, EFAULT);
        await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { [field]: undefined }), EFAULT);
      }
      await rejects(f, VFIO_IOMMU_MAP_DMA, { argsz: 8, flags: RW }, EFAULT);
      await rejects(f, VFIO_IOMMU_MAP_DMA, { argsz: 0, flags: 0xff, vaddr: 1n, iova: 1n }, EFAULT);
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f));
      expect(counters(f)).to.include({ dmas: 1, dmaAvail: 65534, totalPins: mapPins(variant, f.guestBytes), lockedVm: mapPins(variant, f.guestBytes) });
    });

    it("argsz < 32 or a flag outside READ|WRITE|VADDR -> -EINVAL; a larger argsz is fine", async () => {
      for (const argsz of [0, 8, 24, 31]) await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { argsz }), EINVAL);
      for (const flags of [1 << 3, RW | (1 << 3), RW | (1 << 31), 0x80000000, 0xffffffff, 0xf8]) await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { flags }), EINVAL);
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { argsz: 4096 }));
      expect(counters(f)).to.include({ dmas: 1, totalPins: mapPins(variant, f.guestBytes) });
    });

    it("READ/WRITE together with VADDR, or none of them -> -EINVAL; READ alone and WRITE alone map", async () => {
      for (const flags of [0, VFIO_DMA_MAP_FLAG_VADDR | VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_VADDR | VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_MAP_FLAG_VADDR | RW]) {
        await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { flags }), EINVAL);
      }
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { flags: VFIO_DMA_MAP_FLAG_READ, size: MiB }));
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { flags: VFIO_DMA_MAP_FLAG_WRITE, iova: MiB, vaddr: f.guestRam + MiB, size: MiB }));
      expect(f.iommu.findDma(0, 1)!.prot).to.equal(IOMMU_READ);
      expect(f.iommu.findDma(pages(MiB), 1)!.prot).to.equal(IOMMU_WRITE);
      expect(counters(f)).to.include({ dmas: 2, totalPins: mapPins(variant, 2n * MiB), lockedVm: mapPins(variant, 2n * MiB) });
    });

    it("VADDR alone: no mapping there -> -ENOENT; a mapping whose vaddr is valid, or another range -> -EINVAL", async () => {
      const vaddrOnly = (fields: Fields = {}): Fields => dmaMap(f, { flags: VFIO_DMA_MAP_FLAG_VADDR, ...fields });
      await rejects(f, VFIO_IOMMU_MAP_DMA, vaddrOnly(), ENOENT);
      await rejects(f, VFIO_IOMMU_MAP_DMA, vaddrOnly({ size: 0n }), EINVAL);
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f));
      await rejects(f, VFIO_IOMMU_MAP_DMA, vaddrOnly(), EINVAL);
      await rejects(f, VFIO_IOMMU_MAP_DMA, vaddrOnly({ size: MiB }), EINVAL);
      await rejects(f, VFIO_IOMMU_MAP_DMA, vaddrOnly({ iova: 8n * MiB }), ENOENT);
      expect(counters(f)).to.include({ dmas: 1, vaddrInvalid: 0 });
    });

    it("size 0, or a size, iova or vaddr not aligned to the minimum IOMMU page -> -EINVAL", async () => {
      const bad: Fields[] = [{ size: 0n }, { size: 0x800n }, { size: PAGE + 0x800n }, { iova: 0x800n }, { iova: MiB + 0x10n }, { vaddr: f.guestRam + 0x800n }, { vaddr: f.guestRam + 1n }];
      for (const fields of bad) await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, fields), EINVAL);
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: PAGE, vaddr: f.guestRam + PAGE, size: PAGE }));
      expect(f.iommu.pgsize).to.equal(PAGE);
      expect(counters(f)).to.include({ dmas: 1, totalPins: mapPins(variant, PAGE) });
    });

    it("an IOVA or vaddr range that wraps past 2^64 -> -EINVAL; one ending at 2^64 - 1 is only limited by the IOVA ranges", async () => {
      await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: TOP_PAGE, size: 2n * PAGE }), EINVAL);
      await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: TOP_PAGE - MiB, size: 4n * MiB }), EINVAL);
      await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { vaddr: TOP_PAGE, size: 2n * PAGE }), EINVAL);
      const top = dmaMap(f, { iova: TOP_PAGE, size: PAGE });
      if (backed) await rejects(f, VFIO_IOMMU_MAP_DMA, top, EINVAL);
      else {
        await succeeds(f, VFIO_IOMMU_MAP_DMA, top);
        expect(counters(f)).to.include({ dmas: 1, totalPins: 0, lockedVm: 0 });
      }
    });

    it("a value no u32 or u64 can hold, in any field -> -EINVAL; a safe-integer number is a u64", async () => {
      for (const field of ["argsz", "flags", "vaddr", "iova", "size"]) {
        for (const value of BAD_NUMBERS) await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { [field]: value }), EINVAL);
      }
      await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { argsz: 32n }), EINVAL);
      await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { argsz: 2 ** 32 }), EINVAL);
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: Number(MiB), size: Number(MiB), vaddr: Number(f.guestRam) }));
      expect(f.iommu.findDma(pages(MiB), 1)!.npages).to.equal(pages(MiB));
    });

    it("any overlap with an existing mapping -> -EEXIST, after the alignment checks; neighbours map", async () => {
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: MiB, vaddr: f.guestRam + MiB, size: MiB }));
      const overlapping: [bigint, bigint][] = [
        [MiB / 2n, MiB], // partial, from below
        [MiB + MiB / 2n, MiB], // partial, past the end
        [0n, 4n * MiB], // containing
        [MiB + MiB / 4n, MiB / 4n], // contained
        [MiB, MiB], // identical
        [2n * MiB - PAGE, 2n * PAGE], // last page
        [0n, MiB + PAGE], // first page
      ];
      for (const [iova, size] of overlapping) await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova, size }), EEXIST);
      await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: MiB + 0x800n, size: MiB }), EINVAL);
      await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: MiB, size: 0n }), EINVAL);
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: 0n, size: MiB }));
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: 2n * MiB, vaddr: f.guestRam + 2n * MiB, size: MiB }));
      expect(counters(f)).to.include({ dmas: 3, dmaAvail: 65532, totalPins: mapPins(variant, 3n * MiB), lockedVm: mapPins(variant, 3n * MiB) });
    });

    it(backed ? "outside the IOVA ranges (the MSI window, beyond the 48-bit aperture) -> -EINVAL" : "without an IOMMU domain there are no IOVA ranges: any IOVA maps", async () => {
      const at = (iova: bigint, n: bigint, size = PAGE): Fields => dmaMap(f, { iova, vaddr: f.guestRam + n * PAGE, size });
      const outside = [at(MSI_START, 0n), at(MSI_END - PAGE, 0n), at(0xfed00000n, 0n, 2n * MiB), at(MSI_START - PAGE, 0n, 2n * PAGE), at(APERTURE_END, 0n), at(APERTURE_END - PAGE, 0n, 2n * PAGE)];
      const inside = [at(MSI_START - PAGE, 1n), at(MSI_END, 2n), at(APERTURE_END - PAGE, 3n)];
      for (const arg of outside) {
        if (backed) await rejects(f, VFIO_IOMMU_MAP_DMA, arg, EINVAL);
      }
      for (const arg of inside) await succeeds(f, VFIO_IOMMU_MAP_DMA, arg);
      expect(counters(f)).to.include({ dmas: 3, totalPins: mapPins(variant, 3n * PAGE), lockedVm: mapPins(variant, 3n * PAGE) });
      if (!backed) {
        for (const iova of [MSI_START, APERTURE_END, 1n << 60n]) await succeeds(f, VFIO_IOMMU_MAP_DMA, at(iova, 4n));
        expect(counters(f)).to.include({ dmas: 6, totalPins: 0, lockedVm: 0 });
      }
    });

    it(backed ? "a vaddr outside the process -> -EFAULT from pinning, all or nothing" : "a vaddr outside the process maps lazily: nothing is pinned at MAP_DMA", async () => {
      const past = dmaMap(f, { vaddr: f.guestRam + f.guestBytes, size: PAGE });
      const straddling = dmaMap(f, { iova: MiB, vaddr: f.guestRam + f.guestBytes - 2n * PAGE, size: 4n * PAGE });
      if (backed) {
        await rejects(f, VFIO_IOMMU_MAP_DMA, past, EFAULT);
        await rejects(f, VFIO_IOMMU_MAP_DMA, straddling, EFAULT);
        expect(counters(f)).to.include({ dmas: 0, totalPins: 0, lockedVm: 0, dmaAvail: 65535 });
      } else {
        await succeeds(f, VFIO_IOMMU_MAP_DMA, past);
        await succeeds(f, VFIO_IOMMU_MAP_DMA, straddling);
        expect(counters(f)).to.include({ dmas: 2, totalPins: 0, lockedVm: 0, dmaAvail: 65533 });
      }
    });
  });

  describe(`uapi: VFIO_IOMMU_UNMAP_DMA validation (${variant})`, () => {
    let f: Fixture;
    beforeEach(async () => {
      f = await Fixture.create({ variant });
      f.check();
    });
    afterEach(async () => {
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    const mapAll = async (): Promise<void> => {
      expect(await f.map()).to.equal(0);
      f.check();
    };
    const startTracking = (): Promise<void> => succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START));

    it("an unreadable argument -> -EFAULT; argsz < 24 or an unknown flag -> -EINVAL", async () => {
      await mapAll();
      for (const arg of [undefined, null, 7, "unmap", Symbol("u"), () => 0]) await rejects(f, VFIO_IOMMU_UNMAP_DMA, arg, EFAULT);
      for (const field of ["argsz", "flags", "iova", "size"]) {
        const missing = dmaUnmap();
        delete missing[field];
        await rejects(f, VFIO_IOMMU_UNMAP_DMA, missing, EFAULT);
      }
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, { argsz: 4, flags: 0 }, EFAULT);
      for (const argsz of [0, 16, 23]) await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ argsz }), EINVAL);
      for (const flags of [1 << 3, 1 << 31 >>> 0, 0xffffffff, VFIO_DMA_UNMAP_FLAG_ALL | (1 << 4)]) await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ flags }), EINVAL);
      for (const field of ["argsz", "flags", "iova", "size"]) {
        for (const value of BAD_NUMBERS) await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ [field]: value }), EINVAL);
      }
      const ok = dmaUnmap({ argsz: 32 });
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, ok);
      expect(ok["size"]).to.equal(f.guestBytes);
      expect(counters(f)).to.include({ dmas: 0, dmaAvail: 65535, totalPins: 0, lockedVm: 0 });
    });

    it("GET_DIRTY_BITMAP with ALL or VADDR -> -EINVAL, before the bitmap, the lock and -EBUSY", async () => {
      await mapAll();
      await startTracking();
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ argsz: 48, flags: GDB | VFIO_DMA_UNMAP_FLAG_ALL, size: 0n, bitmap: bitmap(128) }), EINVAL);
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ argsz: 48, flags: GDB | VFIO_DMA_UNMAP_FLAG_VADDR, bitmap: bitmap(128) }), EINVAL);
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ argsz: 48, flags: GDB | VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_VADDR }), EINVAL);
    });

    it("GET_DIRTY_BITMAP: argsz without room for the bitmap -> -EINVAL; an unreadable bitmap header -> -EFAULT", async () => {
      await mapAll();
      await startTracking();
      for (const argsz of [24, 40, 47]) await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ argsz, flags: GDB }), EINVAL);
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ argsz: 48, flags: GDB }), EFAULT);
      for (const header of [null, 5, "bitmap", { pgsize: PAGE }, { size: 128n }]) await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ argsz: 48, flags: GDB, bitmap: header }), EFAULT);
      for (const value of BAD_NUMBERS) await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ argsz: 48, flags: GDB, bitmap: bitmap(128, { pgsize: value }) }), EINVAL);
    });

    it("GET_DIRTY_BITMAP: verify_bitmap_size (no pages, size 0, > 256 MiB, too small) and a pgsize mismatch -> -EINVAL", async () => {
      await mapAll();
      await startTracking();
      const withBitmap = (fields: Fields, bm: Fields): Fields => dmaUnmap({ argsz: 48, flags: GDB, ...fields, bitmap: bm });
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, withBitmap({}, bitmap(128, { size: 0n })), EINVAL);
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, withBitmap({}, bitmap(128, { size: BITMAP_SIZE_MAX + 8n })), EINVAL);
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, withBitmap({}, bitmap(128, { size: 120n })), EINVAL);
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, withBitmap({ size: 0n }, bitmap(128)), EINVAL);
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, withBitmap({}, bitmap(128, { pgsize: 8n * MiB })), EINVAL);
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, withBitmap({}, bitmap(64, { pgsize: 2n * PAGE })), EINVAL);
      // The largest size verify_bitmap_size accepts passes it.
      const big = withBitmap({}, bitmap(128, { size: BITMAP_SIZE_MAX }));
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, big);
      expect(big["size"]).to.equal(f.guestBytes);
      const data = (big["bitmap"] as { data: Uint8Array }).data;
      expect(setBits(data)).to.deep.equal(backed ? range(0, 1024) : []);
      expect(counters(f)).to.include({ dmas: 0, totalPins: 0, lockedVm: 0 });
    });

    it("GET_DIRTY_BITMAP while dirty tracking is off -> -EINVAL", async () => {
      await mapAll();
      const arg = (): Fields => dmaUnmap({ argsz: 48, flags: GDB, bitmap: bitmap(128) });
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, arg(), EINVAL);
      await startTracking();
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP));
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, arg(), EINVAL);
      await startTracking();
      const ok = arg();
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, ok);
      expect(ok["size"]).to.equal(f.guestBytes);
    });

    if (emulated) {
      it("VADDR with an emulated group -> -EBUSY, before the IOVA checks", async () => {
        await mapAll();
        for (const fields of [{}, { iova: 0x800n }, { size: 0n }, { flags: VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL, size: 0n }, { iova: 7n * PAGE, size: 3n }]) {
          await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ flags: VFIO_DMA_UNMAP_FLAG_VADDR, ...fields }), EBUSY);
        }
        expect(await ioctl(f, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR)).to.equal(0);
      });
    } else {
      it("VADDR without an emulated group: alignment checked; marks the mapping, twice -> -EINVAL; MAP_DMA VADDR restores it", async () => {
        await mapAll();
        expect(await ioctl(f, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR)).to.equal(1);
        await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ flags: VFIO_DMA_UNMAP_FLAG_VADDR, iova: 0x800n }), EINVAL);
        const before = counters(f);
        const mark = dmaUnmap({ flags: VFIO_DMA_UNMAP_FLAG_VADDR });
        await succeeds(f, VFIO_IOMMU_UNMAP_DMA, mark);
        expect(mark["size"]).to.equal(f.guestBytes);
        expect(counters(f)).to.deep.equal({ ...before, vaddrInvalid: 1 });
        await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ flags: VFIO_DMA_UNMAP_FLAG_VADDR }), EINVAL);
        await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { flags: VFIO_DMA_MAP_FLAG_VADDR, size: MiB }), EINVAL);
        await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { flags: VFIO_DMA_MAP_FLAG_VADDR }));
        expect(counters(f)).to.deep.equal(before);
      });
    }

    it("an unaligned iova, ALL with a range, a size that is 0, unaligned or wraps -> -EINVAL", async () => {
      await mapAll();
      const bad: Fields[] = [
        { iova: 0x800n },
        { iova: PAGE + 1n },
        { flags: VFIO_DMA_UNMAP_FLAG_ALL, iova: PAGE, size: 0n },
        { flags: VFIO_DMA_UNMAP_FLAG_ALL, iova: 0n, size: PAGE },
        { flags: VFIO_DMA_UNMAP_FLAG_ALL, iova: 0x800n, size: 0n },
        { flags: VFIO_DMA_UNMAP_FLAG_ALL },
        { size: 0n },
        { size: 0x800n },
        { size: f.guestBytes + 0x800n },
        { iova: TOP_PAGE, size: 2n * PAGE },
        { iova: 2n * PAGE, size: TOP_PAGE },
      ];
      for (const fields of bad) await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap(fields), EINVAL);
      const all = dmaUnmap({ flags: VFIO_DMA_UNMAP_FLAG_ALL, size: 0n });
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, all);
      expect(all["size"]).to.equal(f.guestBytes);
    });

    it("v2 may not bisect a mapping at its head or tail -> -EINVAL; state and size unchanged", async () => {
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: MiB, vaddr: f.guestRam + MiB, size: 2n * MiB }));
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: 3n * MiB, vaddr: f.guestRam + 3n * MiB, size: MiB }));
      const bisecting: [bigint, bigint][] = [
        [2n * MiB, MiB], // head inside the first mapping
        [MiB + PAGE, 3n * MiB - PAGE], // head inside, tail exact
        [0n, 2n * MiB], // tail inside the first mapping
        [MiB, MiB], // starts exactly, ends inside
        [MiB, 2n * MiB + PAGE], // covers the first, tail inside the second
        [0n, 4n * MiB - PAGE], // covers the first, tail inside the second
      ];
      for (const [iova, size] of bisecting) await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ iova, size }), EINVAL);
      expect(counters(f)).to.include({ dmas: 2, totalPins: mapPins(variant, 3n * MiB) });
      const exact = dmaUnmap({ iova: 0n, size: 3n * MiB });
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, exact);
      expect(exact["size"]).to.equal(2n * MiB);
      expect(counters(f)).to.include({ dmas: 1, totalPins: mapPins(variant, MiB), lockedVm: mapPins(variant, MiB) });
    });

    it("a range holding no mapping succeeds with size 0", async () => {
      const empty = dmaUnmap({ flags: VFIO_DMA_UNMAP_FLAG_ALL, size: 0n });
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, empty);
      expect(empty["size"]).to.equal(0n);
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: MiB, vaddr: f.guestRam + MiB, size: MiB }));
      const before = counters(f);
      for (const [iova, size] of [
        [0n, MiB],
        [2n * MiB, 2n * MiB],
        [TOP_PAGE - MiB, MiB],
      ] as const) {
        const arg = dmaUnmap({ iova, size });
        await succeeds(f, VFIO_IOMMU_UNMAP_DMA, arg);
        expect(arg["size"]).to.equal(0n);
      }
      expect(counters(f)).to.deep.equal(before);
    });

    it("UNMAP_ALL removes every mapping, pins and charges included, and reports their total size", async () => {
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: 0n, size: MiB }));
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: 2n * MiB, vaddr: f.guestRam + MiB, size: 2n * MiB }));
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: 1n << 30n, vaddr: f.guestRam + 3n * MiB, size: MiB }));
      expect(counters(f)).to.include({ dmas: 3, dmaAvail: 65532, totalPins: mapPins(variant, 4n * MiB), lockedVm: mapPins(variant, 4n * MiB) });
      const all = dmaUnmap({ flags: VFIO_DMA_UNMAP_FLAG_ALL, size: 0n });
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, all);
      expect(all["size"]).to.equal(4n * MiB);
      expect(counters(f)).to.deep.equal({ dmas: 0, dmaAvail: 65535, lockedVm: 0, totalPins: 0, tracking: false, vaddrInvalid: 0 });
    });

    it("one unmap removes every mapping that starts in the range, holes included, and writes back their sum", async () => {
      for (const [iova, offset] of [
        [0n, 0n],
        [MiB, MiB],
        [3n * MiB, 2n * MiB],
      ] as const) {
        await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova, vaddr: f.guestRam + offset, size: MiB }));
      }
      const tail = dmaUnmap({ iova: MiB, size: 3n * MiB });
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, tail);
      expect(tail["size"]).to.equal(2n * MiB);
      expect(counters(f)).to.include({ dmas: 1, dmaAvail: 65534, totalPins: mapPins(variant, MiB), lockedVm: mapPins(variant, MiB) });
      const head = dmaUnmap({ iova: 0n, size: 1n << 40n });
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, head);
      expect(head["size"]).to.equal(MiB);
      expect(counters(f)).to.include({ dmas: 0, totalPins: 0, lockedVm: 0 });
    });

    it("GET_DIRTY_BITMAP writes each removed mapping's bits at its place in the range", async () => {
      await startTracking();
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: 0n, size: MiB }));
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: 2n * MiB, vaddr: f.guestRam + MiB, size: MiB }));
      const pinned: number[] = [];
      if (f.device !== undefined) {
        expect(vfioPinPages(f.device, (2n * MiB + 3n * PAGE) as Iova, 2, IOMMU_READ | IOMMU_WRITE, new Uint32Array(2))).to.equal(2);
        f.pinned.set(pages(2n * MiB) + 3, 1).set(pages(2n * MiB) + 4, 1);
        pinned.push(512 + 3, 512 + 4);
        f.check();
      }
      const arg = dmaUnmap({ argsz: 48, flags: GDB, iova: 0n, size: 4n * MiB, bitmap: bitmap(128) });
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, arg);
      expect(arg["size"]).to.equal(2n * MiB);
      // A group that never pinned makes every page of an IOMMU-mapped range dirty.
      const expected = backed ? [...range(0, 256), ...range(512, 256)] : pinned;
      expect(setBits((arg["bitmap"] as { data: Uint8Array }).data)).to.deep.equal(expected);
      expect(counters(f)).to.include({ dmas: 0, totalPins: 0, lockedVm: 0 });
      expect(f.pinned.size).to.equal(0);
    });
  });

  describe(`uapi: VFIO_IOMMU_GET_INFO (${variant})`, () => {
    let f: Fixture;
    beforeEach(async () => {
      f = await Fixture.create({ variant });
      f.check();
    });
    afterEach(async () => {
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    const needed = backed ? 24 + 32 + 16 + 16 + 2 * 16 : 24 + 32 + 16;
    const pgsizes = backed ? VTD_PGSIZES : PAGE_MASK;
    const info = (argsz: number): Fields => ({ argsz, flags: 0, iova_pgsizes: 0n, cap_offset: 0xdead });

    it("argsz < 16 -> -EINVAL; an unreadable argument or header field -> -EFAULT", async () => {
      for (const argsz of [0, 8, 15]) await rejects(f, VFIO_IOMMU_GET_INFO, info(argsz), EINVAL);
      for (const arg of [undefined, null, 16, "info", { argsz: 16, flags: 0 }, { argsz: 16, iova_pgsizes: 0n }, { flags: 0, iova_pgsizes: 0n }]) {
        await rejects(f, VFIO_IOMMU_GET_INFO, arg, EFAULT);
      }
      for (const value of [-1, 1.5, 2 ** 32, 16n, "16", null]) await rejects(f, VFIO_IOMMU_GET_INFO, { ...info(16), argsz: value }, EINVAL);
    });

    it(`argsz 16..${needed - 1}: PGSIZES|CAPS, the page sizes and the argsz needed, no capability chain`, async () => {
      for (const argsz of [16, 19, 20, 23, 24, 40, needed - 1]) {
        const arg = info(argsz);
        await succeeds(f, VFIO_IOMMU_GET_INFO, arg);
        expect(arg, `argsz ${argsz}`).to.deep.equal({ argsz: needed, flags: 3, iova_pgsizes: pgsizes, cap_offset: argsz >= 20 ? 0 : 0xdead });
      }
    });

    it("with room for it: the capability chain at 24, linked by absolute offsets (MIGRATION, DMA_AVAIL, then IOVA_RANGE only with a domain)", async () => {
      const migration: VfioInfoCap = { id: 2, version: 1, next: 56, offset: 24, flags: 0, pgsize_bitmap: PAGE, max_dirty_bitmap_size: BITMAP_SIZE_MAX };
      const avail: VfioInfoCap = { id: 3, version: 1, next: backed ? 72 : 0, offset: 56, avail: 65535 };
      const iovaRange: VfioInfoCap = {
        id: 1,
        version: 1,
        next: 0,
        offset: 72,
        nr_iovas: 2,
        iova_ranges: [
          { start: 0n, end: MSI_START - 1n },
          { start: MSI_END, end: APERTURE_END - 1n },
        ],
      };
      for (const argsz of [needed, needed + 100]) {
        const arg = info(argsz);
        await succeeds(f, VFIO_IOMMU_GET_INFO, arg);
        expect(arg).to.deep.equal({ argsz, flags: 3, iova_pgsizes: pgsizes, cap_offset: 24, caps: backed ? [migration, avail, iovaRange] : [migration, avail] });
      }
    });

    it("DMA_AVAIL counts down with each MAP_DMA and back up with each unmap", async () => {
      const availNow = async (): Promise<number> => {
        const arg = info(256);
        await succeeds(f, VFIO_IOMMU_GET_INFO, arg);
        const cap = (arg["caps"] as VfioInfoCap[]).find((c) => c.id === 3);
        return cap?.id === 3 ? cap.avail : -1;
      };
      expect(await availNow()).to.equal(65535);
      for (let i = 0n; i < 3n; i++) {
        expect(await f.map(i * MiB, MiB, i * MiB)).to.equal(0);
        expect(await availNow()).to.equal(65535 - Number(i) - 1);
      }
      await rejects(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { size: MiB }), EEXIST);
      expect(await availNow()).to.equal(65532);
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ iova: 0n, size: 2n * MiB }));
      expect(await availNow()).to.equal(65534);
    });
  });

  describe(`uapi: VFIO_IOMMU_DIRTY_PAGES argument checks (${variant})`, () => {
    let f: Fixture;
    beforeEach(async () => {
      f = await Fixture.create({ variant });
      expect(await f.map()).to.equal(0);
      f.check();
    });
    afterEach(async () => {
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    const { START, STOP, GET } = { START: VFIO_IOMMU_DIRTY_PAGES_FLAG_START, STOP: VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, GET: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP };

    it("unreadable -> -EFAULT; argsz < 8, an unknown flag, no flag or several flags -> -EINVAL; START and STOP are idempotent", async () => {
      for (const arg of [undefined, null, 1, "dirty", { argsz: 8 }, { flags: START }]) await rejects(f, VFIO_IOMMU_DIRTY_PAGES, arg, EFAULT);
      for (const argsz of [0, 4, 7]) await rejects(f, VFIO_IOMMU_DIRTY_PAGES, { argsz, flags: START }, EINVAL);
      for (const flags of [1 << 3, START | (1 << 3), 0xffffffff, 0, START | STOP, START | GET, STOP | GET, START | STOP | GET]) await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirty(flags), EINVAL);
      for (const value of [-1, 1.5, 2 ** 32, 1n]) await rejects(f, VFIO_IOMMU_DIRTY_PAGES, { argsz: value, flags: START }, EINVAL);
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirty(STOP));
      expect(f.iommu.dirtyPageTracking).to.equal(false);
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirty(START));
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, { argsz: 64, flags: START });
      expect(f.iommu.dirtyPageTracking).to.equal(true);
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirty(STOP));
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirty(STOP));
      expect(f.iommu.dirtyPageTracking).to.equal(false);
    });

    it("GET_BITMAP: data size, copy, wrap, verify_bitmap_size, pgsize, alignment, bisection -> each its errno; then not tracking", async () => {
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirty(START));
      const whole = (): Fields => bitmap(128);
      for (const argsz of [8, 16, 47]) await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes, whole(), argsz), EINVAL);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, { argsz: 48, flags: GET }, EFAULT);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, { argsz: 48, flags: GET, data: null }, EFAULT);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, { argsz: 48, flags: GET, data: { iova: 0n, size: f.guestBytes } }, EFAULT);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes, { pgsize: PAGE }), EFAULT);
      // iova + size wraps.
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(TOP_PAGE, 2n * PAGE, bitmap(8)), EINVAL);
      // verify_bitmap_size: no pages, size 0, beyond DIRTY_BITMAP_SIZE_MAX, too small.
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, 0n, whole()), EINVAL);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes, bitmap(128, { size: 0n })), EINVAL);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes, bitmap(128, { size: BITMAP_SIZE_MAX + 8n })), EINVAL);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes, bitmap(128, { size: 120n })), EINVAL);
      // Under the lock: pgsize other than the minimum, unaligned iova or size, bisected mappings.
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes, bitmap(64, { pgsize: 2n * PAGE })), EINVAL);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0x800n, f.guestBytes, whole()), EINVAL);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes - 0x800n, whole()), EINVAL);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes / 2n, whole()), EINVAL);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(PAGE, f.guestBytes - PAGE, whole()), EINVAL);
      // An unwritable buffer faults only when a bit is copied: a mismatched pgsize is found first.
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes, { pgsize: 2n * PAGE, size: 64n }), EINVAL);
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes, { pgsize: PAGE, size: 128n }), EFAULT);
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(8n * MiB, MiB, { pgsize: PAGE, size: 32n }));
      const ok = dirtyGet(0n, f.guestBytes, whole());
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, ok);
      const data = ((ok["data"] as Fields)["bitmap"] as { data: Uint8Array }).data;
      expect(setBits(data)).to.deep.equal(backed ? range(0, 1024) : []);
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirty(STOP));
      await rejects(f, VFIO_IOMMU_DIRTY_PAGES, dirtyGet(0n, f.guestBytes, whole()), EINVAL);
    });
  });

  describe(`uapi: garbage never escapes host.ioctl (${variant})`, () => {
    let f: Fixture;
    beforeEach(async () => {
      f = await Fixture.create({ variant });
      expect(await f.map(0n, MiB)).to.equal(0);
      f.check();
    });
    afterEach(async () => {
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    const expectErrno = (r: number, what: string): void => {
      expect(Number.isInteger(r) && r < 0 && r >= -133, `${what} -> ${r}`).to.equal(true);
    };

    it("whole arguments: every struct ioctl answers a negative errno; the version and extension queries answer >= 0", async () => {
      const before = counters(f);
      const structRequests = [VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, VFIO_IOMMU_GET_INFO, VFIO_IOMMU_DIRTY_PAGES, VFIO_SET_IOMMU];
      const junkRequests: unknown[] = [0, -1, 0xffffffff, 2 ** 40, NaN, 0x3b00 + 200];
      for (const arg of GARBAGE) {
        for (const req of structRequests) expectErrno(await ioctl(f, req, arg), `${req.toString(16)}(${label(arg)})`);
        for (const req of junkRequests) expectErrno(await ioctl(f, req as number, arg), `${label(req)}(${label(arg)})`);
        expect(await ioctl(f, VFIO_GET_API_VERSION, arg)).to.equal(0);
        expect(await ioctl(f, VFIO_CHECK_EXTENSION, arg)).to.equal(0);
        for (const fd of [-1, 999, NaN, 1.5]) expect(await f.host.ioctl(f.qemu, fd, VFIO_IOMMU_MAP_DMA, arg)).to.equal(-9);
      }
      expect(counters(f)).to.deep.equal(before);
      expect(f.host.kernel.crashed).to.equal(false);
      expect(f.host.kernel.warnings).to.deep.equal([]);
      f.check();
    });

    it("field by field: each field of each struct replaced by garbage is a negative errno, and the valid struct then succeeds", async () => {
      await succeeds(f, VFIO_IOMMU_DIRTY_PAGES, dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START));
      const free = 16n * MiB;
      type Template = { request: number; make: () => Fields; garble: string[][] };
      const templates: Template[] = [
        { request: VFIO_IOMMU_MAP_DMA, make: () => dmaMap(f, { iova: free, size: PAGE }), garble: [["argsz"], ["flags"], ["vaddr"], ["iova"], ["size"]] },
        { request: VFIO_IOMMU_UNMAP_DMA, make: () => dmaUnmap({ iova: free, size: PAGE }), garble: [["argsz"], ["flags"], ["iova"], ["size"]] },
        {
          request: VFIO_IOMMU_UNMAP_DMA,
          make: () => dmaUnmap({ argsz: 48, flags: GDB, iova: free, size: PAGE, bitmap: bitmap(8) }),
          garble: [["argsz"], ["iova"], ["size"], ["bitmap"], ["bitmap", "pgsize"], ["bitmap", "size"]],
        },
        { request: VFIO_IOMMU_GET_INFO, make: () => ({ argsz: 16, flags: 0, iova_pgsizes: 0n }), garble: [["argsz"]] },
        { request: VFIO_IOMMU_DIRTY_PAGES, make: () => dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START), garble: [["argsz"], ["flags"]] },
        {
          request: VFIO_IOMMU_DIRTY_PAGES,
          make: () => dirtyGet(free, PAGE, bitmap(8)),
          garble: [["argsz"], ["flags"], ["data"], ["data", "iova"], ["data", "size"], ["data", "bitmap"], ["data", "bitmap", "pgsize"], ["data", "bitmap", "size"]],
        },
      ];
      for (const t of templates) {
        for (const path of t.garble) {
          for (const value of GARBAGE) {
            const arg = t.make();
            let holder: Fields = arg;
            for (const key of path.slice(0, -1)) holder = holder[key] as Fields;
            holder[path[path.length - 1]!] = value;
            const before = counters(f);
            expectErrno(await ioctl(f, t.request, arg), `${t.request.toString(16)} ${path.join(".")} = ${label(value)}`);
            expect(counters(f)).to.deep.equal(before);
          }
        }
        const valid = t.make();
        expect(await ioctl(f, t.request, valid), `valid ${label(valid)}`).to.equal(0);
        if (t.request === VFIO_IOMMU_MAP_DMA) expect(await ioctl(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ iova: free, size: PAGE }))).to.equal(0);
        f.check();
      }
      expect(f.host.kernel.crashed).to.equal(false);
      expect(f.host.kernel.warnings).to.deep.equal([]);
      expect(counters(f)).to.include({ dmas: 1, dmaAvail: 65534, totalPins: mapPins(variant, MiB) });
      expect(await f.map(free, MiB)).to.equal(0);
      expect(counters(f)).to.include({ dmas: 2, totalPins: mapPins(variant, 2n * MiB) });
      f.check();
    });
  });
}

// ---------------------------------------------------------------- v1

for (const variant of ["mdev-only", "iommu-backed"] as const) {
  describe(`uapi: a TYPE1 (v1) container (${variant})`, () => {
    let f: Fixture;
    beforeEach(async () => {
      f = await Fixture.create({ variant, v1: true });
      expect(f.iommu.v2).to.equal(false);
      f.check();
    });
    afterEach(async () => {
      await f.teardown();
      expect(f.leaks()).to.deep.equal(NO_LEAKS);
    });

    it("an unmap starting inside a mapping succeeds with size 0 and removes nothing, even mappings after it", async () => {
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: 0n, size: MiB }));
      await succeeds(f, VFIO_IOMMU_MAP_DMA, dmaMap(f, { iova: MiB, vaddr: f.guestRam + MiB, size: MiB }));
      const before = counters(f);
      for (const [iova, size] of [
        [PAGE, PAGE],
        [MiB / 2n, 4n * MiB],
        [MiB + PAGE, MiB - PAGE],
      ] as const) {
        const arg = dmaUnmap({ iova, size });
        await succeeds(f, VFIO_IOMMU_UNMAP_DMA, arg);
        expect(arg["size"], `[${iova}, +${size})`).to.equal(0n);
      }
      expect(counters(f)).to.deep.equal(before);
    });

    it("an unmap covering a mapping's first IOVA removes the whole mapping", async () => {
      await mapWhole(f);
      const arg = dmaUnmap({ iova: 0n, size: PAGE });
      await succeeds(f, VFIO_IOMMU_UNMAP_DMA, arg);
      expect(arg["size"]).to.equal(f.guestBytes);
      expect(counters(f)).to.include({ dmas: 0, dmaAvail: 65535, totalPins: 0, lockedVm: 0 });
    });

    it("VFIO_IOMMU_DIRTY_PAGES -> -EACCES before its argument is read; GET_DIRTY_BITMAP unmap -> -EINVAL", async () => {
      await mapWhole(f);
      for (const arg of [undefined, null, dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START), dirty(0), { argsz: 0, flags: 0xff }]) await rejects(f, VFIO_IOMMU_DIRTY_PAGES, arg, EACCES);
      await rejects(f, VFIO_IOMMU_UNMAP_DMA, dmaUnmap({ argsz: 48, flags: GDB, bitmap: bitmap(128) }), EINVAL);
      expect(await ioctl(f, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU)).to.equal(1);
    });
  });
}

async function mapWhole(f: Fixture): Promise<void> {
  expect(await f.map()).to.equal(0);
  f.check();
}

describe("uapi: an argument whose memory faults while the kernel copies it", () => {
  it("a throwing getter is -EFAULT and changes nothing; a throwing setter fails the write-back after the unmap, as copy_to_user does", async () => {
    const f = await Fixture.create({ variant: "mdev-only" });
    const boom = (): never => {
      throw new Error("unreadable");
    };
    const map = { argsz: 32, flags: 3, vaddr: f.guestRam, iova: 0n, get size(): bigint { return boom(); } };
    expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_MAP_DMA, map)).to.equal(-14);
    expect(f.iommu.dmas.size).to.equal(0);
    expect(await f.map()).to.equal(0);
    const unmap = { argsz: 24, flags: 0, iova: 0n, get size(): bigint { return f.guestBytes; }, set size(_v: bigint) { boom(); } };
    expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, unmap)).to.equal(-14);
    expect(f.iommu.dmas.size).to.equal(0);
    expect(f.host.kernel.crashed).to.equal(false);
    f.check();
    await f.teardown();
    expect(f.leaks()).to.deep.equal(NO_LEAKS);
  });
});
