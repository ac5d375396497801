import { expect } from "chai";
import { FOREIGN_FRAME_BIT, IDENTITY_FRAME_BIT, INVALID_P2M_ENTRY, PvP2m } from "./pv-p2m.js";
import { P2m, P2mType } from "./p2m.js";

describe("PV P2M (Linux's pfn -> mfn array)", () => {
  it("keeps 64-bit entries with the marker bits as a typed-array pair", () => {
    const p2m = new PvP2m(16);
    expect(p2m.entry(0)).to.equal(INVALID_P2M_ENTRY);
    expect(INVALID_P2M_ENTRY).to.equal(0xffff_ffff_ffff_ffffn);
    expect(p2m.mfn(0)).to.equal(-1);
    p2m.set(1, 0x1234);
    p2m.setForeign(2, 0x5678);
    p2m.setIdentity(3);
    expect(p2m.entry(1)).to.equal(0x1234n);
    expect(p2m.entry(2)).to.equal(FOREIGN_FRAME_BIT | 0x5678n);
    expect(p2m.entry(3)).to.equal(IDENTITY_FRAME_BIT | 3n);
    expect([p2m.mfn(1), p2m.mfn(2), p2m.mfn(3)]).to.deep.equal([0x1234, 0x5678, 3]);
    expect([p2m.isForeign(2), p2m.isForeign(1), p2m.isIdentity(3), p2m.isInvalid(4)]).to.deep.equal([true, false, true, true]);
    expect(p2m.pfnToBfn(2)).to.equal(0x5678);
    expect(p2m.entry(99)).to.equal(INVALID_P2M_ENTRY);
    expect(p2m.findInvalid(1)).to.equal(4);
    p2m.clear(2);
    expect(p2m.entry(2)).to.equal(INVALID_P2M_ENTRY);
    expect(p2m.lo.length + p2m.hi.length).to.equal(32);
  });
});

describe("HVM P2M", () => {
  it("gives paging types and holes no MFN and keeps it across a retype", () => {
    const p2m = new P2m();
    p2m.set(1, 100, P2mType.ram_rw);
    p2m.set(2, 200, P2mType.paged_out);
    expect([p2m.mfn(1), p2m.mfn(2), p2m.mfn(3)]).to.deep.equal([100, -1, -1]);
    expect([p2m.type(1), p2m.type(2), p2m.type(3)]).to.deep.equal([P2mType.ram_rw, P2mType.paged_out, P2mType.invalid]);
    p2m.retype(1, P2mType.ioreq_server);
    expect([p2m.type(1), p2m.mfn(1)]).to.deep.equal([P2mType.ioreq_server, 100]);
    p2m.set(1, 0, P2mType.invalid);
    expect(p2m.entries).to.equal(1);
  });
});
