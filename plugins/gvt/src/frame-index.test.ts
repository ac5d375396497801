import { expect } from "chai";
import fc from "fast-check";
import { FrameIndex } from "./frame-index.js";

describe("gvt: FrameIndex (typed-array hash of frame -> slot)", () => {
  it("property: behaves as a Map under random sets and deletes, through growth and wrap-around", () => {
    const key = fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 2 ** 52 }), fc.constantFrom(0, 2 ** 32, 2 ** 32 + 1, 2 ** 53 - 1));
    const op = fc.oneof(fc.tuple(fc.constant("set" as const), key, fc.integer({ min: 0, max: 1e6 })), fc.tuple(fc.constant("del" as const), key, fc.constant(0)));
    fc.assert(
      fc.property(fc.array(op, { maxLength: 400 }), (ops) => {
        const idx = new FrameIndex(4);
        const ref = new Map<number, number>();
        for (const [k, key_, v] of ops) {
          if (k === "set") {
            idx.set(key_, v);
            ref.set(key_, v);
          } else expect(idx.delete(key_)).to.equal(ref.delete(key_));
          expect(idx.size).to.equal(ref.size);
        }
        for (const [k, v] of ref) expect(idx.get(k)).to.equal(v);
        for (const [, k] of ops) if (!ref.has(k)) expect(idx.get(k)).to.equal(-1);
      }),
      { numRuns: 200 },
    );
  });

  it("dense runs of frames (the common case) stay found after deletes in the middle of probe runs", () => {
    const idx = new FrameIndex();
    for (let g = 0; g < 10000; g++) idx.set(0x100000 + g, g);
    for (let g = 0; g < 10000; g += 3) expect(idx.delete(0x100000 + g)).to.equal(true);
    let found = 0;
    for (let g = 0; g < 10000; g++) {
      const s = idx.get(0x100000 + g);
      if (g % 3 === 0) expect(s).to.equal(-1);
      else {
        expect(s).to.equal(g);
        found++;
      }
    }
    expect(found).to.equal(idx.size);
    idx.clear();
    expect(idx.size).to.equal(0);
    expect(idx.get(0x100001)).to.equal(-1);
  });
});
