import { expect } from "chai";
import { runXenBench } from "./bench.js";

describe("Xen bench cases (small smoke run; the figures come from npm run bench)", () => {
  it("runs both cases with their state checks and reports ns/page against the targets", async () => {
    const results = await runXenBench({ guestBytes: 32n << 20n, ramBytes: 512n << 20n, reps: 1 });
    expect(results.map((r) => [r.case, r.unit, r.target])).to.deep.equal([
      ["xen.pviommu.map.4k", "ns/page", 60],
      ["xen.swiotlb.map-sg.4k", "ns/page", 80],
    ]);
    for (const r of results) {
      expect(r.value).to.be.greaterThan(0);
      expect(r.runs!.length).to.equal(1);
      expect(r.note).to.match(/, 32 MiB of scattered guest frames in mapForDevice calls of 512/);
    }
  });
});
