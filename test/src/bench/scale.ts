/**
 * The 1 TiB case: MAP_DMA and UNMAP_DMA of 2^28 THP-backed pages in one
 * process, measured for peak RSS. It runs in a child process of its own, so
 * the peak is this case's and not a leftover of another case.
 */
import { spawnSync } from "node:child_process";
import { BenchStack } from "./setup.js";
import type { Measured } from "./result.js";

export const SCALE_PAGES = 1 << 28;
const GUEST_BYTES = BigInt(SCALE_PAGES) << 12n;

/** Child side: builds, maps, unmaps, and prints one JSON line with the figures. */
export async function runScaleChild(): Promise<void> {
  const s = await BenchStack.create({ kind: "iommu-backed", ramBytes: GUEST_BYTES + (1n << 30n), guestBytes: GUEST_BYTES, backing: "thp", prefault: false, iova: 1n << 40n });
  const t0 = process.hrtime.bigint();
  await s.map();
  const t1 = process.hrtime.bigint();
  s.expectState("MAP_DMA 1 TiB", SCALE_PAGES, SCALE_PAGES);
  await s.unmap();
  const t2 = process.hrtime.bigint();
  s.expectState("UNMAP_DMA 1 TiB", 0, 0);
  const maxRssMiB = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(JSON.stringify({ maxRssMiB, mapNs: Number(t1 - t0), unmapNs: Number(t2 - t1) }) + "\n");
}

/** Parent side: runs the child with the same Node flags and reads its figures. */
export function measureScale(mainScript: string): Measured {
  const child = spawnSync(process.execPath, [...process.execArgv, mainScript, "--scale-child"], { encoding: "utf8", maxBuffer: 1 << 20 });
  const line = child.stdout.trim().split("\n").pop() ?? "";
  if (child.status !== 0 || line === "") throw new Error(`bench: 1 TiB child failed (status ${child.status}, signal ${child.signal}): ${child.stderr.slice(-2000)}`);
  const r = JSON.parse(line) as { maxRssMiB: number; mapNs: number; unmapNs: number };
  return {
    value: r.maxRssMiB,
    note: `peak RSS of a child process that faults in (THP), maps and unmaps 2^28 pages; MAP_DMA ${(r.mapNs / 1e9).toFixed(2)} s (${(r.mapNs / SCALE_PAGES).toFixed(2)} ns/page incl. first touch), UNMAP_DMA ${(r.unmapNs / 1e9).toFixed(2)} s (${(r.unmapNs / SCALE_PAGES).toFixed(2)} ns/page)`,
  };
}

