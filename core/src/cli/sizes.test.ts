import { expect } from "chai";
import { formatSize, humanSize, parseSize } from "./sizes.js";

describe("stack file sizes", () => {
  it("reads binary units, fractions that come out in whole bytes, and byte counts", () => {
    expect(parseSize("16GiB")).to.equal(16n << 30n);
    expect(parseSize("512 MiB")).to.equal(512n << 20n);
    expect(parseSize("1.5GiB")).to.equal(3n << 29n);
    expect(parseSize("4KiB")).to.equal(4096n);
    expect(parseSize("2TiB")).to.equal(2n << 40n);
    expect(parseSize("7B")).to.equal(7n);
    expect(parseSize(268435456)).to.equal(256n << 20n);
    expect(parseSize("1.5B")).to.equal(undefined);
    expect(parseSize("16 GB")).to.equal(undefined);
    expect(parseSize(-1)).to.equal(undefined);
    expect(parseSize(0.5)).to.equal(undefined);
  });

  it("writes the shortest exact spelling, and a rounded one for people", () => {
    expect(formatSize(16n << 30n)).to.equal("16GiB");
    expect(formatSize(3n << 29n)).to.equal("1536MiB");
    expect(formatSize(4097)).to.equal("4097B");
    expect(humanSize(0)).to.equal("0 B");
    expect(humanSize(1536 << 20)).to.equal("1.5 GiB");
    expect(humanSize(4096)).to.equal("4 KiB");
  });
});
