/**
 * Property-based test of the type1 backend against a small reference model.
 *
 * fast-check draws sequences of MAP_DMA, UNMAP_DMA (v2: a range that bisects
 * a mapping fails -EINVAL and changes nothing), vfioPinPages / vfioUnpinPages
 * of 1..8 page runs, and vfioDmaRw writes and reads. The reference is written
 * to be obviously correct: a Map of mappings {iovaPage, npages, vaddrPage},
 * per-IOVA pin reference counts, the bytes of guest RAM, and a WARN count.
 * After every call the errno, the mappings, the pins of every mapping, the
 * charge, the host's pin count and the invariants must agree with it.
 *
 * The emulated device's dmaUnmap unpins everything the reference says is
 * pinned in the mapping it is called for, and must be called exactly once for
 * every pinned mapping an UNMAP_DMA removes, with that mapping's whole range.
 */
import { expect } from "chai";
import fc from "fast-check";
import {
  ERRNO,
  IOMMU_READ,
  IOMMU_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_IOMMU_UNMAP_DMA,
  vfioDmaRw,
  vfioPinPages,
  vfioUnpinPages,
  type Iova,
  type VfioDevice,
} from "@vgpu-iommu/core";
import { Fixture, NO_LEAKS, errnoOf, type Variant } from "@vgpu-iommu/core/testing";

const PAGE = 4096;
const GUEST_PAGES = 32;
/** IOVAs are drawn from the first 64 pages, so mappings collide and bisect often. */
const IOVA_PAGES = 64;
const MAX_MAP_PAGES = 16;
const MAX_PIN_PAGES = 8;
const MAX_RW_BYTES = 3 * PAGE;
const DMA_ENTRY_LIMIT = 65535;
/** Fixed for reproducibility; VGPU_PROPERTY_SEED and VGPU_PROPERTY_RUNS widen a local search. */
const SEED = Number(process.env["VGPU_PROPERTY_SEED"] ?? 0x7e51);
const NUM_RUNS = Number(process.env["VGPU_PROPERTY_RUNS"] ?? 100);

type Op =
  | { readonly kind: "map"; readonly iovaPage: number; readonly npages: number; readonly vaddrPage: number }
  | { readonly kind: "unmap"; readonly iovaPage: number; readonly npages: number }
  /** Unmap the exact span of `count` consecutive mappings starting at the `pick`-th: never bisects. */
  | { readonly kind: "unmapMappings"; readonly pick: number; readonly count: number }
  | { readonly kind: "pin"; readonly iovaPage: number; readonly npages: number }
  /** Pin a run starting inside the `pick`-th mapping. */
  | { readonly kind: "pinMapped"; readonly pick: number; readonly offset: number; readonly npages: number }
  | { readonly kind: "unpin"; readonly iovaPage: number; readonly npages: number }
  /** Unpin a run starting at the `pick`-th pinned IOVA. */
  | { readonly kind: "unpinPinned"; readonly pick: number; readonly npages: number }
  /** dma_rw at `addr`, or, with `pick`, at byte `addr` of the `pick`-th mapping (modulo its size). */
  | { readonly kind: "write"; readonly addr: number; readonly pick: number | null; readonly length: number; readonly fill: number }
  | { readonly kind: "read"; readonly addr: number; readonly pick: number | null; readonly length: number };

const iovaPage = fc.integer({ min: 0, max: IOVA_PAGES - 1 });
const pinRun = fc.integer({ min: 1, max: MAX_PIN_PAGES });
const pick = fc.nat({ max: 1000 });
const rwAddr = fc.integer({ min: 0, max: IOVA_PAGES * PAGE - 1 });
const rwLength = fc.integer({ min: 1, max: MAX_RW_BYTES });
const rwPick = fc.option(pick, { freq: 3 });

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant("map" as const), iovaPage, npages: fc.integer({ min: 1, max: MAX_MAP_PAGES }), vaddrPage: fc.integer({ min: 0, max: GUEST_PAGES - 1 }) }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant("unmap" as const), iovaPage, npages: fc.integer({ min: 1, max: IOVA_PAGES }) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant("unmapMappings" as const), pick, count: fc.integer({ min: 1, max: 3 }) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant("pin" as const), iovaPage, npages: pinRun }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant("pinMapped" as const), pick, offset: fc.nat({ max: MAX_MAP_PAGES - 1 }), npages: pinRun }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant("unpin" as const), iovaPage, npages: pinRun }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant("unpinPinned" as const), pick, npages: pinRun }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant("write" as const), addr: rwAddr, pick: rwPick, length: rwLength, fill: fc.integer({ min: 1, max: 255 }) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant("read" as const), addr: rwAddr, pick: rwPick, length: rwLength }), weight: 2 },
);

