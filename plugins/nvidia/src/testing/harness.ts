/**
 * A few lines to an open NVIDIA-like vGPU on fake services, with its events
 * recorded, for this package's tests.
 */
import { FakeGuest, FakeVgpuServices, type FakeGuestOptions } from "@vgpu-iommu/core/testing";
import { NvidiaVendor, type NvidiaVendorOptions } from "../nvidia-vendor.js";
import type { NvidiaVgpu } from "../nvidia-vgpu.js";
import type { NvidiaVgpuEvents } from "../events.js";
import type { ScriptedManager } from "../manager.js";

export interface Recorded {
  readonly warned: Parameters<NvidiaVgpuEvents["warned"]>[0][];
  readonly revoked: Parameters<NvidiaVgpuEvents["mappingRevoked"]>[0][];
  readonly swept: Parameters<NvidiaVgpuEvents["swept"]>[0][];
  readonly dmaUnmapped: Parameters<NvidiaVgpuEvents["dmaUnmapped"]>[0][];
}

export interface Bench {
  readonly guest: FakeGuest;
  readonly vendor: NvidiaVendor;
  readonly manager: ScriptedManager;
  readonly vgpus: NvidiaVgpu[];
  readonly services: FakeVgpuServices[];
  readonly events: Recorded[];
  /** Creates and opens one more vGPU in the same VM. */
  add(type?: string, services?: FakeVgpuServices): Promise<NvidiaVgpu>;
  /** Closes and destroys every vGPU. */
  teardown(): Promise<void>;
}

export async function openBench(options: { guest?: Partial<FakeGuestOptions>; vendor?: NvidiaVendorOptions; type?: string; count?: number } = {}): Promise<Bench> {
  const guest = new FakeGuest({ guestPages: 1 << 16, ...options.guest });
  const vendor = new NvidiaVendor(options.vendor);
  const bench: Bench = {
    guest,
    vendor,
    manager: vendor.manager as ScriptedManager,
    vgpus: [],
    services: [],
    events: [],
    async add(type = options.type ?? "NV-2Q", services?: FakeVgpuServices) {
      const name = `vgpu${bench.vgpus.length}`;
      const s = services ?? guest.servicesFor(name);
      const vgpu = vendor.create(type, name, s) as NvidiaVgpu;
      const rec: Recorded = { warned: [], revoked: [], swept: [], dmaUnmapped: [] };
      vgpu.on("warned", (e) => rec.warned.push(e));
      vgpu.on("mappingRevoked", (e) => rec.revoked.push(e));
      vgpu.on("swept", (e) => rec.swept.push(e));
      vgpu.on("dmaUnmapped", (e) => rec.dmaUnmapped.push(e));
      await vgpu.open();
      bench.vgpus.push(vgpu);
      bench.services.push(s);
      bench.events.push(rec);
      return vgpu;
    },
    async teardown() {
      for (const v of bench.vgpus) {
        await v.close();
        vendor.destroy(v);
      }
      bench.vgpus.length = 0;
    },
  };
  for (let i = 0; i < (options.count ?? 1); i++) await bench.add();
  return bench;
}

/** Frames [first, first + n) in a fixed scrambled order (a stride coprime with n). */
export function scrambled(first: number, n: number, stride = 97): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = first + ((i * stride) % n);
  return out;
}

/** The frames whose bit is set in a dirty report. */
export function setBits(bitmap: Uint8Array, first: number, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) if ((bitmap[i >> 3]! >> (i & 7)) & 1) out.push(first + i);
  return out;
}
