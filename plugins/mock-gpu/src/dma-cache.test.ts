import { expect } from "chai";
import { DmaCache } from "./dma-cache.js";

const h = (id: number) => ({ id });

describe("mock GPU: DMA cache (gvt_dma)", () => {
  it("indexes an entry by gfn and by device address, with a refcount", () => {
    const c = new DmaCache();
    const s = c.insert(42, 0x1000_0000n, h(1));
    expect(c.findGfn(42)).to.equal(s);
    expect(c.findAddr(0x1000_0000n)).to.equal(s);
    expect([c.gfnOf(s), c.addrOf(s), c.refOf(s), c.count, c.refs]).to.deep.equal([42, 0x1000_0000n, 1, 1, 1]);
    expect(c.get(s)).to.equal(2);
    expect(c.refs).to.equal(2);
    expect(c.put(s)).to.equal(1);
    expect(c.remove(s)).to.deep.equal(h(1));
    expect([c.findGfn(42), c.findAddr(0x1000_0000n), c.count, c.refs]).to.deep.equal([-1, -1, 0, 0]);
  });

  it("removes an entry whatever its refcount, and reuses its slot", () => {
    const c = new DmaCache();
    const s = c.insert(1, 0x1000n, h(1));
    c.get(s);
    c.get(s);
    expect(c.refs).to.equal(3);
    c.remove(s);
    expect([c.count, c.refs]).to.deep.equal([0, 0]);
    expect(c.insert(2, 0x2000n, h(2))).to.equal(s);
  });

  it("refuses a gfn or an address that is cached already", () => {
    const c = new DmaCache();
    c.insert(1, 0x1000n, h(1));
    expect(() => c.insert(1, 0x2000n, h(2))).to.throw(RangeError);
    expect(() => c.insert(2, 0x1000n, h(2))).to.throw(RangeError);
    expect(c.count).to.equal(1);
  });

  it("lists the slots of a gfn range in gfn order, and grows past its first capacity", () => {
    const c = new DmaCache();
    for (let g = 0; g < 100; g++) c.insert(1000 - g * 10, BigInt(g) << 12n, h(g));
    expect(c.count).to.equal(100);
    const slots = c.slotsInRange(100, 150);
    expect(slots.map((s) => c.gfnOf(s))).to.deep.equal([100, 110, 120, 130, 140]);
    expect(c.slots().length).to.equal(100);
    for (const s of c.slots()) c.remove(s);
    expect([c.count, c.refs, c.slotsInRange(0, 2000).length]).to.deep.equal([0, 0, 0]);
  });
});
