import { expect } from "chai";
import { thrown } from "@vgpu-iommu/core/testing";

import { prevPow2, channelCountFor, fbSizeFor, alignDown, alignUp } from "./partition.js";
import { NV_ADA_48G, validateProfile, type NvidiaGpuProfile, type NvidiaVgpuTypeSpec } from "./gpu-profile.js";
import { BitmapAllocator } from "./bitmap-allocator.js";
import { CREATE_STEPS, GpuResources, type CreateStep } from "./gpu-resources.js";

const MiB = 1 << 20;
const GiB = 1024 * MiB;
const type = (name: string): NvidiaVgpuTypeSpec => NV_ADA_48G.types.find((t) => t.name === name)!;
const ecc = (p: NvidiaGpuProfile = NV_ADA_48G): NvidiaGpuProfile => ({ ...p, eccEnabled: true });

describe("nvidia partition arithmetic (vendors.md 2.3)", () => {
  it("prev_pow2 is the largest power of two not above n", () => {
    expect([0, 1, 2, 3, 63, 64, 65, 85, 170, 340, 510, 1020, 2040].map(prevPow2)).to.deep.equal([0, 1, 2, 2, 32, 64, 64, 64, 128, 256, 256, 512, 1024]);
  });

  it("aligns up and down to a segment", () => {
    expect(alignUp(984 * MiB, 64 * MiB)).to.equal(1024 * MiB);
    expect(alignDown(24328 * MiB, 64 * MiB)).to.equal(24320 * MiB);
  });

  it("sizes channel ranges prev_pow2(2040 / max_instance) for every default type", () => {
    const sizes = NV_ADA_48G.types.map((t) => [t.name, t.maxInstance, channelCountFor(NV_ADA_48G, t)]);
    expect(sizes).to.deep.equal([
      ["NV-1Q", 32, 32], // 2040/32 = 63
      ["NV-2Q", 24, 64], // 85
      ["NV-4Q", 12, 128], // 170
      ["NV-8Q", 6, 256], // 340
      ["NV-12Q", 4, 256], // 510
      ["NV-24Q", 2, 512], // 1020
      ["NV-48Q", 1, 1024], // 2040
    ]);
  });

  it("without ECC, aligns fb_length up to the 64 MiB segment", () => {
    expect(type("NV-1Q").fbLength).to.equal(984 * MiB);
    expect(fbSizeFor(NV_ADA_48G, type("NV-1Q"))).to.equal(1 * GiB);
    expect(fbSizeFor(NV_ADA_48G, type("NV-24Q"))).to.equal(24 * GiB);
    expect(fbSizeFor(NV_ADA_48G, type("NV-48Q"))).to.equal(48 * GiB);
  });

  it("with ECC, takes ALIGN(total, seg) / max_instance - fb_reservation - gsp_heap, capped and aligned down", () => {
    // 24Q: 49152/2 - 200 - 48 = 24328 MiB, under fb_length 24536 MiB, aligned down to 24320 MiB (380 segments).
    expect(fbSizeFor(ecc(), type("NV-24Q"))).to.equal(24320 * MiB);
    // 2Q: 49152/24 - 248 = 1800 MiB -> 1792 MiB.
    expect(fbSizeFor(ecc(), type("NV-2Q"))).to.equal(1792 * MiB);
    // 48Q: 49152 - 248 = 48904 MiB -> 48896 MiB (764 segments).
    expect(fbSizeFor(ecc(), type("NV-48Q"))).to.equal(48896 * MiB);
    // Capped at fb_length: 12288 - 248 = 12040 MiB > 1000 MiB -> 1000 -> 960 MiB.
    const small: NvidiaVgpuTypeSpec = { ...type("NV-12Q"), name: "NV-small", fbLength: 1000 * MiB };
    expect(fbSizeFor(ecc(), small)).to.equal(960 * MiB);
  });

  it("with ECC, a type without ECC support is -ENODEV; with 512 MiB segments the arithmetic aligns to 512 MiB", () => {
    const e = thrown(() => fbSizeFor(ecc(), type("NV-1Q")));
    expect([e.code, e.errno, e.reason]).to.deep.equal(["ENODEV", 19, "type-without-ecc-support"]);
    const big = ecc({ ...NV_ADA_48G, vmmuSegment: 512 * MiB });
    expect(fbSizeFor(big, type("NV-24Q"))).to.equal(23 * GiB + 512 * MiB); // 24328 MiB -> 24064 MiB
  });

  it("refuses a profile whose segment is not one of 32..512 MiB", () => {
    const e = thrown(() => validateProfile({ ...NV_ADA_48G, vmmuSegment: 48 * MiB }));
    expect([e.code, e.reason, e.fields["field"]]).to.deep.equal(["EINVAL", "bad-gpu-profile", "vmmuSegment"]);
    for (const seg of [32, 64, 128, 256, 512]) expect(() => validateProfile({ ...NV_ADA_48G, vmmuSegment: seg * MiB })).not.to.throw();
  });
});

