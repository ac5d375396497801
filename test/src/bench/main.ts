/**
 * `npm run bench [-- --json] [-- --case <prefix>] [-- --reps <n>]`: the fixed,
 * named cases of vgpu-iommu's hot paths, each against its target and the
 * baseline sketch measured in the same process. Every figure is measured;
 * a missed target prints `met: false` (and NO in the table).
 */
import "reflect-metadata";
import { fileURLToPath } from "node:url";
import { runBaseline } from "./baseline.js";
import { measureMapUnmap, measurePinUnpin } from "./type1-cases.js";
import { measureScale, runScaleChild } from "./scale.js";
import { measureGpaToHpa, measureIovaAllocFree, measureMapForDevice } from "./translate-cases.js";
import { formatJson, formatTable, result, type CaseResult } from "./result.js";
import { runXenBench } from "@vgpu-iommu/adapter-xen";
import { GET_IOVA_TARGET_NS_PER_PAGE, measureGetIova512, type FrameOrder } from "@vgpu-iommu/plugin-nvidia";
import { GVT_GGTT_WRITE_TARGET_NS, measureGvtGgttWrite, measureGvtPluginOnly } from "./gvt-cases.js";
import { nvidiaKvmBenchSetup } from "../support/nvidia-stack.js";

const GUEST_BYTES = 16n << 30n;
const GUEST_PAGES = Number(GUEST_BYTES >> 12n);
const RAM_BYTES = 20n << 30n;
const WARMUP_BYTES = 256n << 20n;

const TARGETS = {
  "type1.map-dma.4k": 25,
  "type1.map-dma.thp": 2,
  "type1.unmap-dma.4k": 15,
  "type1.pin-pages.4k": 30,
  "type1.unpin-pages.4k": 15,
  "type1.state.bytes-per-page": 16,
  "type1.scale.1tib": 8192,
  "translate.gpa-to-hpa.random": 40,
  "translate.gpa-to-hpa.hot": 10,
  "translate.map-for-device.4k": 60,
  "iova.alloc-free.65536": 500,
  "xen.pviommu.map.4k": 60,
  "xen.swiotlb.map-sg.4k": 80,
  "gvt.ggtt-write": GVT_GGTT_WRITE_TARGET_NS,
  "nvidia.get-iova.512": GET_IOVA_TARGET_NS_PER_PAGE,
} as const;

interface Args {
  readonly json: boolean;
  readonly cases: readonly string[];
  readonly reps: number;
}

