import { expect } from "chai";
import { ERRNO } from "../errors/errno.js";
import { DMA_MAPPING_ERROR, DmaDirection, dmaBitMask } from "./dma-addr.js";
import { Scatterlist } from "./scatterlist.js";
import { IO_TLB_SEGSIZE, SwiotlbPool } from "./swiotlb.js";
import {
  dmaMapPage,
  dmaMapSg,
  dmaMapSgtable,
  dmaMaxMappingSize,
  dmaSyncSingleForCpu,
  dmaSyncSingleForDevice,
  dmaUnmapPage,
  dmaUnmapSg,
} from "./dma-mapping.js";
import { DMA_NO_LEAKS, DmaEnv, pattern } from "./dma-env.test.util.js";
import { BLOCK_PAGES } from "../host/physical-memory.js";

const PFN_4G = 0x10_0000;
const POOL_2M = { bytes: 2 << 20 };

function readPhys(env: DmaEnv, addr: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  let at = 0;
  while (at < n) {
    const a = addr + at;
    const len = Math.min(n - at, 4096 - (a % 4096));
    env.host.phys.read(Math.floor(a / 4096), a % 4096, out.subarray(at, at + len));
    at += len;
  }
  return out;
}

function writePhys(env: DmaEnv, addr: number, data: Uint8Array): void {
  let at = 0;
  while (at < data.length) {
    const a = addr + at;
    const len = Math.min(data.length - at, 4096 - (a % 4096));
    env.host.phys.write(Math.floor(a / 4096), a % 4096, data.subarray(at, at + len));
    at += len;
  }
}

describe("dma-api/dma-direct: IOVA = PA", () => {
  let env: DmaEnv;

  afterEach(() => {
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
  });

  it("a reachable buffer's DMA address is its physical address, and map_sg never merges", () => {
    env = new DmaEnv({ mode: "direct", device: { dmaMask: dmaBitMask(64) } });
    const f = env.frame(PFN_4G);
    expect(dmaMapPage(env.dev, f, 0x123, 100, DmaDirection.TO_DEVICE)).to.equal(BigInt(f * 4096 + 0x123));
    const base = env.block();
    const sg = Scatterlist.fromPages([base, base + 1, base + 2, base + 3]);
    expect(dmaMapSg(env.dev, sg, 4, DmaDirection.BIDIRECTIONAL)).to.equal(4);
    expect([0, 1, 2, 3].map((i) => [sg.dmaAddress(i), sg.dmaLength[i]])).to.deep.equal([0, 1, 2, 3].map((i) => [BigInt((base + i) * 4096), 4096]));
    // the same page mapped twice has the same address; each map needs its own unmap
    expect(dmaMapPage(env.dev, f, 0x123, 100, DmaDirection.TO_DEVICE)).to.equal(BigInt(f * 4096 + 0x123));
    expect(env.dev.liveMappings).to.equal(3);
    dmaUnmapPage(env.dev, BigInt(f * 4096 + 0x123), 100, DmaDirection.TO_DEVICE);
    dmaUnmapPage(env.dev, BigInt(f * 4096 + 0x123), 100, DmaDirection.TO_DEVICE);
    dmaUnmapSg(env.dev, sg, 4, DmaDirection.BIDIRECTIONAL);
    env.check();
  });

  it("beyond the mask with no swiotlb: one WARN (WARN_ONCE) and DMA_MAPPING_ERROR; map_sg 0, sgtable -EIO", () => {
    env = new DmaEnv({ mode: "direct" });
    const high = env.frame(PFN_4G);
    expect(dmaMapPage(env.dev, high, 0, 4096, DmaDirection.BIDIRECTIONAL)).to.equal(DMA_MAPPING_ERROR);
    const w = env.host.kernel.warnings;
    expect(w.map((x) => x.site)).to.deep.equal(["dma_direct_map_page"]);
    expect(w[0]!.message).to.equal(`0000:01:00.0: DMA addr 0x${(high * 4096).toString(16)}+4096 overflow (mask 0xffffffff, bus limit 0x0).`);
    // a buffer that ends past 4 GiB is not dma_capable either
    const low = env.frame();
    expect(dmaMapPage(env.dev, PFN_4G - 1, 0, 8192, DmaDirection.BIDIRECTIONAL)).to.equal(DMA_MAPPING_ERROR);
    const sg = Scatterlist.fromPages([low, high]);
    expect(dmaMapSg(env.dev, sg, 2, DmaDirection.TO_DEVICE)).to.equal(0);
    expect(dmaMapSgtable(env.dev, sg, DmaDirection.TO_DEVICE)).to.equal(-ERRNO.EIO);
    expect(sg.isMappingError(1)).to.equal(true);
    expect(w).to.have.length(1);
    env.expectedWarnings = 1;
    expect(env.dev.liveMappings).to.equal(0);
    env.check();
  });

  it("bus_dma_limit narrows what the device reaches", () => {
    env = new DmaEnv({ mode: "direct", device: { dmaMask: dmaBitMask(64), busDmaLimit: dmaBitMask(32) } });
    expect(dmaMapPage(env.dev, env.frame(PFN_4G), 0, 64, DmaDirection.TO_DEVICE)).to.equal(DMA_MAPPING_ERROR);
    env.expectedWarnings = 1;
    expect(env.host.kernel.warnings[0]!.message).to.match(/mask 0xffffffffffffffff, bus limit 0xffffffff/);
  });
});

