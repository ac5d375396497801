/**
 * The group uapi of drivers/vfio/group.c: opening /dev/vfio/N, GET_STATUS,
 * SET_CONTAINER, UNSET_CONTAINER and GET_DEVICE_FD, with the exact errno of
 * each check in the kernel's order, and what a group leaving its container
 * does to the type1 backend and its mappings.
 */
import { expect } from "chai";
import { inspect } from "node:util";
import { NO_LEAKS, VTD, X86_MSI, hostLeaks } from "../testing/fixture.js";
import { createHost, type Host } from "../host/host.js";
import type { Process } from "../host/process.js";
import type { Hva } from "../address/address.js";
import type { VfioDevice, VfioGroupNode } from "./vfio-device.js";
import type { VfioContainer } from "./vfio-container.js";
import { VfioError } from "../errors/kernel-error.js";
import {
  VFIO_CHECK_EXTENSION,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_GROUP_UNSET_CONTAINER,
  VFIO_IOMMU_MAP_DMA,
  VFIO_SET_IOMMU,
} from "./uapi.js";
import { VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_TYPE1v2_IOMMU, VFIO_UPDATE_VADDR } from "./type1/type1-iommu.js";

const ENOENT = -2;
const EBADF = -9;
const EFAULT = -14;
const EBUSY = -16;
const ENODEV = -19;
const EINVAL = -22;
const ENOTTY = -25;
const EBADFD = -77;

const MiB = 1n << 20n;
const GUEST = 4n * MiB;
const PCI_NAME = "0000:01:00.0";
const VIABLE = VFIO_GROUP_FLAGS_VIABLE;
const SET = VFIO_GROUP_FLAGS_CONTAINER_SET | VFIO_GROUP_FLAGS_VIABLE;

const label = (v: unknown): string => inspect(v, { depth: 2, breakLength: Infinity });

/** A host with one emulated (mdev) group and one IOMMU-backed group, neither opened yet. */
interface World {
  readonly host: Host;
  readonly qemu: Process;
  readonly guestRam: Hva;
  readonly mdev: VfioDevice;
  readonly mdevNode: VfioGroupNode;
  readonly pciNode: VfioGroupNode;
  /** close_device calls, by device name. */
  readonly closed: string[];
}

function world(): World {
  const host = createHost({ ramBytes: 1n << 30n, seed: 7 });
  const qemu = host.spawn({ comm: "qemu" });
  const guestRam = qemu.mmap({ length: GUEST });
  const closed: string[] = [];
  const mdev = host.vfio.registerEmulatedDevice("mdev0", {
    dmaUnmap() {},
    closeDevice(vdev) {
      closed.push(vdev.name);
    },
  });
  const pciNode = host.vfio.addIommuGroup(VTD, [X86_MSI]);
  host.vfio.addDevice(pciNode, PCI_NAME);
  return { host, qemu, guestRam, mdev, mdevNode: mdev.node, pciNode, closed };
}

const path = (node: VfioGroupNode): string => `/dev/vfio/${node.number}`;
const ioctl = (w: World, fd: number, request: number, arg?: unknown): Promise<number> => w.host.ioctl(w.qemu, fd, request, arg);

async function status(w: World, fd: number): Promise<number> {
  const arg = { argsz: 8, flags: 0xff };
  expect(await ioctl(w, fd, VFIO_GROUP_GET_STATUS, arg)).to.equal(0);
  return arg.flags;
}

function containerOf(w: World, fd: number): VfioContainer {
  const file = w.qemu.files.get(fd) as { container?: VfioContainer } | undefined;
  expect(file?.container, `fd ${fd} is a container`).to.not.equal(undefined);
  return file!.container!;
}

/** Closes what is still open (devices first, as QEMU's exit does), ends the process, and checks nothing leaked. */
async function finish(w: World): Promise<void> {
  const fds = [...w.qemu.files.keys()].sort((a, b) => b - a);
  for (const fd of fds) expect(await w.host.close(w.qemu, fd)).to.equal(0);
  w.qemu.exit();
  w.host.assertInvariants();
  expect(w.host.vfio.containers.size).to.equal(0);
  expect(hostLeaks(w.host)).to.deep.equal(NO_LEAKS);
}

