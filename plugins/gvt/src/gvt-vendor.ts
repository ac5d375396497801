/**
 * The GVT-g vendor: one physical GPU whose graphics memory and fence registers
 * are partitioned among at most 8 vGPUs (vendors.md 1.3, vgpu.c, aperture_gm.c).
 *
 * Resources. The GM space is the mappable aperture ("low GM") followed by the
 * hidden GM ("high GM"); the host keeps the first `hostApertureBytes` and
 * `hostHiddenBytes` of each and `hostFences` fences, the rest is carved per
 * vGPU. A type (GVTg_V5_N) takes fixed amounts of each; `availableInstances`
 * is the minimum over the three pools of what is left divided by what the
 * type needs, also bounded by the free vGPU ids. The defaults give each
 * GVTg_V5_N type exactly N instances on an idle GPU (i915 keeps 4 fences for
 * the host; the default here keeps none so that V5_8 yields 8).
 *
 * Lifetime. `create` reserves (all or nothing; -ENOSPC), `destroy` frees;
 * destroying an open vGPU is refused with a WARN and -EBUSY, as mdev remove
 * of an attached kvmgt vGPU is.
 */
import { KernelError, Observable, type VendorCapabilities, type Vgpu, type VgpuServices, type VgpuType, type VgpuVendor } from "@vgpu-iommu/core";
import { GmSpace, type GmSlice } from "./gm-space.js";
import { GvtVgpu } from "./gvt-vgpu.js";
import { GM_BYTES, PAGE_SIZE } from "./gvt-params.js";

const MiB = 1024 * 1024;

export interface GvtTypeSpec {
  readonly name: string;
  readonly lowGmBytes: number;
  readonly highGmBytes: number;
  readonly fences: number;
  /** Scheduling weight, 1..16. */
  readonly weight: number;
  readonly edid: string;
}

/** vendors.md 1.3: GVTg_Vx_N, N the instances one GPU is meant to hold. */
export const GVT_TYPES: readonly GvtTypeSpec[] = [
  { name: "GVTg_V5_8", lowGmBytes: 64 * MiB, highGmBytes: 384 * MiB, fences: 4, weight: 2, edid: "1024x768" },
  { name: "GVTg_V5_4", lowGmBytes: 128 * MiB, highGmBytes: 512 * MiB, fences: 4, weight: 4, edid: "1920x1200" },
  { name: "GVTg_V5_2", lowGmBytes: 256 * MiB, highGmBytes: 1024 * MiB, fences: 4, weight: 8, edid: "1920x1200" },
  { name: "GVTg_V5_1", lowGmBytes: 512 * MiB, highGmBytes: 2048 * MiB, fences: 4, weight: 16, edid: "1920x1200" },
];

export interface GvtGpuOptions {
  readonly name?: string;
  /** Low GM (the mappable aperture), bytes. The hidden GM is the rest of the 4 GiB GM space. */
  readonly apertureBytes?: number;
  readonly fences?: number;
  readonly hostApertureBytes?: number;
  readonly hostHiddenBytes?: number;
  readonly hostFences?: number;
  /** GVT_MAX_VGPU. */
  readonly maxVgpus?: number;
  /** The GPU has 2M GTT pages (HAS_PAGE_SIZES 2M). */
  readonly huge2M?: boolean;
  /** 64K pages (IPS) honoured. */
  readonly ips64K?: boolean;
  /** Reproduce the upstream PPGTT leaks (see ppgtt.ts). */
  readonly upstreamQuirks?: boolean;
}

export interface GvtVendorEvents {
  vgpuCreated(e: { vgpu: string; type: string; id: number }): void;
  vgpuDestroyed(e: { vgpu: string; id: number }): void;
  warned(e: { site: string; message: string; vgpu: string }): void;
}

interface Reservation {
  readonly aperture: GmSlice;
  readonly hidden: GmSlice;
  readonly fences: number;
}

export class GvtVendor extends Observable<GvtVendorEvents> implements VgpuVendor {
  readonly capabilities: VendorCapabilities = { onePerVm: true, migration: false, ownRequesterId: false };
  readonly options: Required<GvtGpuOptions>;
  readonly aperture: GmSpace;
  readonly hidden: GmSpace;
  /** WARNs raised (destroy of an open vGPU). */
  warnings = 0;
  #fencesFree: number;
  readonly #vgpus = new Map<GvtVgpu, Reservation>();

