import { expect } from "chai";
import { f64Array, u32Array, u32Columns, u64WithHalves } from "./typed-slab.js";

describe("address/typed-slab: arrays carved from shared slabs", () => {
  it("carves zeroed, 8-byte aligned, non-overlapping arrays from one slab", () => {
    const a = u32Array(100);
    const b = f64Array(40);
    const c = u32Array(33);
    expect([a.length, b.length, c.length]).to.deep.equal([100, 40, 33]);
    expect(a.buffer).to.equal(b.buffer);
    expect(b.buffer).to.equal(c.buffer);
    for (const x of [a, b, c]) expect(x.byteOffset % 8).to.equal(0);
    expect(b.byteOffset).to.be.at.least(a.byteOffset + a.byteLength);
    expect(c.byteOffset).to.be.at.least(b.byteOffset + b.byteLength);
    a.fill(0xffffffff);
    b.fill(-1);
    expect([...c].every((v) => v === 0)).to.equal(true);
  });

  it("keeps arrays of at most 64 bytes on the heap and gives large ones a buffer of their own", () => {
    const small = u32Array(16);
    const large = u32Array(8192);
    expect([small.byteOffset, small.buffer.byteLength]).to.deep.equal([0, 64]);
    expect([large.byteOffset, large.buffer.byteLength]).to.deep.equal([0, 32768]);
  });

  it("replaces a full slab: arrays handed out before and after never share bytes", () => {
    const seen: Uint32Array[] = [];
    for (let i = 0; i < 40; i++) seen.push(u32Array(1000));
    const buffers = new Set(seen.map((x) => x.buffer));
    expect(buffers.size).to.be.greaterThan(1);
    for (const buf of buffers) {
      const inBuf = seen.filter((x) => x.buffer === buf).sort((x, y) => x.byteOffset - y.byteOffset);
      for (let k = 1; k < inBuf.length; k++) expect(inBuf[k]!.byteOffset).to.be.at.least(inBuf[k - 1]!.byteOffset + 4000);
    }
  });

  it("columns are adjacent views of one region; even a one-entry record is carved", () => {
    const [x, y, z] = u32Columns(3, 5) as [Uint32Array, Uint32Array, Uint32Array];
    expect([y.byteOffset - x.byteOffset, z.byteOffset - y.byteOffset, x.buffer === z.buffer]).to.deep.equal([20, 20, true]);
    const [one] = u32Columns(1, 1) as [Uint32Array];
    expect(one.buffer.byteLength).to.equal(1 << 16);
  });

  it("u64 halves: element 2i is the low half, 2i + 1 the high one", () => {
    const { u64, halves } = u64WithHalves(3);
    halves[2] = 0x1234_5000;
    halves[3] = 0x7;
    expect(u64[1]).to.equal(0x7_1234_5000n);
    u64[2] = 0xffff_ffff_0000_0001n;
    expect([halves[4], halves[5]]).to.deep.equal([1, 0xffff_ffff]);
  });
});
