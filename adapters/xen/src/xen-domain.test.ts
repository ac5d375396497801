import { expect } from "chai";
import { BLOCK_PAGES } from "@vgpu-iommu/core";
import { LOOKUP_MISSING, LOOKUP_PAGED, LOOKUP_SHARED } from "./xen-domain.js";
import { P2mType } from "./p2m.js";
import { DOM0_IDENTITY_HOLE } from "./xen.js";
import { MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

describe("Xen domains and the P2M", () => {
  let env: XenEnv;
  afterEach(() => {
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  it("backs an HVM guest with host frames: MFN == host frame, owned by the guest, scattered or in 2 MiB blocks", () => {
    env = xenEnv({ guestBytes: 8n * MiB });
    const { xen, guest, host } = env;
    expect(guest.p2m!.entries).to.equal(2048);
    const mfn = guest.p2m!.mfn(5);
    expect(host.phys.state[mfn]).to.equal(1);
    expect(xen.frames.ownerOf(mfn)).to.equal(guest.domid);
    expect(xen.frames.m2p[mfn]).to.equal(5);
    const big = xen.createGuest({ name: "vm2", memoryBytes: 4n * MiB, superpages: true });
    const base = big.p2m!.mfn(0);
    expect(base % BLOCK_PAGES).to.equal(0);
    for (let g = 0; g < 1024; g++) expect(big.p2m!.mfn(g)).to.equal(g < 512 ? base + g : big.p2m!.mfn(512) + g - 512);
  });

  it("takes a page reference per referenced lookup and refuses holes", () => {
    env = xenEnv();
    const { guest, host } = env;
    const mfn = guest.p2m!.mfn(3);
    expect(guest.getPageFromGfn(3)).to.equal(mfn);
    expect(guest.getPageFromGfn(3, true)).to.equal(mfn);
    expect(host.phys.pins[mfn]).to.equal(2);
    expect(guest.getPageFromGfn(1 << 20)).to.equal(LOOKUP_MISSING);
    expect(guest.getPageFromGfn(-1)).to.equal(LOOKUP_MISSING);
    guest.putPage(mfn);
    guest.putPage(mfn);
    expect(host.phys.totalPins).to.equal(0);
  });

  it("pages a frame out, starts a populate on lookup, answers 'paged' until the pager brings it back with its contents", () => {
    env = xenEnv();
    const { guest, host } = env;
    expect(guest.writeGuest(0x7000n, Uint8Array.of(1, 2, 3))).to.equal(0);
    const inUse = host.phys.framesInUse;
    expect(guest.pageOut(7)).to.equal(0);
    expect(host.phys.framesInUse).to.equal(inUse - 1);
    expect(guest.p2m!.type(7)).to.equal(P2mType.paged_out);
    const requests: number[] = [];
    const sub = guest.on("populateRequested", (e) => requests.push(e.gfn));
    expect(guest.getPageFromGfn(7)).to.equal(LOOKUP_PAGED);
    expect(guest.p2m!.type(7)).to.equal(P2mType.paging_in);
    expect(guest.getPageFromGfn(7)).to.equal(LOOKUP_PAGED);
    expect(requests).to.deep.equal([7]);
    expect(guest.pendingPopulates).to.deep.equal([7]);
    expect(guest.pageOut(7)).to.equal(-22);
    expect(guest.pageIn(7)).to.equal(0);
    expect(guest.pageIn(7)).to.equal(-22);
    expect(guest.pendingPopulates).to.deep.equal([]);
    const out = new Uint8Array(3);
    expect(guest.readGuest(0x7000n, out)).to.equal(0);
    expect([...out]).to.deep.equal([1, 2, 3]);
    const mfn = guest.getPageFromGfn(7);
    expect(mfn).to.be.greaterThan(0);
    expect(guest.pageOut(7)).to.equal(-16);
    guest.putPage(mfn);
    sub.dispose();
  });

  it("refuses shared frames to referenced lookups and will not share a referenced frame", () => {
    env = xenEnv();
    const { guest } = env;
    const mfn = guest.getPageFromGfn(9);
    expect(guest.share(9)).to.equal(-16);
    guest.putPage(mfn);
    expect(guest.share(9)).to.equal(0);
    expect(guest.getPageFromGfn(9)).to.equal(LOOKUP_SHARED);
    expect(guest.getPageFromGfn(9, true)).to.equal(LOOKUP_SHARED);
    expect(guest.share(9)).to.equal(-22);
  });

  it("balloons frames out with decrease_reservation: announces the change, frees unreferenced frames now and referenced ones with their last reference", () => {
    env = xenEnv();
    const { guest, host } = env;
    const held = guest.getPageFromGfn(0x10);
    const events: unknown[] = [];
    const sub = guest.on("p2mChanged", (e) => events.push(e));
    const inUse = host.phys.framesInUse;
    expect(guest.decreaseReservation(0x10, 4)).to.equal(4);
    expect(events).to.deep.equal([{ domid: guest.domid, firstGfn: 0x10, npages: 4, reason: "decrease_reservation" }]);
    expect(host.phys.framesInUse).to.equal(inUse - 3);
    expect(guest.p2m!.type(0x10)).to.equal(P2mType.invalid);
    expect(guest.decreaseReservation(0x10, 4)).to.equal(0);
    expect(events.length).to.equal(1);
    guest.putPage(held);
    expect(host.phys.framesInUse).to.equal(inUse - 4);
    sub.dispose();
  });

  it("crashes a domain: lookups and vCPU accesses fail from then on", () => {
    env = xenEnv();
    const { guest } = env;
    const crashes: unknown[] = [];
    const sub = guest.on("crashed", (e) => crashes.push(e));
    guest.crash("test");
    guest.crash("again");
    expect(guest.state).to.equal("crashed");
    expect(crashes).to.deep.equal([{ domid: guest.domid, reason: "test" }]);
    expect(guest.getPageFromGfn(1)).to.equal(LOOKUP_MISSING);
    expect(guest.vcpuWrite(0n, Uint8Array.of(1))).to.equal(-3);
    expect(guest.vcpuRead(0n, new Uint8Array(1))).to.equal(-3);
    expect(() => guest.assertRunning()).to.throw().with.property("code", "ESRCH");
    sub.dispose();
  });

  it("lays out a PV Dom0's P2M with an identity hole and balloon room, and a PV Dom0 names its own MFNs", () => {
    env = xenEnv({ dom0: { kind: "pv", memoryBytes: 16n * MiB, balloonBytes: 4n * MiB } });
    const { dom0, xen } = env;
    const p2m = dom0.pvP2m!;
    const ram = 4096;
    const hole = DOM0_IDENTITY_HOLE.end - DOM0_IDENTITY_HOLE.first;
    expect(dom0.maxGfn).to.equal(ram + hole + 1024);
    expect(p2m.isIdentity(0xa0)).to.equal(true);
    expect(p2m.isIdentity(0xff)).to.equal(true);
    expect(p2m.isIdentity(0x100)).to.equal(false);
    expect(p2m.isInvalid(ram + hole)).to.equal(true);
    expect(p2m.isInvalid(ram + hole - 1)).to.equal(false);
    const mfn = p2m.mfn(0x100);
    expect(xen.frames.ownerOf(mfn)).to.equal(0);
    expect(dom0.getPageFromGfn(mfn)).to.equal(mfn);
    dom0.putPage(mfn);
    const guestMfn = env.guest.p2m!.mfn(0);
    expect(dom0.getPageFromGfn(guestMfn)).to.equal(LOOKUP_MISSING);
    expect(dom0.decreaseReservation(0xa0, 2)).to.equal(0);
    expect(dom0.decreaseReservation(0x100, 2)).to.equal(2);
  });

  it("destroys domains and gives every frame back", () => {
    env = xenEnv();
    const { xen, guest, host } = env;
    const before = host.phys.framesInUse;
    xen.destroyDomain(guest.domid);
    expect(host.phys.framesInUse).to.equal(before - 16384);
    expect(xen.domain(guest.domid)).to.equal(undefined);
    expect(guest.state).to.equal("destroyed");
  });
});
