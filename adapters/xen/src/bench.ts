/**
 * The Xen adapter's bench cases, run by the lead's `npm run bench`:
 * - `xen.pviommu.map.4k`: ns per page to map 16 GiB of pinned guest frames
 *   (scattered 4 KiB frames) for a device through the 2024 PV-IOMMU, in calls
 *   of 512 frames as the core makes them: the core's DFN placement
 *   (DeviceAddressSpaces.placeIova, one per call), then XenAdapter.mapForDevice
 *   at that DFN (map_pages of 256 pages with a flush per call, the per-frame
 *   addresses); unmapping frees the placement after the adapter's unmap;
 * - `xen.swiotlb.map-sg.4k`: ns per page to map the same through swiotlb-xen
 *   on a PV Dom0 (XenAdapter.mapForDevice: a scatterlist per call, map_sg
 *   entry by entry, the per-frame addresses), for a 64-bit device, so nothing
 *   bounces.
 * Pinning (privcmd foreign maps) is done before timing and reported in the
 * note. Every repetition checks the exact state it must leave (references,
 * flushes, addresses a device reaches), so a fast wrong answer fails the bench
 * instead of scoring; the value is the median of the repetitions.
 */
import { DeviceAddressSpaces, createHost, type DeviceHandle } from "@vgpu-iommu/core";
import { Xen } from "./xen.js";
import { XenAdapter } from "./xen-adapter.js";
import type { DeviceMapping } from "@vgpu-iommu/core";

export interface XenBenchCase {
  readonly case: string;
  readonly unit: string;
  readonly value: number;
  readonly target: number;
  readonly note?: string;
  readonly runs?: readonly number[];
}

export interface XenBenchOptions {
  readonly guestBytes?: bigint;
  readonly ramBytes?: bigint;
  readonly reps?: number;
}

const CALL_PAGES = 512;
const now = (): bigint => process.hrtime.bigint();
const gc = (): void => (globalThis as { gc?: () => void }).gc?.();
const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const round = (v: number): number => Math.round(v * 100) / 100;
const size = (bytes: bigint): string => (bytes >= 1n << 30n ? `${Number(bytes >> 30n)} GiB` : `${Number(bytes >> 20n)} MiB`);

function check(cond: boolean, what: string): void {
  if (!cond) throw new Error(`xen bench: ${what}`);
}

interface Stack {
  readonly xen: Xen;
  readonly adapter: XenAdapter;
  readonly gpu: DeviceHandle;
  readonly mfns: Uint32Array;
  readonly n: number;
  readonly pinNs: number;
}

function build(kind: "pv" | "pvh", guestBytes: bigint, ramBytes: bigint): Stack {
  const host = createHost({ ramBytes, seed: 1 });
  const xen = new Xen(host, { pvIommu: kind === "pvh" ? "2024" : "none" });
  xen.createDom0({ kind, memoryBytes: 256n << 20n });
  const guest = xen.createGuest({ name: "bench", memoryBytes: guestBytes });
  const adapter = new XenAdapter(xen);
  const vgpu = { name: "vgpu" };
  adapter.attachVgpu(vgpu, guest.domid);
  const gpu = adapter.registerDevice({ name: "gpu", sbdf: { seg: 0, bus: 1, devfn: 0 } });
  const n = Number(guestBytes >> 12n);
  const mfns = new Uint32Array(n);
  const gfns = new Float64Array(CALL_PAGES);
  const pins = adapter.guestPins(vgpu);
  const t0 = now();
  for (let off = 0; off < n; off += CALL_PAGES) {
    for (let i = 0; i < CALL_PAGES; i++) gfns[i] = off + i;
    pins.pin(gfns, CALL_PAGES, true, mfns.subarray(off, off + CALL_PAGES));
  }
  const pinNs = Number(now() - t0) / n;
  check(host.phys.totalPins === n, `pinned ${host.phys.totalPins} references for ${n} frames`);
  return { xen, adapter, gpu, mfns, n, pinNs };
}

