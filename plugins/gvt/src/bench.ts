/**
 * The `gvt.ggtt-write` bench case: nanoseconds per present 8-byte GGTT write
 * through BAR0, including the cache miss's pin and map for the parent device
 * and the shadow update. Each write names a new guest frame, so every one is
 * a miss (the expensive path). The buffers are made before the clock starts;
 * the write path itself allocates nothing of its own (the services'
 * translate returns its arrays).
 *
 * `measureGgttWrites` runs on a vGPU a platform already opened (on KVM:
 * `PlatformVm.addVgpu`); `runGvtBench` makes and opens one on the given
 * services (the fake, or any services whose device is already open).
 */
import { VFIO_PCI_BAR0_REGION_INDEX, type VgpuServices } from "@vgpu-iommu/core";
import { GGTT_OFFSET } from "./gvt-params.js";
import type { GvtVgpu } from "./gvt-vgpu.js";
import { GvtVendor } from "./gvt-vendor.js";

export const GVT_GGTT_WRITE_TARGET_NS = 400;

export interface GvtBenchResult {
  readonly name: "gvt.ggtt-write";
  readonly nsPerOp: number;
  readonly ops: number;
  readonly target: number;
  readonly met: boolean;
  /** Pins and maps the measured writes made (one each per write). */
  readonly mappings: number;
}

export interface GgttBenchOptions {
  /** Present writes measured (default 16384: with the warm-up, one GVTg_V5_4 aperture slice). */
  readonly writes?: number;
  /** First guest frame written; frames firstGfn .. firstGfn + 2 * writes are used. */
  readonly firstGfn?: number;
}

/** Writes `writes` present entries into empty slots after a warm-up of as many, and reports the measured half. */
export function measureGgttWrites(vgpu: GvtVgpu, options: GgttBenchOptions = {}): GvtBenchResult {
  const writes = options.writes ?? 16384;
  const firstGfn = options.firstGfn ?? 0x1000;
  if (vgpu.ggtt.apCount < 2 * writes) throw new RangeError(`gvt bench: the aperture slice holds ${vgpu.ggtt.apCount} entries, fewer than 2 x ${writes}`);
  const region = VFIO_PCI_BAR0_REGION_INDEX;
  const buf = new Uint8Array(writes * 8);
  const views: Uint8Array[] = [];
  const warm: bigint[] = [];
  const offsets: bigint[] = [];
  for (let i = 0; i < writes; i++) {
    views.push(buf.subarray(i * 8, i * 8 + 8));
    warm.push(BigInt(GGTT_OFFSET + (vgpu.ggtt.apStart + i) * 8));
    offsets.push(BigInt(GGTT_OFFSET + (vgpu.ggtt.apStart + writes + i) * 8));
  }
  const fill = (base: number): void => {
    for (let i = 0; i < writes; i++) {
      const gfn = base + i;
      const lo = ((gfn % 0x100000) * 4096 + 3) >>> 0;
      const hi = Math.floor(gfn / 0x100000);
      buf[i * 8] = lo & 0xff;
      buf[i * 8 + 1] = (lo >>> 8) & 0xff;
      buf[i * 8 + 2] = (lo >>> 16) & 0xff;
      buf[i * 8 + 3] = lo >>> 24;
      buf[i * 8 + 4] = hi & 0xff;
      buf[i * 8 + 5] = (hi >>> 8) & 0xff;
      buf[i * 8 + 6] = 0;
      buf[i * 8 + 7] = 0;
    }
  };
  // Warm-up: the same path on the first half of the slots and other frames.
  fill(firstGfn);
  for (let i = 0; i < writes; i++) vgpu.write(region, warm[i]!, views[i]!);
  fill(firstGfn + writes);
  const mapsBefore = vgpu.cache.counters.maps;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < writes; i++) vgpu.write(region, offsets[i]!, views[i]!);
  const ns = Number(process.hrtime.bigint() - t0);
  const nsPerOp = ns / writes;
  return { name: "gvt.ggtt-write", nsPerOp, ops: writes, target: GVT_GGTT_WRITE_TARGET_NS, met: nsPerOp <= GVT_GGTT_WRITE_TARGET_NS, mappings: vgpu.cache.counters.maps - mapsBefore };
}

/** Creates a GVTg_V5_4 vGPU on `services`, opens it, measures, closes and destroys it. */
export async function runGvtBench(services: VgpuServices, options: GgttBenchOptions = {}): Promise<GvtBenchResult> {
  const vendor = new GvtVendor();
  const vgpu = vendor.create("GVTg_V5_4", "gvt-bench", services);
  await vgpu.open();
  try {
    return measureGgttWrites(vgpu, options);
  } finally {
    await vgpu.close();
    vendor.destroy(vgpu);
  }
}
