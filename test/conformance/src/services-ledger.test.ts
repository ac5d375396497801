import { expect } from "chai";
import { KernelError, type FrameSpec, type Translation, type TranslateOptions, type TranslationHandle, type VgpuServices } from "@vgpu-iommu/core";
import { ServicesLedger } from "./services-ledger.js";

/** The smallest services: translations map at 0x1000_0000 + id * 1 MiB; a second release is -EINVAL, as in the core. */
function stubServices(): VgpuServices & { live: Set<number> } {
  let next = 1;
  const live = new Set<number>();
  const device = { name: "gpu" };
  return {
    live,
    vm: "vm",
    parentDevice: device,
    pinPages: (_g, n) => n,
    unpinPages: () => undefined,
    pinPagesArray: (_g, n) => n,
    unpinPagesArray: (_g, n) => n,
    dmaRw: () => undefined,
    translate(frames: FrameSpec, _o: TranslateOptions): Translation {
      const n = "npages" in frames ? frames.npages : frames.length;
      const id = next++;
      live.add(id);
      const addr = 0x1000_0000n + (BigInt(id) << 20n);
      return { handle: { id }, pfns: new Uint32Array(n), dmaAddrs: new BigUint64Array(n), segments: { count: 1, addr: new BigUint64Array([addr]), length: new Float64Array([n * 4096]) } };
    },
    release(h: TranslationHandle) {
      if (!live.delete(h.id)) throw new KernelError("EINVAL", "translate-unknown-handle");
    },
    checkIsolation: () => [],
    protect: () => 0,
    unprotect: () => 0,
    injectIrq: () => true,
  };
}

describe("conformance kit: services ledger", () => {
  it("counts pins per frame across both pin forms and translations, and what lies in a range", () => {
    const l = new ServicesLedger("v", stubServices());
    l.services.pinPages(10, 3, 3, new Uint32Array(3));
    l.services.pinPagesArray([11, 50], 2, 3, new Uint32Array(2));
    const t = l.services.translate({ start: 100, npages: 2 }, { prot: 3, device: l.services.parentDevice });
    expect([l.livePins(), l.pinsIn(10, 12), l.pinsIn(100, 101), l.liveTranslations()]).to.deep.equal([7, 3, 1, 1]);
    expect(l.heldFrames()).to.deep.equal([10, 11, 12, 50, 100, 101]);
    expect([l.ownsAddress(0x1010_0000n), l.ownsAddress(0x1010_1fffn), l.ownsAddress(0x1010_2000n)]).to.deep.equal([true, true, false]);
    l.services.unpinPages(10, 3);
    l.services.unpinPagesArray([11, 50], 2);
    l.services.release(t.handle);
    expect([l.livePins(), l.violations, l.counters.bytesMapped, l.counters.bytesUnmapped]).to.deep.equal([0, [], 8192, 8192]);
  });

  it("records an unpin of a frame it does not hold, and a second release, as they happen", () => {
    const inner = stubServices();
    const l = new ServicesLedger("v", inner);
    l.services.unpinPages(7, 1);
    const t = l.services.translate({ start: 1, npages: 1 }, { prot: 3 });
    l.services.release(t.handle);
    expect(() => l.services.release(t.handle)).to.throw(KernelError);
    expect(() => l.services.release({ id: 99 })).to.throw(KernelError);
    expect(l.violations).to.deep.equal([
      "unpinned gfn 7, which it did not hold pinned",
      `released translation ${t.handle.id} (gfns 1) 2 times`,
      "released handle 99, which is not one of its translations",
    ]);
    expect([l.counters.overUnpins, l.counters.doubleReleases]).to.deep.equal([1, 1]);
  });

  it("a handle the core revoked is no longer held, and releasing it later is not a double unmap", () => {
    const inner = stubServices();
    const l = new ServicesLedger("v", inner);
    const t = l.services.translate({ start: 5, npages: 1 }, { prot: 3 });
    inner.live.delete(t.handle.id);
    l.markRevoked([t.handle.id]);
    expect(l.livePins()).to.equal(0);
    expect(() => l.services.release(t.handle)).to.throw(KernelError);
    expect([l.violations, l.counters.bytesUnmapped]).to.deep.equal([[], 4096]);
  });
});
