/**
 * Attaching and detaching groups of a type1 container (linux-vfio.md section
 * 2.6): domain sharing, replay of existing mappings into a new domain (pinning
 * and charging them when none was mapped yet), aperture, reserved-region and
 * MSI checks, re-accounting when the last IOMMU domain leaves while mdevs
 * remain, and the page-size bitmap and IOVA list reported by GET_INFO.
 */
import { expect } from "chai";
import sinon from "sinon";
import { Fixture, NO_LEAKS, VTD, X86_MSI, type Variant } from "../../testing/fixture.js";
import { vfioUnpinPages } from "../vendor-api.js";
import { VFIO_DMA_CC_IOMMU, type Type1Events } from "./type1-iommu.js";
import { IommuDomain, type IommuHardware, type ReservedRegion } from "../../iommu/iommu-domain.js";
import { RLIM_INFINITY } from "../../host/process.js";
import type { BackingKind } from "../../host/memory-object.js";
import type { VfioGroupNode } from "../vfio-device.js";
import { VFIO_CHECK_EXTENSION, VFIO_GROUP_SET_CONTAINER, VFIO_GROUP_UNSET_CONTAINER, VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, type VfioIommuType1Info } from "../uapi.js";
import { addrOfPage, U64_MAX, type Iova } from "../../address/address.js";

const MIB = 1n << 20n;
const PAGE_MASK = U64_MAX & ~0xfffn;
const VTD_PGSIZES = 0x1000n | 0x200000n | 0x40000000n;
/** The VT-d aperture minus the x86 MSI window. */
const VTD_RANGES = [
  { start: 0n, end: 0xfedfffffn },
  { start: 0xfef00000n, end: (1n << 48n) - 1n },
];
const EPERM = -1;
const ENOMEM = -12;
const EINVAL = -22;

/** An AMD-Vi-like IOMMU: a 40-bit aperture, no 1 GiB pages, and the HyperTransport hole reserved. */
const AMDVI: IommuHardware = { driver: "amd-iommu", aperture: { start: 0n, last: (1n << 40n) - 1n }, pgsizeBitmap: 0x1000n | 0x200000n, msiIsolation: true, enforceCacheCoherency: true };
const HT_HOLE: ReservedRegion = { start: 0xfd00000000n, length: 0x300000000n, type: "reserved" };

interface AddedGroup {
  readonly node: VfioGroupNode;
  readonly fd: number;
  /** VFIO_GROUP_SET_CONTAINER's result. */
  readonly ret: number;
}

let functions = 0;

/** A new vfio-pci function in its own IOMMU group, opened and set to the fixture's container. */
async function addGroup(f: Fixture, hw: IommuHardware = VTD, reserved: readonly ReservedRegion[] = [X86_MSI]): Promise<AddedGroup> {
  const node = f.host.vfio.addIommuGroup(hw, reserved);
  f.host.vfio.addDevice(node, `0000:0${2 + (functions++ % 8)}:00.0`);
  const fd = f.host.open(f.qemu, `/dev/vfio/${node.number}`);
  expect(fd).to.be.greaterThan(0);
  const ret = await f.host.ioctl(f.qemu, fd, VFIO_GROUP_SET_CONTAINER, f.containerFd);
  return { node, fd, ret };
}

async function removeGroup(f: Fixture, g: AddedGroup): Promise<void> {
  if (g.node.container !== undefined) expect(await f.host.ioctl(f.qemu, g.fd, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
  expect(await f.host.close(f.qemu, g.fd)).to.equal(0);
}

/** VFIO_IOMMU_GET_INFO: the page-size bitmap and the IOVA ranges (undefined when the capability is absent). */
async function info(f: Fixture): Promise<{ pgsizes: bigint; ranges: { start: bigint; end: bigint }[] | undefined }> {
  const s: VfioIommuType1Info = { argsz: 1024, flags: 0, iova_pgsizes: 0n, cap_offset: 0 };
  expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_GET_INFO, s)).to.equal(0);
  const cap = s.caps!.find((c) => c.id === 1);
  return { pgsizes: s.iova_pgsizes, ranges: cap === undefined ? undefined : (cap as { iova_ranges: { start: bigint; end: bigint }[] }).iova_ranges };
}

