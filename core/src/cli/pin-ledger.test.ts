import { expect } from "chai";
import { PinLedger } from "./pin-ledger.js";

describe("the run's pin ledger of one vGPU", () => {
  it("counts references, distinct pages, the peak and the total, across 64 Ki-frame chunks", () => {
    const l = new PinLedger("g", "vm", "v", "t");
    l.pinRange(0xffff, 2); // straddles two chunks
    l.pin(0xffff);
    expect([l.liveRefs, l.livePages, l.peakPages, l.pinnedTotal]).to.deep.equal([3, 2, 2, 3]);
    expect(l.refsInRange(0xffff, 1)).to.equal(2);
    expect(l.refsInRange(0x10000, 5)).to.equal(1);
    l.unpin(0xffff);
    l.unpinRange(0xffff, 2);
    expect([l.liveRefs, l.livePages, l.peakPages, l.unbalancedUnpins]).to.deep.equal([0, 0, 2, 0]);
    l.unpin(5);
    expect(l.unbalancedUnpins).to.equal(1);
    expect(l.refsInRange(0, 1 << 20)).to.equal(0);
  });

  it("keeps device translations by handle: pins, mappings, device address space, released once", () => {
    const l = new PinLedger("g", "vm", "v", "t");
    l.addTranslation(1, Float64Array.of(10, 11), [{ device: "gpu", addr: 0x1000n, length: 8192 }]);
    l.addTranslation(2, Float64Array.of(10), []);
    expect([l.liveRefs, l.livePages, l.mappingsMade, l.mappingsLive, l.iovaBytesLive, l.translationsLive]).to.deep.equal([3, 2, 1, 1, 8192, 2]);
    expect(l.liveDeviceAddresses()).to.deep.equal([0x1000n, 0x2000n]);
    expect(l.removeTranslation(1)).to.equal(true);
    expect(l.removeTranslation(1)).to.equal(false);
    expect([l.liveRefs, l.mappingsLive, l.iovaBytesLive, l.iovaBytesPeak]).to.deep.equal([1, 0, 0, 8192]);
    expect(l.removeTranslation(2)).to.equal(true);
    expect(l.liveRefs).to.equal(0);
  });
});