interface RefMapping {
  readonly iovaPage: number;
  readonly npages: number;
  /** Page offset inside guest RAM. */
  readonly vaddrPage: number;
}

/** The reference: what type1 v2 must do, written with no regard for speed. */
class Reference {
  readonly mappings = new Map<number, RefMapping>();
  /** IOVA page -> references held by the device. */
  readonly pins = new Map<number, number>();
  readonly ram = new Uint8Array(GUEST_PAGES * PAGE);
  warnings = 0;

  sorted(): RefMapping[] {
    return [...this.mappings.values()].sort((a, b) => a.iovaPage - b.iovaPage);
  }

  containing(page: number): RefMapping | undefined {
    for (const m of this.mappings.values()) if (page >= m.iovaPage && page < m.iovaPage + m.npages) return m;
    return undefined;
  }

  pinnedPagesIn(m: RefMapping): number[] {
    return [...this.pins.keys()].filter((p) => p >= m.iovaPage && p < m.iovaPage + m.npages).sort((a, b) => a - b);
  }

  /** MAP_DMA: any overlap is -EEXIST. */
  mapErrno(op: { iovaPage: number; npages: number }): number {
    for (let p = op.iovaPage; p < op.iovaPage + op.npages; p++) if (this.containing(p) !== undefined) return -ERRNO.EEXIST;
    return 0;
  }

  /** UNMAP_DMA (v2): -EINVAL if the range bisects a mapping, else the mappings that start inside it. */
  planUnmap(first: number, npages: number): { errno: number; removed: RefMapping[] } {
    const last = first + npages - 1;
    const head = this.containing(first);
    if (head !== undefined && head.iovaPage !== first) return { errno: -ERRNO.EINVAL, removed: [] };
    const tail = this.containing(last);
    if (tail !== undefined && tail.iovaPage + tail.npages - 1 !== last) return { errno: -ERRNO.EINVAL, removed: [] };
    return { errno: 0, removed: this.sorted().filter((m) => m.iovaPage >= first && m.iovaPage <= last) };
  }

  /** vfio_pin_pages: all or nothing; every page must lie in a mapping (all are read-write). */
  pinErrno(first: number, npages: number): number {
    for (let p = first; p < first + npages; p++) if (this.containing(p) === undefined) return -ERRNO.EINVAL;
    return 0;
  }

  pin(first: number, npages: number): void {
    for (let p = first; p < first + npages; p++) this.pins.set(p, (this.pins.get(p) ?? 0) + 1);
  }

  /** vfio_unpin_pages: stops with a WARN at the first page outside every mapping; unpinned pages are ignored. */
  unpin(first: number, npages: number): void {
    for (let p = first; p < first + npages; p++) {
      if (this.containing(p) === undefined) {
        this.warnings++;
        return;
      }
      const refs = this.pins.get(p);
      if (refs === undefined) continue;
      if (refs === 1) this.pins.delete(p);
      else this.pins.set(p, refs - 1);
    }
  }

  /**
   * vfio_dma_rw: chunk by chunk, each ending at a mapping's end; an IOVA outside
   * every mapping fails -EINVAL, and chunks already copied stay copied.
   */
  rw(addr: number, data: Uint8Array, write: boolean): number {
    for (let done = 0; done < data.length; ) {
      const at = addr + done;
      const m = this.containing(Math.floor(at / PAGE));
      if (m === undefined) return -ERRNO.EINVAL;
      const offset = at - m.iovaPage * PAGE;
      const count = Math.min(data.length - done, m.npages * PAGE - offset);
      const ramAt = m.vaddrPage * PAGE + offset;
      if (write) this.ram.set(data.subarray(done, done + count), ramAt);
      else data.set(this.ram.subarray(ramAt, ramAt + count), done);
      done += count;
    }
    return 0;
  }
}