describe("dma-api/swiotlb: bouncing through the software IO TLB", () => {
  let env: DmaEnv;
  const pool = (): SwiotlbPool => env.pool!;

  afterEach(() => {
    expect(env.teardown()).to.deep.equal(DMA_NO_LEAKS);
  });

  it("the pool is real host frames below 4 GiB, 64 MiB by default, given back on destroy", () => {
    env = new DmaEnv({ mode: "direct", swiotlb: {} });
    expect(pool().nslabs).to.equal(32768);
    expect(pool().blocks).to.have.length(32);
    expect([...pool().blocks].every((b) => b + BLOCK_PAGES <= PFN_4G)).to.equal(true);
    expect(pool().maxMappingSize()).to.equal(256 << 10);
    expect(dmaMaxMappingSize(env.dev)).to.equal(256 << 10); // a 32-bit device on an 8 GiB host may bounce
    const before = env.host.phys.framesInUse;
    const extra = new SwiotlbPool(env.host, POOL_2M);
    expect(env.host.phys.framesInUse).to.equal(before + BLOCK_PAGES);
    extra.destroy();
    expect(env.host.phys.framesInUse).to.equal(before);
  });

  it("BIDIRECTIONAL: the data is copied into the bounce frames on map and back on unmap", () => {
    env = new DmaEnv({ mode: "direct", swiotlb: POOL_2M });
    const f = env.frame(PFN_4G);
    const orig = f * 4096;
    writePhys(env, orig, pattern(4096, 1));
    const addr = dmaMapPage(env.dev, f, 0, 4096, DmaDirection.BIDIRECTIONAL);
    expect(addr).to.equal(BigInt(pool().slotAddr(0)));
    expect(pool().used).to.equal(2);
    const tlb = Number(addr);
    expect(readPhys(env, tlb, 4096)).to.deep.equal(pattern(4096, 1));
    writePhys(env, tlb, pattern(4096, 9)); // the device writes the bounce buffer
    expect(readPhys(env, orig, 4096)).to.deep.equal(pattern(4096, 1));
    env.check();
    dmaUnmapPage(env.dev, addr, 4096, DmaDirection.BIDIRECTIONAL);
    expect(readPhys(env, orig, 4096)).to.deep.equal(pattern(4096, 9));
    expect(pool().used).to.equal(0);
    env.check();
  });

  it("TO_DEVICE copies in and never back; FROM_DEVICE copies back and not in (copyOnMap 'direction')", () => {
    env = new DmaEnv({ mode: "direct", swiotlb: POOL_2M });
    const f = env.frame(PFN_4G);
    writePhys(env, f * 4096 + 0x100, pattern(0x200, 3));
    const to = dmaMapPage(env.dev, f, 0x100, 0x200, DmaDirection.TO_DEVICE);
    expect(readPhys(env, Number(to), 0x200)).to.deep.equal(pattern(0x200, 3));
    writePhys(env, Number(to), pattern(0x200, 4));
    dmaUnmapPage(env.dev, to, 0x200, DmaDirection.TO_DEVICE);
    expect(readPhys(env, f * 4096 + 0x100, 0x200)).to.deep.equal(pattern(0x200, 3));
    const from = dmaMapPage(env.dev, f, 0x100, 0x200, DmaDirection.FROM_DEVICE);
    expect(from).to.equal(BigInt(pool().slotAddr(1))); // the search resumes after the last slot taken
    expect(readPhys(env, Number(from), 0x200)).to.deep.equal(new Uint8Array(0x200)); // nothing copied in
    writePhys(env, Number(from), pattern(0x200, 5));
    dmaUnmapPage(env.dev, from, 0x200, DmaDirection.FROM_DEVICE);
    expect(readPhys(env, f * 4096 + 0x100, 0x200)).to.deep.equal(pattern(0x200, 5));
    env.check();
  });

  it("copyOnMap 'always' (5.18+) copies the original in even for FROM_DEVICE", () => {
    env = new DmaEnv({ mode: "direct", swiotlb: { ...POOL_2M, copyOnMap: "always" } });
    const f = env.frame(PFN_4G);
    writePhys(env, f * 4096, pattern(64, 6));
    const a = dmaMapPage(env.dev, f, 0, 64, DmaDirection.FROM_DEVICE);
    expect(readPhys(env, Number(a), 64)).to.deep.equal(pattern(64, 6));
    dmaUnmapPage(env.dev, a, 64, DmaDirection.FROM_DEVICE);
  });

  it("sync_for_device copies in (TO_DEVICE, BIDIRECTIONAL) and sync_for_cpu copies back (FROM_DEVICE, BIDIRECTIONAL)", () => {
    env = new DmaEnv({ mode: "direct", swiotlb: POOL_2M });
    const f = env.frame(PFN_4G);
    const orig = f * 4096;
    const addr = dmaMapPage(env.dev, f, 0, 4096, DmaDirection.BIDIRECTIONAL);
    const tlb = Number(addr);
    writePhys(env, orig, pattern(4096, 11)); // the CPU fills the buffer after the map
    expect(readPhys(env, tlb, 16)).to.deep.equal(new Uint8Array(16));
    dmaSyncSingleForDevice(env.dev, addr, 4096, DmaDirection.FROM_DEVICE); // copies nothing
    expect(readPhys(env, tlb, 16)).to.deep.equal(new Uint8Array(16));
    dmaSyncSingleForDevice(env.dev, addr, 4096, DmaDirection.BIDIRECTIONAL);
    expect(readPhys(env, tlb, 4096)).to.deep.equal(pattern(4096, 11));
    writePhys(env, tlb, pattern(4096, 12)); // the device answers
    dmaSyncSingleForCpu(env.dev, addr, 4096, DmaDirection.TO_DEVICE); // copies nothing
    expect(readPhys(env, orig, 4096)).to.deep.equal(pattern(4096, 11));
    dmaSyncSingleForCpu(env.dev, addr + 0x100n, 0x10, DmaDirection.FROM_DEVICE); // a partial sync
    const expected = pattern(4096, 11);
    expected.set(pattern(4096, 12).subarray(0x100, 0x110), 0x100);
    expect(readPhys(env, orig, 4096)).to.deep.equal(expected);
    dmaUnmapPage(env.dev, addr, 4096, DmaDirection.BIDIRECTIONAL);
    expect(readPhys(env, orig, 4096)).to.deep.equal(pattern(4096, 12));
    env.check();
  });

  it("a full pool fails the map with DMA_MAPPING_ERROR and 'swiotlb buffer is full'; so does a mapping above 256 KiB", () => {
    env = new DmaEnv({ mode: "direct", swiotlb: POOL_2M });
    const base = env.block(PFN_4G);
    const seg = 256 << 10;
    const addrs: bigint[] = [];
    for (let k = 0; k < 8; k++) addrs.push(dmaMapPage(env.dev, base + k * 64, 0, seg, DmaDirection.TO_DEVICE));
    expect(addrs).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7].map((k) => BigInt(pool().slotAddr(k * IO_TLB_SEGSIZE))));
    expect(pool().used).to.equal(1024);
    env.check();
    expect(dmaMapPage(env.dev, env.frame(PFN_4G), 0, 64, DmaDirection.TO_DEVICE)).to.equal(DMA_MAPPING_ERROR);
    expect(env.host.kernel.messages).to.deep.equal(["0000:01:00.0: swiotlb buffer is full (sz: 64 bytes), total 1024 (slots), used 1024 (slots)"]);
    for (const a of addrs) dmaUnmapPage(env.dev, a, seg, DmaDirection.TO_DEVICE);
    expect(dmaMapPage(env.dev, base, 0, seg + 4096, DmaDirection.TO_DEVICE)).to.equal(DMA_MAPPING_ERROR);
    expect(env.host.kernel.messages[1]).to.equal("0000:01:00.0: swiotlb buffer is full (sz: 266240 bytes), total 1024 (slots), used 0 (slots)");
    expect(env.host.kernel.warnings).to.deep.equal([]);
    env.check();
  });

  it("swiotlb=force bounces a buffer the device could reach", () => {
    env = new DmaEnv({ mode: "direct", swiotlb: POOL_2M, device: { dmaMask: dmaBitMask(64), forceSwiotlb: true } });
    const f = env.frame();
    const a = dmaMapPage(env.dev, f, 0, 4096, DmaDirection.TO_DEVICE);
    expect(a).to.equal(BigInt(pool().slotAddr(0)));
    expect(dmaMaxMappingSize(env.dev)).to.equal(256 << 10);
    dmaUnmapPage(env.dev, a, 4096, DmaDirection.TO_DEVICE);
  });

  it("dma_map_sg bounces entry by entry; a failure unmaps the earlier bounces without copying back, -EIO", () => {
    env = new DmaEnv({ mode: "direct", swiotlb: POOL_2M });
    const reachable = env.frame();
    const [h0, h1] = [env.frame(PFN_4G), env.frame(PFN_4G)];
    const big = env.block(PFN_4G);
    writePhys(env, h0 * 4096, pattern(4096, 21));
    const sg = new Scatterlist(3).set(0, reachable, 0, 4096).set(1, h0, 0, 4096).set(2, h1, 0, 4096);
    expect(dmaMapSg(env.dev, sg, 3, DmaDirection.BIDIRECTIONAL)).to.equal(3);
    expect([sg.dmaAddress(0), sg.dmaAddress(1), sg.dmaAddress(2)]).to.deep.equal([BigInt(reachable * 4096), BigInt(pool().slotAddr(0)), BigInt(pool().slotAddr(2))]);
    expect(readPhys(env, pool().slotAddr(0), 4096)).to.deep.equal(pattern(4096, 21));
    dmaUnmapSg(env.dev, sg, 3, DmaDirection.BIDIRECTIONAL);
    expect(pool().used).to.equal(0);
    expect(pool().index).to.equal(4);
    writePhys(env, pool().slotAddr(4), pattern(4096, 99)); // stale bytes in the slot the next bounce takes
    const failing = new Scatterlist(2).set(0, h0, 0, 4096).set(1, big, 0, 300 << 10);
    expect(dmaMapSgtable(env.dev, failing, DmaDirection.FROM_DEVICE)).to.equal(-ERRNO.EIO);
    expect([pool().used, env.dev.liveMappings]).to.deep.equal([0, 0]);
    expect(readPhys(env, h0 * 4096, 4096)).to.deep.equal(pattern(4096, 21));
    env.check();
  });
});