describe("uapi: opening VFIO group nodes", () => {
  it("a group opens once (-EBUSY while open, again after close); an unknown node -> -ENOENT", async () => {
    const w = world();
    const fd = w.host.open(w.qemu, path(w.mdevNode));
    expect(fd).to.be.at.least(3);
    expect(w.host.open(w.qemu, path(w.mdevNode))).to.equal(EBUSY);
    const other = w.host.spawn({ comm: "other" });
    expect(w.host.open(other, path(w.mdevNode))).to.equal(EBUSY);
    expect(w.host.open(w.qemu, path(w.pciNode))).to.be.at.least(3);
    for (const p of ["/dev/vfio/99", "/dev/vfio/", "/dev/vfio/abc", "/dev/vfio/-1", "/dev/vfio/1/", "/dev/vfio", "/dev/null", ""]) expect(w.host.open(w.qemu, p), p).to.equal(ENOENT);
    expect(await w.host.close(w.qemu, fd)).to.equal(0);
    expect(w.mdevNode.opened).to.equal(false);
    const again = w.host.open(w.qemu, path(w.mdevNode));
    expect(again).to.be.at.least(3);
    expect(again).to.not.equal(fd);
    // Every open of /dev/vfio/vfio is a new container.
    const c1 = w.host.open(w.qemu, "/dev/vfio/vfio");
    const c2 = w.host.open(w.qemu, "/dev/vfio/vfio");
    expect(containerOf(w, c1)).to.not.equal(containerOf(w, c2));
    expect(w.host.vfio.containers.size).to.equal(2);
    // A container no group holds goes away with its file.
    expect(await w.host.close(w.qemu, c1)).to.equal(0);
    expect(w.host.vfio.containers.size).to.equal(1);
    other.exit();
    await finish(w);
  });

  it("ioctl or close on a closed or never-opened fd -> -EBADF; an unknown group ioctl -> -ENOTTY", async () => {
    const w = world();
    const fd = w.host.open(w.qemu, path(w.mdevNode));
    for (const req of [0, 0x3b00 + 199, VFIO_SET_IOMMU, VFIO_IOMMU_MAP_DMA, VFIO_CHECK_EXTENSION, -1]) expect(await ioctl(w, fd, req, {}), `request ${req}`).to.equal(ENOTTY);
    expect(await w.host.close(w.qemu, fd)).to.equal(0);
    expect(await ioctl(w, fd, VFIO_GROUP_GET_STATUS, { argsz: 8, flags: 0 })).to.equal(EBADF);
    expect(await w.host.close(w.qemu, fd)).to.equal(EBADF);
    for (const bad of [-1, 0, 1, 2, 999, NaN]) {
      expect(await ioctl(w, bad, VFIO_GROUP_GET_STATUS, { argsz: 8, flags: 0 }), `fd ${bad}`).to.equal(EBADF);
      expect(await w.host.close(w.qemu, bad), `fd ${bad}`).to.equal(EBADF);
    }
    // A file descriptor belongs to its process.
    const other = w.host.spawn({ comm: "other" });
    const mine = w.host.open(w.qemu, path(w.pciNode));
    expect(await w.host.ioctl(other, mine, VFIO_GROUP_GET_STATUS, { argsz: 8, flags: 0 })).to.equal(EBADF);
    other.exit();
    await finish(w);
  });
});

