/**
 * The type1 cases: MAP_DMA / UNMAP_DMA through host.ioctl into a container
 * with one IOMMU-backed group, and vfioPinPages / vfioUnpinPages in an
 * mdev-only container, over guests whose pages are all faulted in first. Each
 * step is checked for its exact pins and charges, so a fast wrong answer
 * fails the bench instead of scoring.
 */
import { IOMMU_READ, IOMMU_WRITE, vfioPinPages, vfioUnpinPages, type BackingKind, type Iova } from "@vgpu-iommu/core";
import { BenchStack } from "./setup.js";
import { median, type Measured } from "./result.js";

const now = (): bigint => process.hrtime.bigint();
const nsPerPage = (t0: bigint, t1: bigint, pages: number): number => Number(t1 - t0) / pages;
/**
 * A forced full GC is taken once per case, before its stack is built, never
 * between timed steps. A full GC that finds no mapping alive collects the
 * mapping's hidden class and deoptimizes every hot function specialised on
 * it, as it would in any process that drops its last mapping; so the warm-up
 * leaves its stack mapped (and pinned) for the rest of the run, as a VMM keeps
 * its guests mapped.
 */
const gc = (): void => (globalThis as { gc?: () => void }).gc?.();

/** Warm-up stacks, kept mapped until the process ends. */
const warmStacks: BenchStack[] = [];

export interface MapFigures {
  readonly map: Measured;
  readonly unmap: Measured;
}

/** MAP_DMA then UNMAP_DMA of the whole guest, `reps` times; ns/page, medians. */
export async function measureMapUnmap(guestBytes: bigint, ramBytes: bigint, backing: BackingKind, reps: number, warmUp = false): Promise<MapFigures> {
  gc();
  const s = await BenchStack.create({ kind: "iommu-backed", ramBytes, guestBytes, backing, prefault: true });
  const n = s.npages;
  const maps: number[] = [];
  const unmaps: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = now();
    await s.map();
    const t1 = now();
    s.expectState("MAP_DMA", n, n);
    const t2 = now();
    await s.unmap();
    const t3 = now();
    s.expectState("UNMAP_DMA", 0, 0);
    maps.push(nsPerPage(t0, t1, n));
    unmaps.push(nsPerPage(t2, t3, n));
  }
  if (warmUp) {
    await s.map();
    warmStacks.push(s);
  }
  return { map: { value: median(maps), runs: maps }, unmap: { value: median(unmaps), runs: unmaps } };
}

export interface PinFigures {
  readonly pin: Measured;
  readonly unpin: Measured;
  readonly state: Measured;
}

/** vfioPinPages of the whole mapped guest, 512 pages a call, then the matching unpins, `reps` times. */
export async function measurePinUnpin(guestBytes: bigint, ramBytes: bigint, reps: number, warmUp = false): Promise<PinFigures> {
  gc();
  const s = await BenchStack.create({ kind: "mdev-only", ramBytes, guestBytes, backing: "scattered-4k", prefault: true });
  await s.map();
  s.expectState("MAP_DMA (mdev-only)", 0, 0);
  const vdev = s.device!;
  const n = s.npages;
  const pages = new Uint32Array(512);
  const prot = IOMMU_READ | IOMMU_WRITE;
  const pins: number[] = [];
  const unpins: number[] = [];
  let state: Measured = { value: NaN };
  for (let r = 0; r < reps; r++) {
    const before = process.memoryUsage().arrayBuffers;
    const t0 = now();
    for (let i = 0; i < n; i += 512) vfioPinPages(vdev, (s.iova + (BigInt(i) << 12n)) as Iova, 512, prot, pages);
    const t1 = now();
    s.expectState("vfioPinPages", n, n);
    const grown = process.memoryUsage().arrayBuffers - before;
    if (r === 0) state = pinState(s, grown);
    const t2 = now();
    for (let i = 0; i < n; i += 512) vfioUnpinPages(vdev, (s.iova + (BigInt(i) << 12n)) as Iova, 512);
    const t3 = now();
    s.expectState("vfioUnpinPages", 0, 0);
    pins.push(nsPerPage(t0, t1, n));
    unpins.push(nsPerPage(t2, t3, n));
  }
  if (warmUp) {
    vfioPinPages(vdev, s.iova as Iova, 512, prot, pages);
    warmStacks.push(s);
  } else {
    await s.unmap();
    s.expectState("UNMAP_DMA (mdev-only)", 0, 0);
  }
  return { pin: { value: median(pins), runs: pins }, unpin: { value: median(unpins), runs: unpins }, state };
}

/**
 * Bytes of pin and accounting state per pinned page: the vfio_pfn store of
 * every mapping (frame + ref_count chunks), dirty bitmaps, and the host's
 * per-frame pin count (a u16 per frame, attributed to the frames pinned).
 */
function pinState(s: BenchStack, arrayBufferGrowth: number): Measured {
  let vpfnBytes = 0;
  let bitmapBytes = 0;
  let pinnedPages = 0;
  for (const dma of s.iommu.dmas.values()) {
    vpfnBytes += dma.vpfnBytes;
    bitmapBytes += dma.bitmap?.byteLength ?? 0;
    pinnedPages += dma.vpfnCount;
  }
  const hostPinBytes = s.host.phys.totalPins === 0 ? 0 : pinnedFrames(s) * s.host.phys.pins.BYTES_PER_ELEMENT;
  const value = (vpfnBytes + bitmapBytes + hostPinBytes) / pinnedPages;
  const per = (b: number): string => (b / pinnedPages).toFixed(2);
  return {
    value,
    note:
      `counted per pinned page: vfio_pfn store ${per(vpfnBytes)} B (dma.vpfnBytes: u32 frame + u32 ref_count chunks), ` +
      `dirty bitmaps ${per(bitmapBytes)} B (tracking off), host pin count ${per(hostPinBytes)} B (u16 PhysicalMemory.pins per pinned frame, preallocated for all RAM); ` +
      `not counted: the mm's page table (MemoryObject.frames, u32/page, exists without pins) and PhysicalMemory.state (u8/frame, exists without pins); ` +
      `ArrayBuffer growth measured across the pins: ${per(arrayBufferGrowth)} B/page`,
  };
}

function pinnedFrames(s: BenchStack): number {
  const pins = s.host.phys.pins;
  let n = 0;
  for (let f = 0; f < pins.length; f++) if (pins[f] !== 0) n++;
  return n;
}