  constructor(options: GvtGpuOptions = {}) {
    super();
    const o: Required<GvtGpuOptions> = {
      name: options.name ?? "gvt0",
      apertureBytes: options.apertureBytes ?? 640 * MiB,
      fences: options.fences ?? 32,
      hostApertureBytes: options.hostApertureBytes ?? 128 * MiB,
      hostHiddenBytes: options.hostHiddenBytes ?? 384 * MiB,
      hostFences: options.hostFences ?? 0,
      maxVgpus: options.maxVgpus ?? 8,
      huge2M: options.huge2M ?? true,
      ips64K: options.ips64K ?? true,
      upstreamQuirks: options.upstreamQuirks ?? false,
    };
    if (o.apertureBytes % PAGE_SIZE !== 0 || o.apertureBytes <= o.hostApertureBytes || o.apertureBytes >= GM_BYTES) throw new RangeError("GVT: the aperture must be page aligned, larger than the host's share and inside the 4 GiB GM space");
    this.options = o;
    const apPages = o.apertureBytes / PAGE_SIZE;
    const hostAp = o.hostApertureBytes / PAGE_SIZE;
    const hostHi = o.hostHiddenBytes / PAGE_SIZE;
    this.aperture = new GmSpace("low-gm", hostAp, apPages - hostAp);
    this.hidden = new GmSpace("high-gm", apPages + hostHi, GM_BYTES / PAGE_SIZE - apPages - hostHi);
    this.#fencesFree = o.fences - o.hostFences;
  }

  listTypes(): readonly VgpuType[] {
    return GVT_TYPES.map((t) => ({
      name: t.name,
      description: `low_gm_size: ${t.lowGmBytes / MiB}MB, high_gm_size: ${t.highGmBytes / MiB}MB, fence: ${t.fences}, resolution: ${t.edid}, weight: ${t.weight}`,
      resources: { lowGmBytes: t.lowGmBytes, highGmBytes: t.highGmBytes, fences: t.fences, weight: t.weight },
    }));
  }

  availableInstances(type: string): number {
    const t = typeOf(type);
    const byLow = Math.floor(this.aperture.freePages / (t.lowGmBytes / PAGE_SIZE));
    const byHigh = Math.floor(this.hidden.freePages / (t.highGmBytes / PAGE_SIZE));
    const byFence = Math.floor(this.#fencesFree / t.fences);
    return Math.max(0, Math.min(byLow, byHigh, byFence, this.options.maxVgpus - this.#vgpus.size));
  }

  get vgpuCount(): number {
    return this.#vgpus.size;
  }

  create(type: string, name: string, services: VgpuServices): GvtVgpu {
    const t = typeOf(type);
    for (const v of this.#vgpus.keys()) if (v.name === name) throw new KernelError("EEXIST", "gvt-vgpu-name-taken", { vgpu: name });
    const id = this.#freeId();
    if (id < 0) throw new KernelError("ENOSPC", "gvt-too-many-vgpus", { max: this.options.maxVgpus });
    if (this.#fencesFree < t.fences) throw new KernelError("ENOSPC", "gvt-no-fences", { type, free: this.#fencesFree });
    const aperture = this.aperture.allocate(t.lowGmBytes / PAGE_SIZE);
    if (aperture === undefined) throw new KernelError("ENOSPC", "gvt-no-low-gm", { type });
    const hidden = this.hidden.allocate(t.highGmBytes / PAGE_SIZE);
    if (hidden === undefined) {
      this.aperture.free(aperture);
      throw new KernelError("ENOSPC", "gvt-no-high-gm", { type });
    }
    this.#fencesFree -= t.fences;
    const o = this.options;
    const vgpu = new GvtVgpu({ id, name, type: t.name, aperture, hidden, fences: t.fences, ppgtt: { huge2M: o.huge2M, ips64K: o.ips64K, upstreamQuirks: o.upstreamQuirks } }, services);
    this.#vgpus.set(vgpu, { aperture, hidden, fences: t.fences });
    this.emit("vgpuCreated", { vgpu: name, type: t.name, id });
    return vgpu;
  }

  destroy(vgpu: Vgpu): void {
    const g = vgpu as GvtVgpu;
    const r = this.#vgpus.get(g);
    if (r === undefined) throw new KernelError("EINVAL", "gvt-vgpu-unknown", { vgpu: vgpu.name });
    if (g.isOpen) {
      this.warnings++;
      this.emit("warned", { site: "intel_vgpu_remove", message: "vGPU is still attached", vgpu: g.name });
      throw new KernelError("EBUSY", "gvt-vgpu-attached", { vgpu: g.name });
    }
    this.aperture.free(r.aperture);
    this.hidden.free(r.hidden);
    this.#fencesFree += r.fences;
    this.#vgpus.delete(g);
    this.emit("vgpuDestroyed", { vgpu: g.name, id: g.id });
  }

  /** The vGPUs of this GPU. */
  vgpus(): GvtVgpu[] {
    return [...this.#vgpus.keys()];
  }

  /** IDs 1..maxVgpus (0 is the idle vGPU). */
  #freeId(): number {
    const used = new Set([...this.#vgpus.keys()].map((v) => v.id));
    for (let id = 1; id <= this.options.maxVgpus; id++) if (!used.has(id)) return id;
    return -1;
  }
}

function typeOf(type: string): GvtTypeSpec {
  const t = GVT_TYPES.find((x) => x.name === type);
  if (t === undefined) throw new KernelError("EINVAL", "gvt-unknown-type", { type });
  return t;
}
