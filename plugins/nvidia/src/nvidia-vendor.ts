/**
 * The NVIDIA-like vendor: one physical GPU (a profile), its vGPU types, and
 * the vGPUs created on it, in one of two modes (vendors.md 2.5):
 *
 * - "mdev": mediated vGPUs sharing the parent's requester ID; RM pins guest
 *   frames through the shim (MdevPinning). Several vGPUs per VM.
 * - "vf": SR-IOV VFs with their own requester ID; no vendor pin ever.
 *
 * Both partition the GPU at creation (FB segments, channel range, and a VF in
 * VF mode; gpu-resources.ts) and report pinned frames as dirty for migration.
 * Destroy is refused while the vGPU is open (-EPERM) and when the manager
 * plugin does not exit within 5 s (-EBUSY); otherwise it scrubs the vGPU's FB
 * and frees its resources in reverse order.
 */
import { KernelError, Observable, type VendorCapabilities, type Vgpu, type VgpuServices, type VgpuType, type VgpuVendor } from "@vgpu-iommu/core";
import { NV_ADA_48G, validateProfile, type NvidiaGpuProfile, type NvidiaVgpuTypeSpec } from "./gpu-profile.js";
import { GpuResources, type CreateFaults, type ResourceTrace } from "./gpu-resources.js";
import { channelCountFor, fbSizeFor } from "./partition.js";
import { NvidiaVgpu } from "./nvidia-vgpu.js";
import { ScriptedManager, type VgpuManager } from "./manager.js";
import type { MdevPinningOptions } from "./mdev-pinning.js";

export type NvidiaMode = "mdev" | "vf";

export interface NvidiaVendorOptions {
  readonly mode?: NvidiaMode;
  readonly profile?: NvidiaGpuProfile;
  readonly manager?: VgpuManager;
  readonly faults?: CreateFaults;
  readonly trace?: ResourceTrace;
  readonly pinning?: MdevPinningOptions;
}

export interface NvidiaVendorEvents {
  created(e: { vgpu: string; type: string; gfid: number; chidStart: number; chidCount: number; fbOffset: number; fbSize: number }): void;
  destroyed(e: { vgpu: string; type: string; scrubbedBytes: number }): void;
}

export class NvidiaVendor extends Observable<NvidiaVendorEvents> implements VgpuVendor {
  readonly mode: NvidiaMode;
  readonly profile: NvidiaGpuProfile;
  readonly capabilities: VendorCapabilities;
  readonly resources: GpuResources;
  readonly manager: VgpuManager;
  readonly #types: ReadonlyMap<string, NvidiaVgpuTypeSpec>;
  readonly #vgpus = new Set<NvidiaVgpu>();
  readonly #pinning: MdevPinningOptions | undefined;

  constructor(options: NvidiaVendorOptions = {}) {
    super();
    this.mode = options.mode ?? "mdev";
    this.profile = options.profile ?? NV_ADA_48G;
    validateProfile(this.profile);
    this.capabilities = Object.freeze({ onePerVm: false, migration: true, ownRequesterId: this.mode === "vf" });
    this.resources = new GpuResources(this.profile, this.mode === "vf", options.faults, options.trace);
    this.manager = options.manager ?? new ScriptedManager();
    this.#types = new Map(this.profile.types.map((t) => [t.name, t]));
    this.#pinning = options.pinning;
  }

  /** Live vGPUs. */
  get vgpus(): readonly NvidiaVgpu[] {
    return [...this.#vgpus];
  }

  listTypes(): readonly VgpuType[] {
    return this.profile.types.map((t) => {
      const resources: Record<string, number> = { channels: channelCountFor(this.profile, t), maxInstance: t.maxInstance };
      try {
        resources["fbBytes"] = fbSizeFor(this.profile, t);
        resources["fbSegments"] = resources["fbBytes"] / this.profile.vmmuSegment;
      } catch {
        resources["fbBytes"] = 0;
        resources["fbSegments"] = 0;
      }
      if (this.mode === "vf") resources["vfs"] = 1;
      return { name: t.name, description: `${t.fbLength >> 20} MiB FB, ${t.heads} heads, up to ${t.maxResolution}, ${t.maxInstance} per GPU`, resources };
    });
  }

  availableInstances(type: string): number {
    return this.resources.availableInstances(this.#spec(type));
  }

  create(type: string, name: string, services: VgpuServices): Vgpu {
    const allocation = this.resources.allocate(this.#spec(type));
    const vgpu = new NvidiaVgpu({ name, allocation, services, manager: this.manager, vfMode: this.mode === "vf", ...(this.#pinning === undefined ? {} : { pinning: this.#pinning }) });
    this.#vgpus.add(vgpu);
    const { gfid, chidStart, chidCount, fbOffset, fbSize } = allocation;
    this.emit("created", { vgpu: name, type, gfid, chidStart, chidCount, fbOffset, fbSize });
    return vgpu;
  }

  destroy(vgpu: Vgpu): void {
    const mine = vgpu instanceof NvidiaVgpu && this.#vgpus.has(vgpu) ? vgpu : undefined;
    if (mine === undefined) throw new KernelError("EINVAL", "unknown-vgpu", { vgpu: vgpu.name });
    if (mine.isOpen) throw new KernelError("EPERM", "vgpu-open", { vgpu: vgpu.name });
    if (!this.manager.exited(vgpu.name)) throw new KernelError("EBUSY", "plugin-exit-timeout", { vgpu: vgpu.name });
    this.#vgpus.delete(mine);
    const scrubbedBytes = this.resources.release(mine.allocation);
    this.emit("destroyed", { vgpu: vgpu.name, type: vgpu.type, scrubbedBytes });
  }

  #spec(type: string): NvidiaVgpuTypeSpec {
    const spec = this.#types.get(type);
    if (spec === undefined) throw new KernelError("EINVAL", "unknown-vgpu-type", { type, known: [...this.#types.keys()] });
    return spec;
  }
}
