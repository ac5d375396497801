import { expect } from "chai";
import { outcome } from "@vgpu-iommu/core/testing";
import { VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX } from "@vgpu-iommu/core";
import { accessHalf, accessIndex, AWKWARD_TABLE_OFFSET, classifyAccess, entryOffset, HALF_BOTH, HALF_HIGH, HALF_LOW, makeGeometry, MOCK_MAGIC, readRegisters, REGISTER_ACCESS } from "./gtt-geometry.js";

const BAR0 = VFIO_PCI_BAR0_REGION_INDEX;

describe("mock GPU: GTT geometry", () => {
  const g = makeGeometry(0x1000, 512, false);
  const awkward = makeGeometry(AWKWARD_TABLE_OFFSET, 1024, true);

  it("sizes BAR0 as the smallest power of two >= 4 KiB covering the table", () => {
    expect(g.barBytes).to.equal(0x2000);
    expect(makeGeometry(0, 1, false).barBytes).to.equal(4096);
    expect(awkward.barBytes).to.equal(0x4000); // 0x1ffc + 8192 = 0x3ffc
    expect(() => makeGeometry(2, 4, false)).to.throw(RangeError);
    expect(() => makeGeometry(0, 0, false)).to.throw(RangeError);
  });

  it("names the entry and the half of a table access", () => {
    const a8 = classifyAccess(g, BAR0, 0x1000n + 8n * 7n, 8, true);
    expect([accessIndex(a8), accessHalf(a8)]).to.deep.equal([7, HALF_BOTH]);
    const lo = classifyAccess(g, BAR0, 0x1000n + 8n * 3n, 4, true);
    expect([accessIndex(lo), accessHalf(lo)]).to.deep.equal([3, HALF_LOW]);
    const hi = classifyAccess(g, BAR0, 0x1000n + 8n * 3n + 4n, 4, true);
    expect([accessIndex(hi), accessHalf(hi)]).to.deep.equal([3, HALF_HIGH]);
    const last = classifyAccess(g, BAR0, entryOffset(g, 511), 8, true);
    expect(accessIndex(last)).to.equal(511);
  });

  it("accepts an entry that straddles a 4 KiB boundary with awkward geometry, as two halves", () => {
    expect(entryOffset(awkward, 0)).to.equal(0x1ffcn);
    const lo = classifyAccess(awkward, BAR0, 0x1ffcn, 4, true);
    const hi = classifyAccess(awkward, BAR0, 0x2000n, 4, true);
    expect([accessIndex(lo), accessHalf(lo), accessIndex(hi), accessHalf(hi)]).to.deep.equal([0, HALF_LOW, 0, HALF_HIGH]);
    expect(entryOffset(awkward, 512)).to.equal(0x2ffcn);
    expect(outcome(() => classifyAccess(awkward, BAR0, 0x1ffcn, 8, true))).to.equal("EINVAL:mock-eight-byte-write");
    expect(accessHalf(classifyAccess(awkward, BAR0, 0x1ffcn, 8, false))).to.equal(HALF_BOTH); // reads may be 8 bytes
  });

  it("refuses what the device does not accept with -EINVAL and a stable reason", () => {
    expect(outcome(() => classifyAccess(g, VFIO_PCI_CONFIG_REGION_INDEX, 0n, 4, true))).to.equal("EINVAL:mock-bad-region");
    expect(outcome(() => classifyAccess(g, BAR0, 0x1000n, 3, true))).to.equal("EINVAL:mock-bad-access-size");
    expect(outcome(() => classifyAccess(g, BAR0, 0x1000n, 16, true))).to.equal("EINVAL:mock-bad-access-size");
    expect(outcome(() => classifyAccess(g, BAR0, 0x1000n, 2, true))).to.equal("EINVAL:mock-bad-access-size");
    expect(outcome(() => classifyAccess(g, BAR0, 0x1000n, 1, false))).to.equal("EINVAL:mock-bad-access-size");
    expect(outcome(() => classifyAccess(g, BAR0, 0x1004n, 8, true))).to.equal("EINVAL:mock-misaligned");
    expect(outcome(() => classifyAccess(g, BAR0, 0x1002n, 4, true))).to.equal("EINVAL:mock-misaligned");
    expect(outcome(() => classifyAccess(g, BAR0, 0xffcn, 8, true))).to.equal("EINVAL:mock-straddles-table");
    expect(outcome(() => classifyAccess(g, BAR0, 0x2000n, 4, true))).to.equal("EINVAL:mock-outside-bar");
    expect(outcome(() => classifyAccess(g, BAR0, -4n, 4, true))).to.equal("EINVAL:mock-outside-bar");
    expect(outcome(() => classifyAccess(g, BAR0, 0x11n, 4, true))).to.equal("EINVAL:mock-misaligned");
  });

  it("treats the rest of BAR0 as registers: naturally aligned 1/2/4/8-byte accesses", () => {
    expect(classifyAccess(g, BAR0, 0n, 8, false)).to.equal(REGISTER_ACCESS);
    expect(classifyAccess(g, BAR0, 0x3n, 1, true)).to.equal(REGISTER_ACCESS);
    expect(classifyAccess(g, BAR0, 0xffen, 2, true)).to.equal(REGISTER_ACCESS);
    const out = new Uint8Array(12);
    readRegisters(g, 0, out);
    const view = new DataView(out.buffer);
    expect([view.getUint32(0, true), view.getUint32(4, true), view.getUint32(8, true)]).to.deep.equal([MOCK_MAGIC, 512, 0x1000]);
    const none = new Uint8Array(4).fill(7);
    readRegisters(makeGeometry(8, 4, false), 0, none);
    expect([...none]).to.deep.equal([7, 7, 7, 7]);
  });
});