function parseArgs(argv: readonly string[]): Args {
  let json = false;
  let reps = 5;
  const cases: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--json") json = true;
    else if (a === "--case") cases.push(argv[++i] ?? "");
    else if (a === "--reps") reps = Math.max(1, Number(argv[++i]));
    else throw new Error(`bench: unknown argument ${a} (use --json, --case <prefix>, --reps <n>)`);
  }
  return { json, cases, reps };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === "--scale-child") return runScaleChild();
  const args = parseArgs(argv);
  const wanted = (name: string): boolean => args.cases.length === 0 || args.cases.some((c) => name.startsWith(c));
  const results: CaseResult[] = [];
  const emit = (r: CaseResult): void => {
    results.push(r);
    if (args.json) process.stdout.write(formatJson(r) + "\n");
  };

  // Warm-up: every path once on a small guest, results discarded.
  runBaseline(Number(WARMUP_BYTES >> 12n));
  if (wanted("type1.map-dma.4k") || wanted("type1.unmap-dma.4k")) await measureMapUnmap(WARMUP_BYTES, 1n << 30n, "scattered-4k", 2, true);
  if (wanted("type1.map-dma.thp")) await measureMapUnmap(WARMUP_BYTES, 1n << 30n, "thp", 2, true);
  if (wanted("type1.pin-pages.4k") || wanted("type1.unpin-pages.4k") || wanted("type1.state")) await measurePinUnpin(WARMUP_BYTES, 1n << 30n, 2, true);
  if (wanted("translate.map-for-device")) await measureMapForDevice(WARMUP_BYTES, 1);

  const base = runBaseline(GUEST_PAGES);
  if (wanted("baseline.")) {
    emit(result("baseline.pin", "ns/page", { value: base.pin, note: "typed-array sketch, 16 GiB: pin + account + IOVA per page, batches of 512" }));
    emit(result("baseline.translate", "ns/op", { value: base.translate, note: "typed-array sketch: random GPA -> HPA over 4,194,304 pages" }));
    emit(result("baseline.unpin", "ns/page", { value: base.unpin }));
  }

  if (wanted("type1.map-dma.4k") || wanted("type1.unmap-dma.4k")) {
    const m = await measureMapUnmap(GUEST_BYTES, RAM_BYTES, "scattered-4k", args.reps);
    if (wanted("type1.map-dma.4k")) emit(result("type1.map-dma.4k", "ns/page", m.map, TARGETS["type1.map-dma.4k"], base.pin));
    if (wanted("type1.unmap-dma.4k")) emit(result("type1.unmap-dma.4k", "ns/page", m.unmap, TARGETS["type1.unmap-dma.4k"], base.unpin));
  }
  if (wanted("type1.map-dma.thp")) {
    const m = await measureMapUnmap(GUEST_BYTES, RAM_BYTES, "thp", args.reps);
    const unmap = `UNMAP_DMA of the same: ${m.unmap.value.toFixed(2)} ns/page`;
    emit(result("type1.map-dma.thp", "ns/page", { ...m.map, note: unmap }, TARGETS["type1.map-dma.thp"], base.pin));
  }
  if (wanted("type1.pin-pages.4k") || wanted("type1.unpin-pages.4k") || wanted("type1.state")) {
    const p = await measurePinUnpin(GUEST_BYTES, RAM_BYTES, args.reps);
    if (wanted("type1.pin-pages.4k")) emit(result("type1.pin-pages.4k", "ns/page", p.pin, TARGETS["type1.pin-pages.4k"], base.pin));
    if (wanted("type1.unpin-pages.4k")) emit(result("type1.unpin-pages.4k", "ns/page", p.unpin, TARGETS["type1.unpin-pages.4k"], base.unpin));
    if (wanted("type1.state")) emit(result("type1.state.bytes-per-page", "B/page", p.state, TARGETS["type1.state.bytes-per-page"], base.bytesPerPage));
  }
  if (wanted("type1.scale")) emit(result("type1.scale.1tib", "MiB", measureScale(fileURLToPath(import.meta.url)), TARGETS["type1.scale.1tib"]));

  if (wanted("translate.gpa-to-hpa")) {
    const m = measureGpaToHpa(GUEST_BYTES, args.reps);
    if (wanted("translate.gpa-to-hpa.random")) emit(result("translate.gpa-to-hpa.random", "ns/lookup", m.random, TARGETS["translate.gpa-to-hpa.random"], base.translate));
    if (wanted("translate.gpa-to-hpa.hot")) emit(result("translate.gpa-to-hpa.hot", "ns/lookup", m.hot, TARGETS["translate.gpa-to-hpa.hot"]));
  }
  if (wanted("translate.map-for-device")) emit(result("translate.map-for-device.4k", "ns/page", await measureMapForDevice(GUEST_BYTES, args.reps), TARGETS["translate.map-for-device.4k"], base.pin));
  if (wanted("iova.")) emit(result("iova.alloc-free.65536", "ns/pair", measureIovaAllocFree(args.reps), TARGETS["iova.alloc-free.65536"]));

  if (wanted("xen.pviommu.map.4k") || wanted("xen.swiotlb.map-sg.4k")) {
    // The Xen adapter's cases: 16 GiB of scattered guest frames, pinned through privcmd, then mapped for the parent.
    const xen = await runXenBench({ guestBytes: GUEST_BYTES, ramBytes: RAM_BYTES, reps: args.reps });
    for (const c of xen) {
      if (!wanted(c.case)) continue;
      const name = c.case as keyof typeof TARGETS;
      emit(result(c.case, c.unit, { value: c.value, ...(c.runs === undefined ? {} : { runs: c.runs }), ...(c.note === undefined ? {} : { note: c.note }) }, TARGETS[name], base.pin));
    }
  }

  if (wanted("gvt.")) {
    if (wanted("gvt.ggtt-write")) emit(result("gvt.ggtt-write", "ns/write", await measureGvtGgttWrite(args.reps), TARGETS["gvt.ggtt-write"]));
    if (wanted("gvt.ggtt-write.plugin-only")) emit(result("gvt.ggtt-write.plugin-only", "ns/write", await measureGvtPluginOnly(args.reps)));
  }
  // GET_IOVA of 512 arbitrary guest frames (shuffled: one pin call per frame on 6.x VFIO), and of batches with contiguous runs.
  const orders: [string, FrameOrder][] = [["nvidia.get-iova.512", "shuffled"], ["nvidia.get-iova.512.runs16", "runs16"], ["nvidia.get-iova.512.sequential", "sequential"]];
  for (const [name, order] of orders) {
    if (!wanted(name)) continue;
    const m = await measureGetIova512(nvidiaKvmBenchSetup(2n << 30n), { reps: args.reps, order });
    emit(result(name, "ns/page", m, TARGETS["nvidia.get-iova.512"], base.pin));
  }

  if (!args.json) process.stdout.write(formatTable(results) + "\n");
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
