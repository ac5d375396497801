import { expect } from "chai";
import { fillContiguous, fillFromFrames, fillFromHalves } from "./addr-array.js";

describe("device-address arrays", () => {
  it("writes page addresses exactly, across the 2^20-page word boundary and far above it", () => {
    const out = new BigUint64Array(3);
    fillContiguous(out, 0xf_ffff, 3);
    expect([...out]).to.deep.equal([0xf_ffffn << 12n, 0x10_0000n << 12n, 0x10_0001n << 12n]);
    fillFromFrames(out, [1, 2 ** 40, 0xabcdef], 3, 248 * 262144);
    expect([...out]).to.deep.equal([(1n + 248n * 262144n) << 12n, (2n ** 40n + 248n * 262144n) << 12n, (0xabcdefn + 248n * 262144n) << 12n]);
    fillFromHalves(out, Uint32Array.of(0, 1, 0xffff_ffff), Uint32Array.of(0x1000, 0x800, 0xffff_ffff), 3);
    expect([...out]).to.deep.equal([0x1000n, 0x1_0000_0800n, 0xffff_ffff_ffff_ffffn]);
  });

  it("writes into a subarray without touching its neighbours", () => {
    const all = new BigUint64Array(4).fill(7n);
    fillContiguous(all.subarray(1, 3), 5, 2);
    expect([...all]).to.deep.equal([7n, 5n << 12n, 6n << 12n, 7n]);
  });
});
