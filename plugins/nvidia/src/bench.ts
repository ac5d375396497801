/**
 * The bench case `nvidia.get-iova.512`: ns per page of RM's GET_IOVA requests
 * of 512 arbitrary guest frames on an open mdev vGPU (pin + one scatter-gather
 * mapping per batch + the mapping-cache bookkeeping), target <= 80 ns/page;
 * and, reported beside it, the matching RM unpins.
 *
 * The platform is the caller's: `setup` creates and opens a vGPU of the given
 * vendor and type on it (on KVM, `platform.createVm(...)` then `vm.addVgpu`)
 * and says which guest frames are RAM. Each repetition pins every frame once
 * in a shuffled order, checks the exact counts (one pin per frame, one live
 * translation per batch, and the platform's own pin count when it gives one),
 * then unpins batch by batch and checks that nothing is left.
 */
import { NvidiaVendor } from "./nvidia-vendor.js";
import type { NvidiaVgpu } from "./nvidia-vgpu.js";

export const GET_IOVA_TARGET_NS_PER_PAGE = 80;
const BATCH = 512;

export interface GetIovaBenchTarget {
  /** An open mdev vGPU of the vendor `setup` was given. */
  readonly vgpu: NvidiaVgpu;
  /** Guest RAM frames [firstGfn, firstGfn + pages) the case may pin. */
  readonly firstGfn: number;
  readonly pages: number;
  /** Pins the platform counts (for example host.phys.totalPins), to cross-check; optional. */
  platformPins?(): number;
  teardown(): Promise<void>;
}

export type GetIovaBenchSetup = (vendor: NvidiaVendor, type: string) => Promise<GetIovaBenchTarget>;

export interface GetIovaFigures {
  /** Median ns per page of the GET_IOVA requests. */
  readonly value: number;
  readonly runs: readonly number[];
  /** Median ns per page of the matching RM unpins. */
  readonly unpin: number;
  readonly note: string;
}

const now = (): bigint => process.hrtime.bigint();

/** A deterministic shuffle of [first, first + n) (xorshift32, Fisher-Yates). */
export function shuffledFrames(first: number, n: number, seed = 0x9e3779b9): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = first + i;
  let x = seed >>> 0 || 1;
  for (let i = n - 1; i > 0; i--) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const j = x % (i + 1);
    const t = out[i]!;
    out[i] = out[j]!;
    out[j] = t;
  }
  return out;
}

/**
 * How the frames of the guest are dealt into batches: "shuffled" puts any frame
 * anywhere (512 single-frame runs per batch, the worst case for run-merging
 * pins); "runs16" deals shuffled runs of 16 contiguous frames (a 64 KiB buffer
 * each); "sequential" gives each batch one contiguous run.
 */
export type FrameOrder = "shuffled" | "runs16" | "sequential";

/** The guest's frames [first, first + n) in the given order. */
export function framesInOrder(first: number, n: number, order: FrameOrder): Float64Array {
  if (order === "shuffled") return shuffledFrames(first, n);
  const out = new Float64Array(n);
  if (order === "sequential") {
    for (let i = 0; i < n; i++) out[i] = first + i;
    return out;
  }
  const runs = shuffledFrames(0, Math.floor(n / 16));
  for (let r = 0; r < runs.length; r++) for (let j = 0; j < 16; j++) out[r * 16 + j] = first + runs[r]! * 16 + j;
  for (let i = runs.length * 16; i < n; i++) out[i] = first + i;
  return out;
}

export async function measureGetIova512(setup: GetIovaBenchSetup, options: { reps?: number; type?: string; vendor?: NvidiaVendor; order?: FrameOrder } = {}): Promise<GetIovaFigures> {
  const vendor = options.vendor ?? new NvidiaVendor();
  const target = await setup(vendor, options.type ?? vendor.profile.types[0]!.name);
  const { vgpu } = target;
  const pages = target.pages - (target.pages % BATCH);
  const order = options.order ?? "shuffled";
  const frames = framesInOrder(target.firstGfn, pages, order);
  const out = new Float64Array(BATCH);
  const batches = pages / BATCH;
  const pinRuns: number[] = [];
  const unpinRuns: number[] = [];
  const basePins = target.platformPins?.() ?? 0;
  try {
    for (let r = 0; r < (options.reps ?? 3); r++) {
      const t0 = now();
      for (let b = 0; b < pages; b += BATCH) vgpu.translateGfns(frames.subarray(b, b + BATCH), "GET_IOVA", out);
      const t1 = now();
      expect(vgpu.pins === pages, `GET_IOVA: ${vgpu.pins} pins held, expected ${pages}`);
      expect(vgpu.liveTranslations === batches && vgpu.liveNodes === batches, `GET_IOVA: ${vgpu.liveTranslations} translations and ${vgpu.liveNodes} nodes, expected ${batches}`);
      if (target.platformPins !== undefined) expect(target.platformPins() - basePins === pages, `GET_IOVA: the platform counts ${target.platformPins() - basePins} pins, expected ${pages}`);
      const t2 = now();
      for (let b = 0; b < pages; b += BATCH) vgpu.unpinGfns(frames.subarray(b, b + BATCH), "GET_IOVA");
      const t3 = now();
      expect(vgpu.pins === 0 && vgpu.liveNodes === 0, `unpin: ${vgpu.pins} pins and ${vgpu.liveNodes} nodes left`);
      if (target.platformPins !== undefined) expect(target.platformPins() === basePins, `unpin: the platform still counts ${target.platformPins() - basePins} pins`);
      pinRuns.push(Number(t1 - t0) / pages);
      unpinRuns.push(Number(t3 - t2) / pages);
    }
  } finally {
    await target.teardown();
  }
  return { value: median(pinRuns), runs: pinRuns, unpin: median(unpinRuns), note: `${batches} batches of ${BATCH} frames (${order}); RM unpin ${median(unpinRuns).toFixed(1)} ns/page` };
}

function expect(ok: boolean, message: string): void {
  if (!ok) throw new Error(`nvidia.get-iova.512: ${message}`);
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
