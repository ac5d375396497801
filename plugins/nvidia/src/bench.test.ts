import { expect } from "chai";
import { measureGetIova512, shuffledFrames } from "./bench.js";
import { FakeGuest } from "@vgpu-iommu/core/testing";
import type { NvidiaVgpu } from "./nvidia-vgpu.js";

describe("nvidia bench: nvidia.get-iova.512", () => {
  it("shuffles every frame of the range exactly once, deterministically", () => {
    const a = shuffledFrames(100, 2048);
    expect([...a].sort((x, y) => x - y)).to.deep.equal(Array.from({ length: 2048 }, (_, i) => 100 + i));
    expect([...shuffledFrames(100, 2048)]).to.deep.equal([...a]);
    expect(a[0]).not.to.equal(100);
  });

  it("measures on any platform that opens a vGPU, checking exact counts each repetition", async () => {
    const guest = new FakeGuest({ guestPages: 8192 });
    let tornDown = 0;
    const figures = await measureGetIova512(async (vendor, type) => {
      const vgpu = vendor.create(type, "bench0", guest.servicesFor("bench0")) as NvidiaVgpu;
      await vgpu.open();
      return {
        vgpu,
        firstGfn: 1024,
        pages: 4096 + 100,
        platformPins: () => guest.totalPins,
        teardown: async () => {
          await vgpu.close();
          vendor.destroy(vgpu);
          tornDown++;
        },
      };
    }, { reps: 2 });
    expect(figures.runs).to.have.length(2);
    expect(figures.value).to.be.greaterThan(0);
    expect(figures.note).to.match(/^8 batches of 512 frames \(shuffled\)/);
    expect([tornDown, guest.totalPins, guest.parent.mappedRanges]).to.deep.equal([1, 0, 0]);
  });
});
