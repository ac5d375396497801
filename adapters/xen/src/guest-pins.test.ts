import { expect } from "chai";
import { Privcmd } from "./privcmd.js";
import { PinTable, XenGuestPins } from "./guest-pins.js";
import { P2mType } from "./p2m.js";
import { caught, MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

for (const kind of ["pv", "pvh"] as const) {
  describe(`guest pins through privcmd foreign mappings (${kind} Dom0)`, () => {
    let env: XenEnv;
    let pins: XenGuestPins;
    let table: PinTable;
    let privcmd: Privcmd;
    beforeEach(() => {
      env = xenEnv({ dom0: { kind, memoryBytes: 32n * MiB } });
      privcmd = new Privcmd(env.xen, env.dom0);
      table = new PinTable(env.guest);
      pins = new XenGuestPins(privcmd, table);
    });
    afterEach(() => {
      expect(table.underflows).to.equal(0);
      expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
    });

    it("holds one Xen reference per frame however often it is pinned, and returns the MFNs", () => {
      const { guest, host, xen } = env;
      const out = new Uint32Array(40);
      const gfns = Array.from({ length: 40 }, (_, i) => 0x100 + i);
      pins.pin(gfns, 40, true, out);
      expect([...out]).to.deep.equal(gfns.map((g) => guest.p2m!.mfn(g)));
      expect(xen.hypercalls(kind === "pv" ? "mmu_update" : "memory_op")).to.equal(kind === "pv" ? 3 : 40);
      pins.pin([0x100, 0x100, 0x200], 3, false, out);
      expect(host.phys.totalPins).to.equal(41);
      expect(host.phys.pins[guest.p2m!.mfn(0x100)]).to.equal(1);
      expect([table.pinnedFrames, table.pins, table.count[0x100]]).to.deep.equal([41, 43, 3]);
      if (kind === "pvh") {
        const g = privcmd.dom0GfnOf(guest.p2m!.mfn(0x105));
        expect(env.dom0.p2m!.type(g)).to.equal(P2mType.map_foreign);
        expect(env.dom0.p2m!.mfn(g)).to.equal(guest.p2m!.mfn(0x105));
        expect(privcmd.foreignMapped).to.equal(41);
      }
      pins.unpin([0x100, 0x100, 0x200], 3);
      pins.unpin(gfns, 40);
      if (kind === "pvh") expect(xen.hypercalls("memory_op")).to.equal(41 + 41);
      expect([host.phys.totalPins, table.pinnedFrames, table.pins]).to.deep.equal([0, 0, 0]);
      if (kind === "pvh") expect(privcmd.foreignMapped).to.equal(0);
      pins.unpin([0x100], 1);
      expect(table.underflows).to.equal(1);
      table.underflows = 0;
    });

    it("is all or nothing: a paged-out frame in the middle is EAGAIN (privcmd -ENOENT), starts a populate, and leaves nothing pinned", () => {
      const { guest, host } = env;
      pins.pin([0x10], 1, false, new Uint32Array(1));
      expect(guest.pageOut(0x22)).to.equal(0);
      const e = caught(() => pins.pin([0x20, 0x21, 0x22, 0x23, 0x10], 5, true, new Uint32Array(5)));
      expect([e.code, e.errno, e.reason]).to.deep.equal(["EAGAIN", 11, "guest-frame-paged-out"]);
      expect(e.fields).to.deep.include({ index: 2, gfn: 0x22, domid: guest.domid, cause: { api: "privcmd", status: -2, name: "-ENOENT" } });
      expect(guest.pendingPopulates).to.deep.equal([0x22]);
      expect([host.phys.totalPins, table.pinnedFrames, table.pins, table.count[0x20], table.count[0x10]]).to.deep.equal([1, 1, 1, 0, 1]);
      expect(guest.pageIn(0x22)).to.equal(0);
      pins.pin([0x20, 0x21, 0x22], 3, true, new Uint32Array(3));
      expect(host.phys.totalPins).to.equal(4);
      pins.unpin([0x20, 0x21, 0x22, 0x10], 4);
    });

    it("refuses shared frames, holes, frames beyond the guest and a crashed guest, in the shared vocabulary", () => {
      const { guest, host } = env;
      expect(guest.share(0x30)).to.equal(0);
      const shared = caught(() => pins.pin([0x2f, 0x30], 2, true, new Uint32Array(2)));
      expect([shared.code, (shared.fields.cause as { status: number }).status]).to.deep.equal(kind === "pv" ? ["ENOMEM", -12] : ["EINVAL", -22]);
      const sharedRead = caught(() => pins.pin([0x30], 1, false, new Uint32Array(1)));
      expect(sharedRead.code).to.equal("EINVAL");
      guest.decreaseReservation(0x40, 1);
      const hole = caught(() => pins.pin([0x40], 1, false, new Uint32Array(1)));
      expect([hole.code, hole.reason, hole.fields.index]).to.deep.equal(["EINVAL", "guest-frame-not-mappable", 0]);
      const beyond = caught(() => pins.pin([0x41, guest.maxGfn], 2, false, new Uint32Array(2)));
      expect([beyond.code, beyond.reason, beyond.fields.index]).to.deep.equal(["EINVAL", "gfn-outside-guest", 1]);
      expect(host.phys.totalPins).to.equal(0);
      guest.crash("test");
      const crashed = caught(() => pins.pin([0x41], 1, false, new Uint32Array(1)));
      expect([crashed.code, crashed.errno, crashed.reason]).to.deep.equal(["ESRCH", 3, "guest-not-running"]);
      const err = new Int32Array(2);
      expect(privcmd.mapBatch(guest.domid, [1, 2], 0, 2, false, new Uint32Array(2), err)).to.equal(2);
      expect([...err]).to.deep.equal([-3, -3]);
    });

    it("keeps the MFN it pinned when the guest balloons the frame out, and frees it with the last unpin", () => {
      const { guest, host } = env;
      const out = new Uint32Array(2);
      pins.pin([0x50, 0x51], 2, true, out);
      const inUse = host.phys.framesInUse;
      expect(guest.decreaseReservation(0x50, 2)).to.equal(2);
      expect(host.phys.framesInUse).to.equal(inUse);
      pins.unpin([0x50, 0x51], 2);
      expect(host.phys.framesInUse).to.equal(inUse - 2);
      expect(host.phys.state[out[0]!]).to.equal(0);
    });
  });
}