/** UNMAP_DMA of the whole 48-bit space (not FLAG_ALL): every mapping goes; then the invariants. */
async function unmapAll(f: Fixture): Promise<void> {
  expect((await f.unmap(0n, 1n << 48n)).ret).to.equal(0);
  f.check();
}

function counters(f: Fixture): { lockedVm: number; totalPins: number; externalPins: number; mappings: number } {
  const s = f.host.stats();
  return { lockedVm: f.qemu.mm.lockedVm, totalPins: f.host.phys.totalPins, externalPins: s.externalPins, mappings: s.mappings };
}

const mappedPages = (f: Fixture): number[] => f.iommu.domains.map((d) => d.domain.mappedPages);
const iommuMapped = (f: Fixture): boolean[] => [...f.iommu.dmas.values()].map((d) => d.iommuMapped);

type Attached = Parameters<Type1Events["groupAttached"]>[0];

describe("type1 groups and domains", () => {
  let f: Fixture;
  let extra: AddedGroup[];

  async function create(variant: Variant, backing?: BackingKind): Promise<void> {
    f = await Fixture.create({ variant, ...(backing === undefined ? {} : { backing }) });
    extra = [];
  }

  async function attach(hw?: IommuHardware, reserved?: readonly ReservedRegion[]): Promise<AddedGroup> {
    const g = await addGroup(f, hw, reserved);
    extra.push(g);
    return g;
  }

  /** Releases what a test left: its extra groups, then the fixture; nothing may leak. */
  async function finish(): Promise<void> {
    for (const g of extra.reverse()) if (f.qemu.files.has(g.fd)) await removeGroup(f, g);
    await f.teardown();
    expect(f.leaks()).to.deep.equal(NO_LEAKS);
  }

  describe("the first IOMMU-backed group of an mdev-only container", () => {
    it("replays every mapping: pins and charges it once, maps it into the new domain", async () => {
      await create("mdev-only");
      expect(await f.map(0n, 2n * MIB, 0n)).to.equal(0);
      expect(await f.map(2n * MIB, 2n * MIB, 2n * MIB)).to.equal(0);
      f.pin(5, 16);
      f.pin(7); // a second reference: still one page, one charge
      expect(counters(f)).to.deep.equal({ lockedVm: 16, totalPins: 16, externalPins: 16, mappings: 2 });
      expect(await info(f)).to.deep.equal({ pgsizes: PAGE_MASK, ranges: undefined });
      expect(f.iommu.numNonPinnedGroups).to.equal(0);
      const events: Attached[] = [];
      const sub = f.iommu.on("groupAttached", (e) => events.push(e));
      const g = await attach();
      sub.dispose();
      expect(g.ret).to.equal(0);
      f.check();
      // Every page is now pinned by the mapping; the 16 external pins are not charged twice.
      expect(counters(f)).to.deep.equal({ lockedVm: 1024, totalPins: 1024 + 16, externalPins: 16, mappings: 2 });
      expect(f.iommu.domains.length).to.equal(1);
      expect(mappedPages(f)).to.deep.equal([1024]);
      expect(iommuMapped(f)).to.deep.equal([true, true]);
      const dma = f.iommu.findDma(7, 1)!;
      expect(f.iommu.domains[0]!.domain.iovaToPfn(7)).to.equal(dma.frameAt(7));
      expect([...f.iommu.dmas.values()].map((d) => d.lockedVm)).to.deep.equal([512, 512]);
      expect(events).to.deep.equal([{ group: g.node.iommuGroup.id, type: "iommu", domain: f.iommu.domains[0]!.domain.id, replayedPages: 1024 }]);
      expect(f.iommu.numNonPinnedGroups).to.equal(1);
      expect(await info(f)).to.deep.equal({ pgsizes: VTD_PGSIZES, ranges: VTD_RANGES });
      // External pins now ride on MAP_DMA's charge.
      f.pin(600);
      expect(counters(f)).to.deep.equal({ lockedVm: 1024, totalPins: 1024 + 17, externalPins: 17, mappings: 2 });
      await unmapAll(f);
      expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, externalPins: 0, mappings: 0 });
      await finish();
    });

    for (const backing of ["scattered-4k", "thp"] as const) {
      it(`fails SET_CONTAINER with -ENOMEM over RLIMIT_MEMLOCK and leaves nothing pinned or charged (${backing})`, async () => {
        await create("memlock-limited", backing);
        expect(await f.map()).to.equal(0);
        f.pin(100, 8);
        const before = counters(f);
        expect(before).to.deep.equal({ lockedVm: 8, totalPins: 8, externalPins: 8, mappings: 1 });
        const g = await attach();
        expect(g.ret).to.equal(ENOMEM);
        f.check();
        expect(counters(f)).to.deep.equal(before);
        expect(f.iommu.domains.length).to.equal(0);
        expect(iommuMapped(f)).to.deep.equal([false]);
        expect(f.iommu.numNonPinnedGroups).to.equal(0);
        expect(g.node.container).to.equal(undefined);
        expect(await info(f)).to.deep.equal({ pgsizes: PAGE_MASK, ranges: undefined });
        expect(f.host.kernel.messages.filter((m) => m.includes("RLIMIT_MEMLOCK")).length).to.equal(1);
        // With the limit lifted the same group attaches and the replay charges every page.
        f.qemu.rlimitMemlock = RLIM_INFINITY;
        expect(await f.host.ioctl(f.qemu, g.fd, VFIO_GROUP_SET_CONTAINER, f.containerFd)).to.equal(0);
        f.check();
        expect(counters(f)).to.deep.equal({ lockedVm: 1024, totalPins: 1024 + 8, externalPins: 8, mappings: 1 });
        await unmapAll(f);
        await finish();
      });
    }

    it("unwinds a replay whose iommu_map fails part-way", async () => {
      await create("mdev-only");
      expect(await f.map()).to.equal(0);
      f.pin(10, 4);
      f.host.faults.failNth(3, ["iommu_map"]);
      const g = await attach();
      expect(g.ret).to.equal(ENOMEM);
      expect(f.host.faults.fired).to.equal("iommu_map");
      f.check();
      expect(counters(f)).to.deep.equal({ lockedVm: 4, totalPins: 4, externalPins: 4, mappings: 1 });
      expect(f.iommu.domains.length).to.equal(0);
      expect(iommuMapped(f)).to.deep.equal([false]);
      await unmapAll(f);
      await finish();
    });
  });

  describe("more groups", () => {
    it("a second compatible group shares the domain: nothing is replayed, pinned or charged", async () => {
      await create("iommu-backed");
      expect(await f.map()).to.equal(0);
      f.check();
      const domain = f.iommu.domains[0]!.domain;
      const before = counters(f);
      expect(before).to.deep.equal({ lockedVm: 1024, totalPins: 1024, externalPins: 0, mappings: 1 });
      const events: Attached[] = [];
      const sub = f.iommu.on("groupAttached", (e) => events.push(e));
      const g = await attach();
      sub.dispose();
      expect(g.ret).to.equal(0);
      f.check();
      expect(f.iommu.domains.length).to.equal(1);
      expect(f.iommu.domains[0]!.domain).to.equal(domain);
      expect(f.iommu.domains[0]!.groups.length).to.equal(2);
      expect(events).to.deep.equal([{ group: g.node.iommuGroup.id, type: "iommu", domain: domain.id, replayedPages: 0 }]);
      expect(counters(f)).to.deep.equal(before);
      expect(mappedPages(f)).to.deep.equal([1024]);
      expect(f.iommu.numNonPinnedGroups).to.equal(2);
      expect(await info(f)).to.deep.equal({ pgsizes: VTD_PGSIZES, ranges: VTD_RANGES });
      await removeGroup(f, g);
      f.check();
      expect(f.iommu.domains.length).to.equal(1);
      expect(f.iommu.numNonPinnedGroups).to.equal(1);
      expect(counters(f)).to.deep.equal(before);
      expect(mappedPages(f)).to.deep.equal([1024]);
      await unmapAll(f);
      await finish();
    });

    for (const variant of ["iommu-backed", "mixed"] as const) {
      it(`a group of another IOMMU driver gets a second domain filled from the first (${variant})`, async () => {
        await create(variant);
        expect(await f.map()).to.equal(0);
        if (f.device !== undefined) f.pin(3, 2);
        f.check();
        const pins = f.device !== undefined ? 2 : 0;
        const before = counters(f);
        expect(before).to.deep.equal({ lockedVm: 1024, totalPins: 1024 + pins, externalPins: pins, mappings: 1 });
        const vtd = f.iommu.domains[0]!.domain;
        const events: Attached[] = [];
        const sub = f.iommu.on("groupAttached", (e) => events.push(e));
        const g = await attach(AMDVI, [X86_MSI, HT_HOLE]);
        sub.dispose();
        expect(g.ret).to.equal(0);
        f.check();
        expect(f.iommu.domains.map((d) => d.domain.hw.driver)).to.deep.equal(["amd-iommu", "intel-iommu"]);
        const amd = f.iommu.domains[0]!.domain;
        expect(events).to.deep.equal([{ group: g.node.iommuGroup.id, type: "iommu", domain: amd.id, replayedPages: 0 }]);
        // Copied from the first domain: no new pin, no new charge, the same frames.
        expect(counters(f)).to.deep.equal(before);
        expect(mappedPages(f)).to.deep.equal([1024, 1024]);
        let same = 0;
        for (let p = 0; p < 1024; p++) if (amd.iovaToPfn(p) === vtd.iovaToPfn(p) && amd.iovaToPfn(p) !== 0) same++;
        expect(same).to.equal(1024);
        expect(f.iommu.numNonPinnedGroups).to.equal(2);
        expect(await info(f)).to.deep.equal({
          pgsizes: 0x1000n | 0x200000n,
          ranges: [
            { start: 0n, end: 0xfedfffffn },
            { start: 0xfef00000n, end: 0xfcffffffffn },
          ],
        });
        // A new mapping (the first MiB of guest RAM again, at 16 MiB) is pinned once and mapped into both.
        expect(await f.map(16n * MIB, MIB, 0n)).to.equal(0);
        f.check();
        expect(counters(f)).to.deep.equal({ ...before, lockedVm: 1024 + 256, totalPins: 1024 + 256 + pins, mappings: 2 });
        expect(mappedPages(f)).to.deep.equal([1280, 1280]);
        const unmap = { argsz: 24, flags: 0, iova: 16n * MIB, size: MIB };
        expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_UNMAP_DMA, unmap)).to.equal(0);
        f.check();
        expect(counters(f)).to.deep.equal(before);
        await removeGroup(f, g);
        f.check();
        expect(f.iommu.domains.map((d) => d.domain)).to.deep.equal([vtd]);
        expect(counters(f)).to.deep.equal(before);
        expect(mappedPages(f)).to.deep.equal([1024]);
        expect(f.iommu.numNonPinnedGroups).to.equal(1);
        expect(await info(f)).to.deep.equal({ pgsizes: VTD_PGSIZES, ranges: VTD_RANGES });
        await unmapAll(f);
        await finish();
      });
    }

    it("the same driver without cache coherency enforcement gets its own domain", async () => {
      await create("iommu-backed");
      expect(await f.map()).to.equal(0);
      const cc = (): Promise<number> => f.host.ioctl(f.qemu, f.containerFd, VFIO_CHECK_EXTENSION, VFIO_DMA_CC_IOMMU);
      expect(await cc()).to.equal(1);
      const g = await attach({ ...VTD, enforceCacheCoherency: false });
      expect(g.ret).to.equal(0);
      f.check();
      expect(f.iommu.domains.map((d) => d.enforceCacheCoherency)).to.deep.equal([false, true]);
      expect(mappedPages(f)).to.deep.equal([1024, 1024]);
      expect(counters(f)).to.deep.equal({ lockedVm: 1024, totalPins: 1024, externalPins: 0, mappings: 1 });
      expect(await cc()).to.equal(0);
      await removeGroup(f, g);
      f.check();
      expect(await cc()).to.equal(1);
      await unmapAll(f);
      await finish();
    });
  });

  describe("refused attaches", () => {
    it("an aperture that excludes an existing mapping, or is disjoint from the IOVA list: -EINVAL", async () => {
      await create("iommu-backed");
      expect(await f.map(0n, 2n * MIB, 0n)).to.equal(0);
      expect(await f.map(1n << 40n, 2n * MIB, 2n * MIB)).to.equal(0);
      f.check();
      const before = counters(f);
      const narrow = await attach({ ...VTD, driver: "narrow-iommu", aperture: { start: 0n, last: (1n << 39n) - 1n } });
      expect(narrow.ret).to.equal(EINVAL);
      const disjoint = await attach({ ...VTD, aperture: { start: 1n << 49n, last: (1n << 50n) - 1n } });
      expect(disjoint.ret).to.equal(EINVAL);
      const above = await attach({ ...VTD, aperture: { start: 4n * MIB, last: (1n << 48n) - 1n } });
      expect(above.ret).to.equal(EINVAL); // mapping at 0 lies below the new start
      f.check();
      expect([narrow.node.container, disjoint.node.container, above.node.container]).to.deep.equal([undefined, undefined, undefined]);
      expect(counters(f)).to.deep.equal(before);
      expect(f.iommu.domains.length).to.equal(1);
      expect(f.iommu.numNonPinnedGroups).to.equal(1);
      expect(await info(f)).to.deep.equal({ pgsizes: VTD_PGSIZES, ranges: VTD_RANGES });
      // An aperture that still covers both mappings is fine.
      const wide = await attach({ ...VTD, aperture: { start: 0n, last: (1n << 41n) - 1n } });
      expect(wide.ret).to.equal(0);
      f.check();
      expect(await info(f)).to.deep.equal({ pgsizes: VTD_PGSIZES, ranges: [VTD_RANGES[0]!, { start: 0xfef00000n, end: (1n << 41n) - 1n }] });
      await removeGroup(f, wide);
      f.check();
      // It shared the VT-d domain, which stays: the aperture widens only when a domain is freed.
      expect(f.iommu.domains.length).to.equal(1);
      expect(await info(f)).to.deep.equal({ pgsizes: VTD_PGSIZES, ranges: [VTD_RANGES[0]!, { start: 0xfef00000n, end: (1n << 41n) - 1n }] });
      await unmapAll(f);
      await finish();
    });

    it("a reserved region over an existing mapping: -EINVAL, unless it is direct-relaxable", async () => {
      await create("mdev-only");
      // No IOVA list yet: a mapping over the x86 MSI window is allowed.
      expect(await f.map(0xfee00000n, MIB, 0n)).to.equal(0);
      f.check();
      const msi = await attach(VTD, [X86_MSI]);
      expect(msi.ret).to.equal(EINVAL);
      const direct = await attach(VTD, [{ ...X86_MSI, type: "direct" }]);
      expect(direct.ret).to.equal(EINVAL);
      f.check();
      expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, externalPins: 0, mappings: 1 });
      expect(f.iommu.domains.length).to.equal(0);
      const relaxable = await attach(VTD, [{ ...X86_MSI, type: "direct-relaxable" }]);
      expect(relaxable.ret).to.equal(0);
      f.check();
      expect(counters(f)).to.deep.equal({ lockedVm: 256, totalPins: 256, externalPins: 0, mappings: 1 });
      expect(await info(f)).to.deep.equal({ pgsizes: VTD_PGSIZES, ranges: [{ start: 0n, end: (1n << 48n) - 1n }] });
      await unmapAll(f);
      await finish();
    });

    it("a group without MSI isolation: -EPERM unless allow_unsafe_interrupts", async () => {
      await create("mdev-only");
      expect(await f.map()).to.equal(0);
      f.pin(1, 2);
      const unsafe: IommuHardware = { ...VTD, msiIsolation: false };
      const refused = await attach(unsafe);
      expect(refused.ret).to.equal(EPERM);
      f.check();
      expect(f.host.kernel.messages.filter((m) => m.includes("allow_unsafe_interrupts")).length).to.equal(1);
      expect(counters(f)).to.deep.equal({ lockedVm: 2, totalPins: 2, externalPins: 2, mappings: 1 });
      expect(f.iommu.domains.length).to.equal(0);
      f.host.type1Params.allowUnsafeInterrupts = true;
      expect(await f.host.ioctl(f.qemu, refused.fd, VFIO_GROUP_SET_CONTAINER, f.containerFd)).to.equal(0);
      f.check();
      expect(counters(f)).to.deep.equal({ lockedVm: 1024, totalPins: 1026, externalPins: 2, mappings: 1 });
      await unmapAll(f);
      await finish();
    });
  });

  describe("disable_hugepages", () => {
    let spy: sinon.SinonSpy<Parameters<IommuDomain["map"]>, number>;

    beforeEach(() => {
      spy = sinon.spy(IommuDomain.prototype, "map");
    });

    afterEach(() => {
      spy.restore();
    });

    /** Maximal physically contiguous runs of the first domain over [0, npages). */
    const runs = (npages: number): number => {
      const d = f.iommu.domains[0]!.domain;
      let n = 0;
      for (let p = 0; p < npages; p++) if (p === 0 || d.iovaToPfn(p) !== d.iovaToPfn(p - 1) + 1) n++;
      return n;
    };

    for (const disable of [false, true]) {
      it(`MAP_DMA maps ${disable ? "one page per run" : "whole contiguous runs"} with the same accounting (disableHugepages ${disable})`, async () => {
        await create("iommu-backed", "thp");
        f.host.type1Params.disableHugepages = disable;
        spy.resetHistory();
        expect(await f.map()).to.equal(0);
        f.check();
        const sizes = spy.getCalls().map((c) => c.args[2]);
        expect(sizes.reduce((a, b) => a + b, 0)).to.equal(1024);
        if (disable) expect(sizes).to.deep.equal(new Array(1024).fill(1));
        else {
          expect(runs(1024)).to.be.at.most(2); // 2 MiB THP blocks
          expect(sizes.length).to.equal(runs(1024));
        }
        expect(counters(f)).to.deep.equal({ lockedVm: 1024, totalPins: 1024, externalPins: 0, mappings: 1 });
        expect(mappedPages(f)).to.deep.equal([1024]);
        await unmapAll(f);
        expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, externalPins: 0, mappings: 0 });
        await finish();
      });
    }

    it("a replay maps one page per run too", async () => {
      await create("mdev-only", "thp");
      f.host.type1Params.disableHugepages = true;
      expect(await f.map()).to.equal(0);
      f.pin(0, 3);
      spy.resetHistory();
      const g = await attach();
      expect(g.ret).to.equal(0);
      f.check();
      expect(spy.getCalls().map((c) => c.args[2])).to.deep.equal(new Array(1024).fill(1));
      expect(counters(f)).to.deep.equal({ lockedVm: 1024, totalPins: 1027, externalPins: 3, mappings: 1 });
      expect(mappedPages(f)).to.deep.equal([1024]);
      await unmapAll(f);
      await finish();
    });
  });

  describe("detach", () => {
    it("the last IOMMU group leaving while mdevs remain re-accounts to the external pins", async () => {
      await create("mixed");
      expect(await f.map(0n, 2n * MIB, 0n)).to.equal(0);
      expect(await f.map(2n * MIB, 2n * MIB, 2n * MIB)).to.equal(0);
      f.pin(5, 4);
      f.pin(6);
      f.pin(700);
      expect(counters(f)).to.deep.equal({ lockedVm: 1024, totalPins: 1024 + 5, externalPins: 5, mappings: 2 });
      expect(f.iommu.numNonPinnedGroups).to.equal(1);
      expect(await f.host.ioctl(f.qemu, f.groupFds[1]!, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
      f.check();
      // vfio_iommu_unmap_unpin_reaccount: the mappings stay, charged for their external pins only.
      expect(counters(f)).to.deep.equal({ lockedVm: 5, totalPins: 5, externalPins: 5, mappings: 2 });
      expect([...f.iommu.dmas.values()].map((d) => d.lockedVm)).to.deep.equal([4, 1]);
      expect(f.iommu.domains.length).to.equal(0);
      expect(iommuMapped(f)).to.deep.equal([false, false]);
      expect(f.iommu.numNonPinnedGroups).to.equal(0);
      // The list is rebuilt from the widened aperture with no reserved region left.
      expect(await info(f)).to.deep.equal({ pgsizes: PAGE_MASK, ranges: [{ start: 0n, end: U64_MAX }] });
      // Pins are charged again now that no domain exists; unpinning uncharges.
      f.pin(800);
      expect(counters(f)).to.deep.equal({ lockedVm: 6, totalPins: 6, externalPins: 6, mappings: 2 });
      vfioUnpinPages(f.device!, addrOfPage(800) as Iova, 1);
      f.pinned.delete(800);
      f.check();
      expect(counters(f)).to.deep.equal({ lockedVm: 5, totalPins: 5, externalPins: 5, mappings: 2 });
      await unmapAll(f);
      expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, externalPins: 0, mappings: 0 });
      await finish();
    });

    it("the last group of all leaving removes every mapping (iommu-backed)", async () => {
      await create("iommu-backed");
      expect(await f.map()).to.equal(0);
      f.check();
      const iommu = f.iommu;
      expect(await f.host.ioctl(f.qemu, f.groupFds[0]!, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
      f.check();
      expect(iommu.dmas.size).to.equal(0);
      expect(iommu.dmaAvail).to.equal(iommu.dmaEntryLimit);
      expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, externalPins: 0, mappings: 0 });
      // The container lost its backend with its last group.
      const map = { argsz: 32, flags: 3, vaddr: f.guestRam, iova: 0n, size: 4096n };
      expect(await f.host.ioctl(f.qemu, f.containerFd, VFIO_IOMMU_MAP_DMA, map)).to.equal(EINVAL);
      expect(f.host.kernel.warnings).to.deep.equal([]);
      await finish();
    });

    it("the last group of all leaving removes every mapping (mixed, mdev group last)", async () => {
      await create("mixed");
      expect(await f.map()).to.equal(0);
      f.pin(9);
      vfioUnpinPages(f.device!, addrOfPage(9) as Iova, 1);
      f.pinned.clear();
      f.check();
      expect(await f.host.ioctl(f.qemu, f.groupFds[1]!, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
      f.check();
      expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, externalPins: 0, mappings: 1 });
      expect(await f.host.ioctl(f.qemu, f.groupFds[0]!, VFIO_GROUP_UNSET_CONTAINER)).to.equal(-16); // the device is open
      expect(await f.host.close(f.qemu, f.deviceFd!)).to.equal(0);
      const iommu = f.iommu;
      expect(await f.host.ioctl(f.qemu, f.groupFds[0]!, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
      f.check();
      expect(iommu.dmas.size).to.equal(0);
      expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, externalPins: 0, mappings: 0 });
      expect(f.host.kernel.warnings).to.deep.equal([]);
      await finish();
    });

    it("mixed, IOMMU group last: the mappings go with the last domain", async () => {
      await create("mixed");
      expect(await f.map()).to.equal(0);
      expect(await f.host.close(f.qemu, f.deviceFd!)).to.equal(0);
      expect(await f.host.ioctl(f.qemu, f.groupFds[0]!, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
      f.check();
      // Only the emulated group left: mappings and domain stay.
      expect(counters(f)).to.deep.equal({ lockedVm: 1024, totalPins: 1024, externalPins: 0, mappings: 1 });
      expect(f.iommu.hasEmulated).to.equal(false);
      expect(await f.host.ioctl(f.qemu, f.groupFds[1]!, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
      f.check();
      expect(counters(f)).to.deep.equal({ lockedVm: 0, totalPins: 0, externalPins: 0, mappings: 0 });
      expect(f.host.kernel.warnings).to.deep.equal([]);
      await finish();
    });

    it("num_non_pinned_groups counts IOMMU groups that never pinned, and only those", async () => {
      await create("mixed");
      expect(await f.map()).to.equal(0);
      expect(f.iommu.numNonPinnedGroups).to.equal(1);
      const g2 = await attach();
      const g3 = await attach(AMDVI, [X86_MSI]);
      expect([g2.ret, g3.ret]).to.deep.equal([0, 0]);
      f.check();
      expect(f.iommu.numNonPinnedGroups).to.equal(3);
      f.pin(1); // an mdev pin promotes only the (already promoted) emulated group
      expect(f.iommu.numNonPinnedGroups).to.equal(3);
      await removeGroup(f, g3);
      f.check();
      expect(f.iommu.numNonPinnedGroups).to.equal(2);
      await removeGroup(f, g2);
      f.check();
      expect(f.iommu.numNonPinnedGroups).to.equal(1);
      await unmapAll(f);
      await finish();
    });
  });
});

describe("type1 replay outside the new domain's aperture", () => {
  it("an mdev-only mapping above the IOMMU's address width makes the attach fail -EFAULT, with nothing pinned", async () => {
    const f = await Fixture.create({ variant: "mdev-only" });
    expect(await f.map(1n << 50n)).to.equal(0);
    const node = f.host.vfio.addIommuGroup(VTD, [X86_MSI]);
    f.host.vfio.addDevice(node, "0000:01:00.0");
    const fd = f.host.open(f.qemu, `/dev/vfio/${node.number}`);
    expect(await f.host.ioctl(f.qemu, fd, VFIO_GROUP_SET_CONTAINER, f.containerFd)).to.equal(-14);
    expect(f.iommu.domains.length).to.equal(0);
    expect(f.host.phys.totalPins).to.equal(0);
    expect(f.qemu.mm.lockedVm).to.equal(0);
    f.check();
    await f.teardown();
    expect(f.leaks()).to.deep.equal(NO_LEAKS);
  });
});