describe("uapi: VFIO_GROUP_GET_STATUS", () => {
  it("VIABLE alone, CONTAINER_SET|VIABLE once attached, VIABLE again once detached", async () => {
    const w = world();
    const group = w.host.open(w.qemu, path(w.pciNode));
    const container = w.host.open(w.qemu, "/dev/vfio/vfio");
    expect(await status(w, group)).to.equal(VIABLE);
    expect(await ioctl(w, group, VFIO_GROUP_SET_CONTAINER, container)).to.equal(0);
    expect(await status(w, group)).to.equal(SET);
    expect(await ioctl(w, container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    expect(await status(w, group)).to.equal(SET);
    expect(await ioctl(w, group, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
    expect(await status(w, group)).to.equal(VIABLE);
    w.host.assertInvariants();
    await finish(w);
  });

  it("an unreadable argument or missing field -> -EFAULT; argsz < 8 -> -EINVAL and flags untouched", async () => {
    const w = world();
    const group = w.host.open(w.qemu, path(w.mdevNode));
    for (const arg of [undefined, null, 8, "status", Symbol("s"), { argsz: 8 }, { flags: 0 }, { argsz: undefined, flags: 0 }]) {
      expect(await ioctl(w, group, VFIO_GROUP_GET_STATUS, arg), label(arg)).to.equal(EFAULT);
    }
    for (const argsz of [0, 4, 7, -1, 8.5, 2 ** 32, 8n, "8", null]) {
      const arg = { argsz, flags: 0x55 };
      expect(await ioctl(w, group, VFIO_GROUP_GET_STATUS, arg), label(argsz)).to.equal(EINVAL);
      expect(arg.flags).to.equal(0x55);
    }
    const big = { argsz: 4096, flags: 0x55 };
    expect(await ioctl(w, group, VFIO_GROUP_GET_STATUS, big)).to.equal(0);
    expect(big).to.deep.equal({ argsz: 4096, flags: VIABLE });
    await finish(w);
  });
});

describe("uapi: VFIO_GROUP_SET_CONTAINER", () => {
  it("checks in the kernel's order: get_user (-EFAULT), fdget (-EBADF), already set (-EINVAL), not a container (-EBADFD)", async () => {
    const w = world();
    const mdevFd = w.host.open(w.qemu, path(w.mdevNode));
    const pciFd = w.host.open(w.qemu, path(w.pciNode));
    const c1 = w.host.open(w.qemu, "/dev/vfio/vfio");
    const c2 = w.host.open(w.qemu, "/dev/vfio/vfio");
    const set = (fd: number, arg: unknown): Promise<number> => ioctl(w, fd, VFIO_GROUP_SET_CONTAINER, arg);
    for (const arg of [undefined, null, "3", String(c1), 1.5, NaN, Infinity, BigInt(c1), { fd: c1 }, Symbol("fd")]) expect(await set(mdevFd, arg), label(arg)).to.equal(EFAULT);
    // fdget(-1) finds no file: current group.c has no separate "fd < 0 -> -EINVAL" check (that was vfio.c before 6.0).
    for (const fd of [-1, -100, 999, 0]) expect(await set(mdevFd, fd), `fd ${fd}`).to.equal(EBADF);
    expect(await set(mdevFd, pciFd)).to.equal(EBADFD);
    expect(await set(mdevFd, mdevFd)).to.equal(EBADFD);
    expect(w.mdevNode.container).to.equal(undefined);
    expect(await status(w, mdevFd)).to.equal(VIABLE);

    expect(await set(mdevFd, c1)).to.equal(0);
    expect(await status(w, mdevFd)).to.equal(SET);
    expect(w.mdevNode.container).to.equal(containerOf(w, c1));
    // Already set: -EINVAL for any container, and ahead of the file-type check; fdget still comes first.
    expect(await set(mdevFd, c1)).to.equal(EINVAL);
    expect(await set(mdevFd, c2)).to.equal(EINVAL);
    expect(await set(mdevFd, pciFd)).to.equal(EINVAL);
    expect(await set(mdevFd, 999)).to.equal(EBADF);
    expect(await set(mdevFd, "x")).to.equal(EFAULT);
    expect(containerOf(w, c1).groups).to.have.length(1);
    expect(containerOf(w, c2).groups).to.have.length(0);

    expect(await set(pciFd, c1)).to.equal(0);
    expect(containerOf(w, c1).groups).to.have.length(2);
    w.host.assertInvariants();
    await finish(w);
  });

  it("a group joining a container with a backend attaches to it: an IOMMU group brings IOVA ranges and pins the existing mappings", async () => {
    const w = world();
    const mdevFd = w.host.open(w.qemu, path(w.mdevNode));
    const pciFd = w.host.open(w.qemu, path(w.pciNode));
    const c = w.host.open(w.qemu, "/dev/vfio/vfio");
    expect(await ioctl(w, mdevFd, VFIO_GROUP_SET_CONTAINER, c)).to.equal(0);
    expect(await ioctl(w, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    const map = { argsz: 32, flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE, vaddr: w.guestRam, iova: 0n, size: GUEST };
    expect(await ioctl(w, c, VFIO_IOMMU_MAP_DMA, map)).to.equal(0);
    const iommu = containerOf(w, c).iommu!;
    expect({ pins: w.host.phys.totalPins, locked: w.qemu.mm.lockedVm, ranges: iommu.iovaList.length }).to.deep.equal({ pins: 0, locked: 0, ranges: 0 });
    expect(await ioctl(w, pciFd, VFIO_GROUP_SET_CONTAINER, c)).to.equal(0);
    expect({ pins: w.host.phys.totalPins, locked: w.qemu.mm.lockedVm, ranges: iommu.iovaList.length }).to.deep.equal({ pins: 1024, locked: 1024, ranges: 2 });
    expect(containerOf(w, c).iommu).to.equal(iommu);
    w.host.assertInvariants();
    await finish(w);
  });
});

describe("uapi: VFIO_GROUP_UNSET_CONTAINER", () => {
  it("not set -> -EINVAL; an open device fd -> -EBUSY until every device fd is closed", async () => {
    const w = world();
    const group = w.host.open(w.qemu, path(w.mdevNode));
    const c = w.host.open(w.qemu, "/dev/vfio/vfio");
    expect(await ioctl(w, group, VFIO_GROUP_UNSET_CONTAINER)).to.equal(EINVAL);
    expect(await ioctl(w, group, VFIO_GROUP_SET_CONTAINER, c)).to.equal(0);
    expect(await ioctl(w, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    const d1 = await ioctl(w, group, VFIO_GROUP_GET_DEVICE_FD, "mdev0");
    const d2 = await ioctl(w, group, VFIO_GROUP_GET_DEVICE_FD, "mdev0");
    expect(d1).to.be.at.least(3);
    expect(d2).to.be.at.least(3);
    expect(w.mdev.openCount).to.equal(2);
    expect(w.mdevNode.containerUsers).to.equal(2);
    expect(containerOf(w, c).iommu!.devices).to.deep.equal([w.mdev]);
    expect(await ioctl(w, group, VFIO_GROUP_UNSET_CONTAINER)).to.equal(EBUSY);
    expect(await w.host.close(w.qemu, d1)).to.equal(0);
    expect(w.closed).to.deep.equal([]);
    expect(await ioctl(w, group, VFIO_GROUP_UNSET_CONTAINER)).to.equal(EBUSY);
    expect(await w.host.close(w.qemu, d2)).to.equal(0);
    expect(w.closed).to.deep.equal(["mdev0"]);
    expect(w.mdevNode.containerUsers).to.equal(1);
    expect(await status(w, group)).to.equal(SET);
    expect(await ioctl(w, group, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
    expect(await status(w, group)).to.equal(VIABLE);
    expect(await ioctl(w, group, VFIO_GROUP_UNSET_CONTAINER)).to.equal(EINVAL);
    w.host.assertInvariants();
    await finish(w);
  });

  for (const order of [
    ["mdev", "pci"],
    ["pci", "mdev"],
  ] as const) {
    it(`${order[0]} group leaves first: the backend and its mappings stay until the last group leaves (${order.join(", ")})`, async () => {
      const w = world();
      const fds = { mdev: w.host.open(w.qemu, path(w.mdevNode)), pci: w.host.open(w.qemu, path(w.pciNode)) };
      const c = w.host.open(w.qemu, "/dev/vfio/vfio");
      for (const fd of [fds.mdev, fds.pci]) expect(await ioctl(w, fd, VFIO_GROUP_SET_CONTAINER, c)).to.equal(0);
      expect(await ioctl(w, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
      const container = containerOf(w, c);
      const iommu = container.iommu!;
      for (const iova of [0n, 1n << 32n]) {
        expect(await ioctl(w, c, VFIO_IOMMU_MAP_DMA, { argsz: 32, flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE, vaddr: w.guestRam, iova, size: GUEST })).to.equal(0);
      }
      const state = (): unknown => ({ dmas: iommu.dmas.size, avail: iommu.dmaAvail, pins: w.host.phys.totalPins, locked: w.qemu.mm.lockedVm, domains: iommu.domains.length });
      expect(state()).to.deep.equal({ dmas: 2, avail: 65533, pins: 2048, locked: 2048, domains: 1 });
      w.host.assertInvariants();

      expect(await ioctl(w, fds[order[0]], VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
      expect(container.iommu).to.equal(iommu);
      // The last domain leaving while an emulated group stays unpins and uncharges every page but keeps the mappings.
      expect(state()).to.deep.equal(order[0] === "pci" ? { dmas: 2, avail: 65533, pins: 0, locked: 0, domains: 0 } : { dmas: 2, avail: 65533, pins: 2048, locked: 2048, domains: 1 });
      expect(await ioctl(w, c, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR)).to.equal(order[0] === "mdev" ? 1 : 0);
      w.host.assertInvariants();

      expect(await ioctl(w, fds[order[1]], VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
      expect(container.iommu).to.equal(undefined);
      expect(container.groups).to.have.length(0);
      expect(state()).to.deep.equal({ dmas: 0, avail: 65535, pins: 0, locked: 0, domains: 0 });
      expect(w.host.stats().mappings).to.equal(0);
      // The container is back to its unset state: backend ioctls -> -EINVAL, extensions answered without a backend.
      expect(await ioctl(w, c, VFIO_IOMMU_MAP_DMA, { argsz: 32, flags: 3, vaddr: w.guestRam, iova: 0n, size: GUEST })).to.equal(EINVAL);
      expect(await ioctl(w, c, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR)).to.equal(0);
      expect(await ioctl(w, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(EINVAL);
      expect(await ioctl(w, fds.pci, VFIO_GROUP_SET_CONTAINER, c)).to.equal(0);
      expect(await ioctl(w, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
      expect(container.iommu).to.not.equal(iommu);
      expect(container.iommu!.dmas.size).to.equal(0);
      w.host.assertInvariants();
      await finish(w);
    });
  }

  it("closing the last group fd releases the backend like UNSET_CONTAINER; the container fd stays usable", async () => {
    const w = world();
    const group = w.host.open(w.qemu, path(w.pciNode));
    const c = w.host.open(w.qemu, "/dev/vfio/vfio");
    expect(await ioctl(w, group, VFIO_GROUP_SET_CONTAINER, c)).to.equal(0);
    expect(await ioctl(w, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    expect(await ioctl(w, c, VFIO_IOMMU_MAP_DMA, { argsz: 32, flags: 3, vaddr: w.guestRam, iova: 0n, size: GUEST })).to.equal(0);
    expect(w.host.phys.totalPins).to.equal(1024);
    expect(await w.host.close(w.qemu, group)).to.equal(0);
    expect(containerOf(w, c).iommu).to.equal(undefined);
    expect(w.host.vfio.containers.has(containerOf(w, c))).to.equal(true);
    expect({ pins: w.host.phys.totalPins, locked: w.qemu.mm.lockedVm, mappings: w.host.stats().mappings }).to.deep.equal({ pins: 0, locked: 0, mappings: 0 });
    expect(await ioctl(w, c, VFIO_IOMMU_MAP_DMA, { argsz: 32, flags: 3, vaddr: w.guestRam, iova: 0n, size: GUEST })).to.equal(EINVAL);
    w.host.assertInvariants();
    await finish(w);
  });
});

describe("uapi: VFIO_GROUP_GET_DEVICE_FD", () => {
  it("an unreadable name -> -EFAULT; an unknown name -> -ENODEV before the container is looked at; no container or no IOMMU -> -EINVAL", async () => {
    const w = world();
    const mdevFd = w.host.open(w.qemu, path(w.mdevNode));
    const pciFd = w.host.open(w.qemu, path(w.pciNode));
    const get = (fd: number, name: unknown): Promise<number> => ioctl(w, fd, VFIO_GROUP_GET_DEVICE_FD, name);
    for (const name of [undefined, null, 0, 7n, { name: "mdev0" }, ["mdev0"], Symbol("mdev0")]) expect(await get(mdevFd, name), label(name)).to.equal(EFAULT);
    for (const name of ["", "mdev1", "MDEV0", "mdev0 ", PCI_NAME]) expect(await get(mdevFd, name), name).to.equal(ENODEV);
    expect(await get(pciFd, "mdev0")).to.equal(ENODEV);
    expect(await get(mdevFd, "mdev0")).to.equal(EINVAL);
    expect(await get(pciFd, PCI_NAME)).to.equal(EINVAL);
    const c = w.host.open(w.qemu, "/dev/vfio/vfio");
    for (const fd of [mdevFd, pciFd]) expect(await ioctl(w, fd, VFIO_GROUP_SET_CONTAINER, c)).to.equal(0);
    expect(await get(mdevFd, "mdev0")).to.equal(EINVAL);
    expect(await get(pciFd, PCI_NAME)).to.equal(EINVAL);
    expect(await get(mdevFd, "nope")).to.equal(ENODEV);
    expect({ mdev: w.mdev.openCount, users: w.mdevNode.containerUsers }).to.deep.equal({ mdev: 0, users: 1 });
    expect(await ioctl(w, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    const mdevDev = await get(mdevFd, "mdev0");
    const pciDev = await get(pciFd, PCI_NAME);
    expect(mdevDev).to.be.at.least(3);
    expect(pciDev).to.be.at.least(3);
    expect(mdevDev).to.not.equal(pciDev);
    expect({ mdev: w.mdev.openCount, mdevUsers: w.mdevNode.containerUsers, pciUsers: w.pciNode.containerUsers }).to.deep.equal({ mdev: 1, mdevUsers: 2, pciUsers: 2 });
    // Only devices with a dma_unmap callback join type1's device list.
    expect(containerOf(w, c).iommu!.devices).to.deep.equal([w.mdev]);
    // A device fd answers -ENOTTY to ioctls its driver does not implement.
    expect(await ioctl(w, mdevDev, 0x3b00 + 150, {})).to.equal(ENOTTY);
    for (const fd of [mdevFd, pciFd]) expect(await ioctl(w, fd, VFIO_GROUP_UNSET_CONTAINER)).to.equal(EBUSY);
    w.host.assertInvariants();
    await finish(w);
    expect(w.closed).to.deep.equal(["mdev0"]);
  });

  it("open_device failing with an errno returns it and leaves the group, the fd table and the device list as they were", async () => {
    const w = world();
    const refusing = w.host.vfio.registerEmulatedDevice("mdev-busy", {
      dmaUnmap() {},
      openDevice() {
        throw new VfioError("EBUSY", "vendor-busy");
      },
    });
    const group = w.host.open(w.qemu, path(refusing.node));
    const c = w.host.open(w.qemu, "/dev/vfio/vfio");
    expect(await ioctl(w, group, VFIO_GROUP_SET_CONTAINER, c)).to.equal(0);
    expect(await ioctl(w, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    const fdsBefore = w.qemu.files.size;
    expect(await ioctl(w, group, VFIO_GROUP_GET_DEVICE_FD, "mdev-busy")).to.equal(EBUSY);
    expect({ files: w.qemu.files.size, open: refusing.openCount, users: refusing.node.containerUsers, devices: containerOf(w, c).iommu!.devices.length }).to.deep.equal({
      files: fdsBefore,
      open: 0,
      users: 1,
      devices: 0,
    });
    expect(await ioctl(w, group, VFIO_GROUP_UNSET_CONTAINER)).to.equal(0);
    w.host.assertInvariants();
    await finish(w);
  });
});

describe("uapi: garbage never escapes a group fd", () => {
  it("every group ioctl answers a negative errno to junk, and the host keeps working", async () => {
    const w = world();
    const group = w.host.open(w.qemu, path(w.mdevNode));
    const c = w.host.open(w.qemu, "/dev/vfio/vfio");
    const junk: unknown[] = [undefined, null, true, -1, 1.5, NaN, -Infinity, 2 ** 64, "", "junk", Symbol("j"), -1n, 1n << 100n, [], {}, { argsz: Symbol("a"), flags: 0 }, { argsz: -8, flags: 0 }, () => 0, new Uint8Array(8)];
    for (const arg of junk) {
      for (const req of [VFIO_GROUP_GET_STATUS, VFIO_GROUP_SET_CONTAINER, VFIO_GROUP_UNSET_CONTAINER, VFIO_GROUP_GET_DEVICE_FD, 0, 0x3b00 + 199, 0xffffffff]) {
        const r = await ioctl(w, group, req, arg);
        expect(Number.isInteger(r) && r < 0 && r >= -133, `${req.toString(16)}(${label(arg)}) -> ${r}`).to.equal(true);
      }
      expect(await ioctl(w, c, VFIO_SET_IOMMU, arg)).to.equal(EINVAL);
    }
    expect(w.host.kernel.crashed).to.equal(false);
    expect(w.host.kernel.warnings).to.deep.equal([]);
    expect(w.mdevNode.container).to.equal(undefined);
    expect(await ioctl(w, group, VFIO_GROUP_SET_CONTAINER, c)).to.equal(0);
    expect(await ioctl(w, c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)).to.equal(0);
    expect(await ioctl(w, group, VFIO_GROUP_GET_DEVICE_FD, "mdev0")).to.be.at.least(3);
    w.host.assertInvariants();
    await finish(w);
  });
});