class Harness {
  private constructor(
    readonly variant: Variant,
    readonly f: Fixture,
    readonly ref: Reference,
    /** dma_unmap calls seen during the current UNMAP_DMA, as [iovaPage, npages]. */
    readonly unmapCalls: [number, number][],
    /** How often each call ended with each errno (`kind:errno`), to check the generator's reach. */
    readonly outcomes: Map<string, number>,
  ) {}

  #record(kind: string, errno: number): void {
    const key = `${kind}:${errno}`;
    this.outcomes.set(key, (this.outcomes.get(key) ?? 0) + 1);
  }

  static async create(variant: Variant, outcomes: Map<string, number>): Promise<Harness> {
    const ref = new Reference();
    const unmapCalls: [number, number][] = [];
    // The vendor's side: drop every reference the reference model says the device holds in [first, end).
    const unpinAll = (vdev: VfioDevice, first: number, end: number): void => {
      for (const page of [...ref.pins.keys()].sort((a, b) => a - b)) {
        if (page < first || page >= end) continue;
        for (let r = ref.pins.get(page)!; r > 0; r--) vfioUnpinPages(vdev, (BigInt(page) << 12n) as Iova, 1);
        ref.pins.delete(page);
      }
    };
    const f = await Fixture.create({
      variant,
      guestBytes: BigInt(GUEST_PAGES * PAGE),
      deviceOps: {
        dmaUnmap(vdev, iova, length) {
          const first = Number(iova >> 12n);
          unmapCalls.push([first, Number(length >> 12n)]);
          unpinAll(vdev, first, first + Number(length >> 12n));
        },
        closeDevice(vdev) {
          unpinAll(vdev, 0, Number.MAX_SAFE_INTEGER);
        },
      },
    });
    return new Harness(variant, f, ref, unmapCalls, outcomes);
  }

  get device(): VfioDevice {
    return this.f.device!;
  }

  async apply(op: Op): Promise<void> {
    const ref = this.ref;
    switch (op.kind) {
      case "map": {
        const npages = op.npages;
        const vaddrPage = Math.min(op.vaddrPage, GUEST_PAGES - npages);
        const expected = ref.mapErrno(op);
        expect(await this.f.map(BigInt(op.iovaPage * PAGE), BigInt(npages * PAGE), BigInt(vaddrPage * PAGE)), "MAP_DMA errno").to.equal(expected);
        this.#record("map", expected);
        if (expected === 0) ref.mappings.set(op.iovaPage, { iovaPage: op.iovaPage, npages, vaddrPage });
        return;
      }
      case "unmap":
        return this.unmap(op.iovaPage, op.npages);
      case "unmapMappings": {
        const sorted = ref.sorted();
        if (sorted.length === 0) return this.unmap(0, IOVA_PAGES);
        const from = op.pick % sorted.length;
        const to = Math.min(sorted.length, from + op.count) - 1;
        return this.unmap(sorted[from]!.iovaPage, sorted[to]!.iovaPage + sorted[to]!.npages - sorted[from]!.iovaPage);
      }
      case "pin":
        return this.pin(op.iovaPage, op.npages);
      case "pinMapped": {
        const sorted = ref.sorted();
        if (sorted.length === 0) return this.pin(0, op.npages);
        const m = sorted[op.pick % sorted.length]!;
        return this.pin(m.iovaPage + (op.offset % m.npages), op.npages);
      }
      case "unpin":
        return this.unpin(op.iovaPage, op.npages);
      case "unpinPinned": {
        const pinned = [...ref.pins.keys()].sort((a, b) => a - b);
        if (pinned.length === 0) return;
        return this.unpin(pinned[op.pick % pinned.length]!, op.npages);
      }
      case "write": {
        const data = new Uint8Array(op.length);
        for (let i = 0; i < data.length; i++) data[i] = (op.fill + i) & 0xff;
        const addr = this.#rwAddr(op);
        const expected = ref.rw(addr, data, true);
        expect(errnoOf(() => vfioDmaRw(this.device, BigInt(addr) as Iova, data, true)), "dma_rw write errno").to.equal(expected);
        this.#record("write", expected);
        return;
      }
      case "read": {
        const addr = this.#rwAddr(op);
        const want = new Uint8Array(op.length);
        const expected = ref.rw(addr, want, false);
        const got = new Uint8Array(op.length);
        expect(errnoOf(() => vfioDmaRw(this.device, BigInt(addr) as Iova, got, false)), "dma_rw read errno").to.equal(expected);
        this.#record("read", expected);
        // On failure the chunks before the hole were copied, the rest left alone.
        expect(Buffer.from(got).equals(Buffer.from(want)), "bytes read").to.equal(true);
        return;
      }
    }
  }

  #rwAddr(op: { addr: number; pick: number | null }): number {
    const sorted = this.ref.sorted();
    if (op.pick === null || sorted.length === 0) return op.addr;
    const m = sorted[op.pick % sorted.length]!;
    return m.iovaPage * PAGE + (op.addr % (m.npages * PAGE));
  }

  async unmap(first: number, npages: number): Promise<void> {
    const { errno, removed } = this.ref.planUnmap(first, npages);
    const pinnedBefore = removed.filter((m) => this.ref.pinnedPagesIn(m).length > 0).map((m): [number, number] => [m.iovaPage, m.npages]);
    this.unmapCalls.length = 0;
    const arg = { argsz: 24, flags: 0, iova: BigInt(first * PAGE), size: BigInt(npages * PAGE) };
    expect(await this.f.host.ioctl(this.f.qemu, this.f.containerFd, VFIO_IOMMU_UNMAP_DMA, arg), "UNMAP_DMA errno").to.equal(errno);
    this.#record(pinnedBefore.length > 0 ? "unmap-invalidating" : "unmap", errno);
    if (errno !== 0) {
      expect(this.unmapCalls, "dma_unmap calls of a failed UNMAP_DMA").to.deep.equal([]);
      return;
    }
    expect(arg.size, "bytes unmapped").to.equal(BigInt(removed.reduce((n, m) => n + m.npages, 0) * PAGE));
    expect(this.unmapCalls, "dma_unmap calls: each pinned mapping once, whole").to.deep.equal(pinnedBefore);
    for (const m of removed) {
      expect(this.ref.pinnedPagesIn(m), "pins left in a removed mapping").to.deep.equal([]);
      this.ref.mappings.delete(m.iovaPage);
    }
  }

  pin(first: number, npages: number): void {
    const expected = this.ref.pinErrno(first, npages);
    const pages = new Uint32Array(npages);
    expect(errnoOf(() => vfioPinPages(this.device, (BigInt(first) << 12n) as Iova, npages, IOMMU_READ | IOMMU_WRITE, pages)), "vfio_pin_pages errno").to.equal(expected);
    this.#record("pin", expected);
    if (expected !== 0) return;
    this.ref.pin(first, npages);
    // The frames handed out are those the IOVAs' vaddrs map, through the mm.
    for (let i = 0; i < npages; i++) {
      const m = this.ref.containing(first + i)!;
      const hvaPage = Number(this.f.guestRam >> 12n) + m.vaddrPage + (first + i - m.iovaPage);
      expect(pages[i], `frame of IOVA page ${first + i}`).to.equal(this.f.qemu.mm.translate(hvaPage));
    }
  }

  unpin(first: number, npages: number): void {
    const warnings = this.ref.warnings;
    this.ref.unpin(first, npages);
    this.#record(this.ref.warnings === warnings ? "unpin" : "unpin-warned", 0);
    vfioUnpinPages(this.device, (BigInt(first) << 12n) as Iova, npages);
  }

  /** The backend, the host and the reference agree. */
  compare(): void {
    const ref = this.ref;
    const iommu = this.f.iommu;
    const sorted = ref.sorted();
    const real = [...iommu.dmas.values()];
    expect(real.map((d) => [d.iovaPage, d.npages, d.vpfnCount]), "mappings [iovaPage, npages, vpfnCount]").to.deep.equal(
      sorted.map((m) => [m.iovaPage, m.npages, ref.pinnedPagesIn(m).length]),
    );
    const realPins = new Map<number, number>();
    for (const d of real) d.forEachVpfn((index, _frame, refs) => realPins.set(d.iovaPage + index, refs));
    expect([...realPins].sort((a, b) => a[0] - b[0]), "pin reference counts").to.deep.equal([...ref.pins].sort((a, b) => a[0] - b[0]));
    expect(iommu.dmaAvail).to.equal(DMA_ENTRY_LIMIT - sorted.length);
    const distinctPins = ref.pins.size;
    const mappedPages = sorted.reduce((n, m) => n + m.npages, 0);
    if (this.variant === "mdev-only") {
      // Lazy: each pinned IOVA is charged once and holds one frame pin, whatever its reference count.
      expect(this.f.qemu.mm.lockedVm, "locked_vm").to.equal(distinctPins);
      expect(this.f.host.phys.totalPins, "host pins").to.equal(distinctPins);
    } else {
      // MAP_DMA pinned and charged every page of every mapping; an external pin adds a GUP pin, no charge.
      expect(this.f.qemu.mm.lockedVm, "locked_vm").to.equal(mappedPages);
      expect(this.f.host.phys.totalPins, "host pins").to.equal(mappedPages + distinctPins);
    }
    expect(this.f.host.kernel.warnings.length, "WARNs").to.equal(ref.warnings);
    this.f.host.assertInvariants();
  }

  /** UNMAP_DMA(ALL), then teardown: nothing may be left but the WARNs the reference predicted. */
  async finish(): Promise<void> {
    const pinnedMappings = this.ref.sorted().filter((m) => this.ref.pinnedPagesIn(m).length > 0).map((m): [number, number] => [m.iovaPage, m.npages]);
    this.unmapCalls.length = 0;
    const all = { argsz: 24, flags: VFIO_DMA_UNMAP_FLAG_ALL, iova: 0n, size: 0n };
    expect(await this.f.host.ioctl(this.f.qemu, this.f.containerFd, VFIO_IOMMU_UNMAP_DMA, all)).to.equal(0);
    expect(all.size).to.equal(BigInt(this.ref.sorted().reduce((n, m) => n + m.npages, 0) * PAGE));
    expect(this.unmapCalls).to.deep.equal(pinnedMappings);
    this.ref.mappings.clear();
    this.compare();
    expect(this.f.host.phys.totalPins).to.equal(0);
    expect(this.f.qemu.mm.lockedVm).to.equal(0);
    await this.f.teardown();
    expect(this.f.leaks()).to.deep.equal({ ...NO_LEAKS, warnings: this.ref.warnings });
    expect(this.f.host.phys.framesInUse).to.equal(0);
  }
}

for (const variant of ["mdev-only", "mixed"] as const) {
  describe(`type1 against a reference model (${variant})`, function () {
    this.timeout(60_000);

    it("agrees on errnos, mappings, pins, charges and invariants after every call", async () => {
      const outcomes = new Map<string, number>();
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 10, maxLength: 60, size: "max" }), async (ops) => {
          const h = await Harness.create(variant, outcomes);
          for (const op of ops) {
            await h.apply(op);
            h.compare();
          }
          await h.finish();
        }),
        { numRuns: NUM_RUNS, seed: SEED },
      );
      // The generator reaches every outcome the reference distinguishes.
      const reached = [...outcomes.keys()].sort();
      expect(reached).to.include.members(["map:0", "map:-17", "unmap:0", "unmap:-22", "unmap-invalidating:0", "pin:0", "pin:-22", "unpin:0", "unpin-warned:0", "write:0", "write:-22", "read:0", "read:-22"]);
    });
  });
}