describe("BitmapAllocator", () => {
  it("hands out the lowest contiguous free run and reports what first fit still fits", () => {
    const b = new BitmapAllocator(10);
    expect([b.alloc(4), b.alloc(4), b.alloc(4)]).to.deep.equal([0, 4, -1]);
    b.free(0, 4);
    expect(b.fits(2, 100)).to.equal(3); // [0,2) [2,4) [8,10)
    expect(b.alloc(3)).to.equal(0);
    expect(b.used).to.equal(7);
    expect(() => b.free(3, 2)).to.throw(RangeError);
  });
});

describe("GpuResources: VF creation sequence", () => {
  it("counts available instances from max_instance, FB segments, channels and VFs", () => {
    const r = new GpuResources(NV_ADA_48G, true);
    expect(NV_ADA_48G.types.map((t) => r.availableInstances(t))).to.deep.equal([32, 24, 12, 6, 4, 2, 1]);
    const e = new GpuResources(ecc(), true);
    // ECC: 1Q cannot run; 24Q's 380 segments still fit twice; 48Q's 764 once.
    expect(NV_ADA_48G.types.map((t) => e.availableInstances(t))).to.deep.equal([0, 24, 12, 6, 4, 2, 1]);
  });

  it("allocates segment-aligned FB and prev_pow2 channel ranges first fit, the first channel for the plugin", () => {
    const r = new GpuResources(NV_ADA_48G, true);
    const a = r.allocate(type("NV-24Q"));
    const b = r.allocate(type("NV-24Q"));
    expect([a.vfId, a.gfid, a.chidStart, a.chidCount, a.pluginChid, a.fbOffset, a.fbSize]).to.deep.equal([0, 1, 8, 512, 8, 0, 24 * GiB]);
    expect([b.vfId, b.gfid, b.chidStart, b.chidCount, b.pluginChid, b.fbOffset, b.fbSize]).to.deep.equal([1, 2, 520, 512, 520, 24 * GiB, 24 * GiB]);
    expect(r.counters).to.deep.include({ fbSegmentsUsed: 768, chidsUsed: 1024, vfsUsed: 2, mgmtHeaps: 2, gspClients: 2, booted: 2, rpcChannels: 2 });
    expect(r.availableInstances(type("NV-24Q"))).to.equal(0);
    const full = thrown(() => r.allocate(type("NV-24Q")));
    expect([full.code, full.reason]).to.deep.equal(["ENOSPC", "max-instances"]);
  });

  it("with ECC, carves 380-segment partitions for 24Q and refuses 1Q with -ENODEV", () => {
    const r = new GpuResources(ecc(), true);
    const a = r.allocate(type("NV-24Q"));
    const b = r.allocate(type("NV-24Q"));
    expect([a.fbOffset / MiB, a.fbSize / MiB, b.fbOffset / MiB]).to.deep.equal([0, 24320, 24320]);
    expect(r.counters.fbSegmentsUsed).to.equal(760);
    const r2 = new GpuResources(ecc(), true);
    const e = thrown(() => r2.allocate(type("NV-1Q")));
    expect([e.code, e.reason]).to.deep.equal(["ENODEV", "type-without-ecc-support"]);
    expect(r2.counters).to.deep.include({ fbSegmentsUsed: 0, chidsUsed: 0, vfsUsed: 0 });
  });

  it("fails with -ENOSPC when the channel pool is exhausted, and unwinds the VF it took", () => {
    const r = new GpuResources(NV_ADA_48G, true);
    expect(r.chids.alloc(2040 - 100)).to.equal(0); // the core driver's own channels
    expect(r.availableInstances(type("NV-4Q"))).to.equal(0); // 128 channels do not fit in 100
    const e = thrown(() => r.allocate(type("NV-4Q")));
    expect([e.code, e.errno, e.reason, e.fields["chidCount"], e.fields["free"]]).to.deep.equal(["ENOSPC", 28, "channels-failed", 128, 100]);
    expect(r.counters).to.deep.include({ vfsUsed: 0, fbSegmentsUsed: 0, chidsUsed: 1940, mgmtHeaps: 0 });
    expect(r.availableInstances(type("NV-1Q"))).to.equal(3); // 32-channel ranges: 3 fit in 100
  });

  it("fails with -ENOSPC when the VFs are exhausted and -ENOMEM when no FB run fits", () => {
    const r = new GpuResources({ ...NV_ADA_48G, totalVfs: 2 }, true);
    r.allocate(type("NV-1Q"));
    r.allocate(type("NV-1Q"));
    expect(r.availableInstances(type("NV-1Q"))).to.equal(0);
    const e = thrown(() => r.allocate(type("NV-1Q")));
    expect([e.code, e.reason]).to.deep.equal(["ENOSPC", "register-failed"]);
    const f = new GpuResources(NV_ADA_48G, false);
    f.fb.alloc(768 - 15); // leave 15 segments: a 1Q needs 16
    const g = thrown(() => f.allocate(type("NV-1Q")));
    expect([g.code, g.reason, g.fields["freeSegments"]]).to.deep.equal(["ENOMEM", "fb-failed", 15]);
    expect(f.counters).to.deep.include({ chidsUsed: 0, mgmtHeaps: 0 });
  });

  it("allows only one type at a time (homogeneous vGPUs): -EBUSY and no instances of other types", () => {
    const r = new GpuResources(NV_ADA_48G, true);
    const a = r.allocate(type("NV-2Q"));
    expect(r.availableInstances(type("NV-4Q"))).to.equal(0);
    expect(thrown(() => r.allocate(type("NV-4Q"))).code).to.equal("EBUSY");
    r.release(a);
    expect(r.availableInstances(type("NV-4Q"))).to.equal(12);
  });

  for (const failing of CREATE_STEPS) {
    it(`unwinds every earlier step, in reverse, when "${failing}" fails`, () => {
      const trace: string[] = [];
      const r = new GpuResources(NV_ADA_48G, true, { shouldFail: (s: CreateStep) => s === failing }, (op, s) => trace.push(`${op}:${s}`));
      const e = thrown(() => r.allocate(type("NV-8Q")));
      expect(e.reason).to.equal(`${failing}-failed`);
      const done = CREATE_STEPS.slice(0, CREATE_STEPS.indexOf(failing));
      expect(trace).to.deep.equal([...done.map((s) => `alloc:${s}`), ...[...done].reverse().map((s) => `free:${s}`)]);
      expect(r.counters).to.deep.equal({ fbSegmentsUsed: 0, chidsUsed: 0, vfsUsed: 0, mgmtHeaps: 0, gspClients: 0, booted: 0, rpcChannels: 0, scrubbedBytes: 0 });
      expect(r.instances("NV-8Q")).to.equal(0);
    });
  }

  it("destroy scrubs the FB then frees in reverse order of creation", () => {
    const trace: string[] = [];
    const r = new GpuResources(NV_ADA_48G, true, undefined, (op, s) => trace.push(`${op}:${s}`));
    const a = r.allocate(type("NV-8Q"));
    trace.length = 0;
    expect(r.release(a)).to.equal(8 * GiB);
    expect(trace).to.deep.equal(["scrub:fb", ...[...CREATE_STEPS].reverse().map((s) => `free:${s}`)]);
    expect(r.counters).to.deep.equal({ fbSegmentsUsed: 0, chidsUsed: 0, vfsUsed: 0, mgmtHeaps: 0, gspClients: 0, booted: 0, rpcChannels: 0, scrubbedBytes: 8 * GiB });
  });
});
