import { expect } from "chai";
import fc from "fast-check";
import { IommuDomain, UnmappedRuns, type IommuHardware } from "./iommu-domain.js";
import { FaultInjector } from "../host/fault-injector.js";

const HW_2M: IommuHardware = {
  driver: "test-iommu",
  aperture: { start: 0n, last: (1n << 48n) - 1n },
  pgsizeBitmap: 0x1000n | 0x200000n,
  msiIsolation: true,
  enforceCacheCoherency: true,
};
const HW_4K: IommuHardware = { ...HW_2M, pgsizeBitmap: 0x1000n };

/** The obviously correct page table: IOVA page -> frame. */
class Reference {
  readonly table = new Map<number, number>();

  map(iova: number, pfn: number, n: number): void {
    for (let k = 0; k < n; k++) this.table.set(iova + k, pfn + k);
  }

  unmap(iova: number, n: number): number {
    let cleared = 0;
    for (let k = 0; k < n; k++) if (this.table.delete(iova + k)) cleared++;
    return cleared;
  }

  pfn(iova: number): number {
    return this.table.get(iova) ?? 0;
  }
}

type Op = { kind: "map"; iova: number; pfn: number; n: number } | { kind: "unmap"; iova: number; n: number } | { kind: "runs"; iova: number; n: number };

// Windows of 512 pages near a chunk boundary (65536), aligned and unaligned, so large entries, splits and chunk crossings all occur.
const page = fc.oneof(fc.integer({ min: 65536 - 1536, max: 65536 + 1536 }), fc.constantFrom(65536 - 1024, 65536 - 512, 65536, 65536 + 512));
const frame = fc.oneof(fc.integer({ min: 1 << 20, max: (1 << 20) + 4096 }), fc.constantFrom(1 << 20, (1 << 20) + 512, (1 << 20) + 1024));
const length = fc.oneof(fc.integer({ min: 1, max: 1600 }), fc.constantFrom(512, 1024, 511, 513));
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant("map" as const), iova: page, pfn: frame, n: length }),
  fc.record({ kind: fc.constant("unmap" as const), iova: page, n: length }),
  fc.record({ kind: fc.constant("runs" as const), iova: page, n: length }),
);

/** Applies `ops`, mapping only unmapped ranges (the domain's contract), and checks every page and counter against the reference. */
function check(hw: IommuHardware, ops: readonly Op[]): void {
  const domain = new IommuDomain(hw, new FaultInjector());
  const ref = new Reference();
  const runs = new UnmappedRuns(8);
  for (const o of ops) {
    if (o.kind === "map") {
      let free = true;
      for (let k = 0; k < o.n && free; k++) free = ref.pfn(o.iova + k) === 0;
      if (!free) continue;
      expect(domain.map(o.iova, o.pfn, o.n)).to.equal(0);
      ref.map(o.iova, o.pfn, o.n);
    } else if (o.kind === "unmap") {
      expect(domain.unmap(o.iova, o.n), `unmap ${o.iova}+${o.n}`).to.equal(ref.unmap(o.iova, o.n));
    } else {
      // The walk of vfio_unmap_unpin: runs as iovaToPfn + contiguousRun + unmap would take them.
      const end = o.iova + o.n;
      runs.count = 0;
      const stop = domain.unmapRuns(o.iova, end, runs);
      let p = o.iova;
      for (let r = 0; r < runs.count; r++) {
        const pfn = ref.pfn(p);
        expect(pfn, `run ${r} start`).to.not.equal(0);
        let len = 1;
        while (p + len < end && ref.pfn(p + len) === pfn + len) len++;
        expect([runs.iova[r], runs.pfn[r], runs.len[r]], `run ${r}`).to.deep.equal([p, pfn, len]);
        ref.unmap(p, len);
        p += len;
      }
      expect(stop).to.equal(p);
      if (runs.count < 8 && p < end) expect(ref.pfn(p), "stopped at a hole").to.equal(0);
    }
    expect(domain.mappedPages).to.equal(ref.table.size);
  }
  for (let p = 65536 - 2048; p < 65536 + 4096; p++) {
    const pfn = ref.pfn(p);
    expect(domain.iovaToPfn(p), `page ${p}`).to.equal(pfn);
    if (pfn !== 0) {
      let len = 1;
      while (len < 700 && ref.pfn(p + len) === pfn + len) len++;
      expect(domain.contiguousRun(p, pfn, 700), `run at ${p}`).to.equal(len);
    }
  }
}

describe("IommuDomain page table", function () {
  this.timeout(60_000);
  it("maps an aligned 2 MiB run to an aligned block as one superpage and reads it back page by page", () => {
    const domain = new IommuDomain(HW_2M, new FaultInjector());
    expect(domain.map(1024, 4096, 1024)).to.equal(0);
    expect(domain.mappedPages).to.equal(1024);
    expect([domain.iovaToPfn(1024), domain.iovaToPfn(1535), domain.iovaToPfn(1536), domain.iovaToPfn(2047), domain.iovaToPfn(2048)]).to.deep.equal([4096, 4607, 4608, 5119, 0]);
    expect(domain.contiguousRun(1024, 4096, 5000)).to.equal(1024);
    // A partial unmap splits the superpage and clears exactly the pages asked.
    expect(domain.unmap(1100, 10)).to.equal(10);
    expect(domain.mappedPages).to.equal(1014);
    expect([domain.iovaToPfn(1099), domain.iovaToPfn(1100), domain.iovaToPfn(1109), domain.iovaToPfn(1110)]).to.deep.equal([4171, 0, 0, 4182]);
    expect(domain.unmap(0, 4096)).to.equal(1014);
    expect(domain.mappedPages).to.equal(0);
  });

  it("matches a per-page reference under random maps, unmaps and unmap walks, with 2 MiB pages", () => {
    fc.assert(fc.property(fc.array(op, { maxLength: 25 }), (ops) => check(HW_2M, ops)), { numRuns: 100 });
  });

  it("matches a per-page reference under random maps, unmaps and unmap walks, with 4 KiB pages only", () => {
    fc.assert(fc.property(fc.array(op, { maxLength: 25 }), (ops) => check(HW_4K, ops)), { numRuns: 40 });
  });
});