/** Maps every pinned frame in calls of 512, then unmaps; returns ns/page of each. */
function mapAll(s: Stack, expectRefs: number, expectFlushes: number): { map: number; unmap: number } {
  const { adapter, gpu, mfns, n, xen } = s;
  const spaces = new DeviceAddressSpaces();
  const place = adapter.capabilities().coreChoosesIova;
  const maps: DeviceMapping[] = new Array<DeviceMapping>(n / CALL_PAGES);
  const dfns = new Float64Array(n / CALL_PAGES);
  const flushes = xen.dom0Flushes;
  const t0 = now();
  for (let k = 0, off = 0; off < n; k++, off += CALL_PAGES) {
    const dfn = place ? (dfns[k] = spaces.placeIova(adapter, gpu, CALL_PAGES)) : undefined;
    maps[k] = adapter.mapForDevice(gpu, mfns.subarray(off, off + CALL_PAGES), CALL_PAGES, true, dfn);
  }
  const t1 = now();
  check(xen.host.phys.totalPins === expectRefs, `after map: ${xen.host.phys.totalPins} references, expected ${expectRefs}`);
  check(xen.dom0Flushes - flushes === expectFlushes, `after map: ${xen.dom0Flushes - flushes} flushes, expected ${expectFlushes}`);
  for (const k of [0, maps.length >> 1, maps.length - 1]) {
    const m = maps[k]!;
    check(m.count === CALL_PAGES, `mapping ${k} has ${m.count} segments`);
    check(adapter.deviceReaches(gpu, m.segAddr[CALL_PAGES - 1]!, true) === mfns[k * CALL_PAGES + CALL_PAGES - 1], `mapping ${k} does not reach its frame`);
  }
  const t2 = now();
  for (let k = 0; k < maps.length; k++) {
    adapter.unmapForDevice(maps[k]!);
    if (place) spaces.freeIova(gpu, dfns[k]!);
  }
  const t3 = now();
  check(xen.host.phys.totalPins === n, `after unmap: ${xen.host.phys.totalPins} references`);
  check(spaces.placedRanges(gpu).length === 0, "placements left after unmap");
  return { map: Number(t1 - t0) / n, unmap: Number(t3 - t2) / n };
}

export async function runXenBench(options: XenBenchOptions = {}): Promise<XenBenchCase[]> {
  const guestBytes = options.guestBytes ?? 16n << 30n;
  const ramBytes = options.ramBytes ?? 20n << 30n;
  const reps = options.reps ?? 3;
  const out: XenBenchCase[] = [];

  gc();
  {
    const s = build("pvh", guestBytes, ramBytes);
    mapAll(s, 2 * s.n, (2 * s.n) / CALL_PAGES);
    const maps: number[] = [];
    const unmaps: number[] = [];
    for (let r = 0; r < reps; r++) {
      const f = mapAll(s, 2 * s.n, (2 * s.n) / CALL_PAGES);
      maps.push(f.map);
      unmaps.push(f.unmap);
    }
    out.push({
      case: "xen.pviommu.map.4k",
      unit: "ns/page",
      value: round(median(maps)),
      target: 60,
      runs: maps.map(round),
      note: `2024 PV-IOMMU, PVH Dom0, ${size(guestBytes)} of scattered guest frames in mapForDevice calls of ${CALL_PAGES}; unmap ${round(median(unmaps))} ns/page; privcmd pin ${round(s.pinNs)} ns/page (not timed in the value)`,
    });
    s.xen.shutdown();
  }
  await Promise.resolve();

  gc();
  {
    const s = build("pv", guestBytes, ramBytes);
    mapAll(s, s.n, 0);
    const maps: number[] = [];
    const unmaps: number[] = [];
    for (let r = 0; r < reps; r++) {
      const f = mapAll(s, s.n, 0);
      maps.push(f.map);
      unmaps.push(f.unmap);
    }
    check(s.adapter.stats.bounced === 0, `${s.adapter.stats.bounced} pages bounced for a 64-bit device`);
    out.push({
      case: "xen.swiotlb.map-sg.4k",
      unit: "ns/page",
      value: round(median(maps)),
      target: 80,
      runs: maps.map(round),
      note: `swiotlb-xen, PV Dom0, ${size(guestBytes)} of scattered guest frames in mapForDevice calls of ${CALL_PAGES} (map_sg per call, no bounce); unmap ${round(median(unmaps))} ns/page; privcmd pin ${round(s.pinNs)} ns/page (not timed)`,
    });
    s.adapter.dispose();
    s.xen.shutdown();
  }
  return out;
}
