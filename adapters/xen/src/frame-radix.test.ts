import { expect } from "chai";
import { FrameRadix, RADIX_LEAF } from "./frame-radix.js";

describe("FrameRadix", () => {
  it("stores values with a non-zero attribute per frame and drops empty leaves", () => {
    const t = new FrameRadix();
    expect(t.attr(5)).to.equal(0);
    expect(t.value(5)).to.equal(0);
    t.set(5, 0xdead_beef, 3);
    t.set(6, 7, 1);
    t.set(RADIX_LEAF * 3 + 1, 9, 2);
    expect(t.size).to.equal(3);
    expect(t.leafCount).to.equal(2);
    expect([t.value(5), t.attr(5), t.value(6), t.attr(RADIX_LEAF * 3 + 1)]).to.deep.equal([0xdead_beef, 3, 7, 2]);
    t.set(5, 1, 4);
    expect(t.size).to.equal(3);
    expect(t.clear(5)).to.equal(true);
    expect(t.clear(5)).to.equal(false);
    expect(t.clear(6)).to.equal(true);
    expect(t.leafCount).to.equal(1);
    expect(t.size).to.equal(1);
    expect(t.attr(6)).to.equal(0);
  });

  it("handles frame numbers beyond 2^31 and walks entries in order", () => {
    const t = new FrameRadix();
    const big = 2 ** 40 + 3;
    t.set(big, 1, 1);
    t.set(2 ** 31 + 511, 2, 1);
    t.set(10, 3, 1);
    expect(t.value(big)).to.equal(1);
    expect(t.attr(big - 1)).to.equal(0);
    const seen: number[] = [];
    t.forEachIn(0, Number.MAX_SAFE_INTEGER, (f) => seen.push(f));
    expect(seen).to.deep.equal([10, 2 ** 31 + 511, big]);
    const some: number[] = [];
    t.forEachIn(11, 2 ** 40, (f) => some.push(f));
    expect(some).to.deep.equal([2 ** 31 + 511]);
    t.reset();
    expect(t.size).to.equal(0);
    expect(t.leafCount).to.equal(0);
  });
});
