/**
 * The platforms the cross-hypervisor suites run on, as factories: KVM (the
 * host DMA API on the parent GPU, dma-iommu unless the suite says otherwise)
 * and Xen in its three stack configurations (pv-identity, pv-xenserver,
 * pvh-2024). A suite written against `PlatformStack` runs unchanged on each;
 * where a number differs by design it asserts each platform's value with
 * `per(p, {...})`.
 *
 * Counters read the same way on both:
 * - pinnedFrames: guest frames held for vGPUs: GUP pins on KVM (type1), frames
 *   Dom0 holds through privcmd on Xen (the guests' pin tables). On pvh-2024
 *   `host.phys.totalPins` is larger while mappings live: the PV-IOMMU context
 *   takes its own reference on every frame it maps.
 * - parentMappings: DMA mappings live on the parent GPU.
 * - lockedVm: the VMM's locked_vm; always 0 on Xen (privcmd is not charged).
 * - trackedFrames: write-protected frames of a VM (KVM page-track, Xen ioreq
 *   server).
 */
import { createKvmStack, type KvmStack, type KvmStackOptions, type KvmVm } from "@vgpu-iommu/adapter-kvm";
import { createXenStack, XEN_STACK_CONFIGS, type XenPlatformVm, type XenStack, type XenStackConfig, type XenStackOptions } from "@vgpu-iommu/adapter-xen";
import type { Host, HostOptions, PlatformVm, VgpuPlatform } from "@vgpu-iommu/core";

export type PlatformId = "kvm" | XenStackConfig;
export const PLATFORM_IDS: readonly PlatformId[] = ["kvm", ...XEN_STACK_CONFIGS];

export interface PlatformStackOptions {
  readonly host?: HostOptions;
  /** Options of the KVM stack; ignored on Xen. */
  readonly kvm?: KvmStackOptions;
  /** Options of the Xen stack (besides its config); ignored on KVM. */
  readonly xen?: Omit<XenStackOptions, "config" | "host">;
}

export interface PlatformStack {
  readonly id: PlatformId;
  readonly host: Host;
  readonly platform: VgpuPlatform;
  /** Set on KVM. */
  readonly kvm?: KvmStack;
  /** Set on Xen. */
  readonly xen?: XenStack;
  pinnedFrames(): number;
  parentMappings(): number;
  trackedFrames(vm: PlatformVm): number;
  /** Pins the platform dropped itself when a VM shut down with them still held (Xen's device-model exit; 0 on KVM). */
  sweptAtShutdown(): number;
  /** The platform's own consistency checks: type1's invariants on KVM, the pin tables' on Xen. */
  assertInvariants(): void;
  /**
   * The device address of guest frame `gfn` of `vm` when it is the `k`-th single-page mapping made on a
   * fresh parent (k = 0, 1, ...), in the platform's address model: dma-iommu allocates top-down below
   * 4 GiB (KVM); XenGT's identity is the MFN; the XenServer PV-IOMMU puts it at 248 GiB + MFN; the 2024
   * PV-IOMMU allocates DFNs top-down below 2^39.
   */
  deviceAddress(vm: PlatformVm, gfn: number, k: number): bigint;
}

export interface PlatformFactory {
  readonly id: PlatformId;
  readonly hypervisor: "kvm" | "xen";
  /** For test titles: "KVM", "Xen pv-identity", ... */
  readonly label: string;
  create(options?: PlatformStackOptions): PlatformStack;
}

/** Small Dom0 and swiotlb pool: the suites' hosts have 1 GiB. */
const XEN_TEST_DEFAULTS = { dom0MemoryBytes: 64n << 20n, swiotlbBytes: 4 << 20 } as const;

export const KVM: PlatformFactory = {
  id: "kvm",
  hypervisor: "kvm",
  label: "KVM",
  create(options = {}) {
    const kvm = createKvmStack({ ...(options.host === undefined ? {} : { host: options.host }), ...options.kvm });
    return {
      id: "kvm",
      host: kvm.host,
      platform: kvm.platform,
      kvm,
      pinnedFrames: () => kvm.host.phys.totalPins,
      parentMappings: () => kvm.parent.liveMappings,
      trackedFrames: (vm) => (vm as unknown as { vm: KvmVm }).vm.trackedCount,
      sweptAtShutdown: () => 0,
      assertInvariants: () => kvm.host.assertInvariants(),
      deviceAddress: (_vm, _gfn, k) => 0xfffff000n - BigInt(k) * 4096n,
    };
  },
};

function xenFactory(config: XenStackConfig): PlatformFactory {
  return {
    id: config,
    hypervisor: "xen",
    label: `Xen ${config}`,
    create(options = {}) {
      const xen = createXenStack({ ...XEN_TEST_DEFAULTS, ...options.xen, config, ...(options.host === undefined ? {} : { host: options.host }) });
      return {
        id: config,
        host: xen.host,
        platform: xen.platform,
        xen,
        pinnedFrames: () => xen.xen.domains.reduce((n, d) => n + (xen.adapter.pinTable(d.domid)?.pinnedFrames ?? 0), 0),
        parentMappings: () => xen.liveMappings(),
        trackedFrames: (vm) => (vm as XenPlatformVm).tracker.trackedCount,
        sweptAtShutdown: () => xen.platform.stats.pinsSweptAtShutdown,
        assertInvariants: () => assertPinTables(xen),
        deviceAddress: (vm, gfn, k) => {
          const mfn = BigInt((vm as XenPlatformVm).guest.p2m!.mfn(gfn));
          if (config === "pv-identity") return mfn << 12n;
          if (config === "pv-xenserver") return (248n << 30n) + (mfn << 12n);
          return (1n << 39n) - 4096n * BigInt(k + 1);
        },
      };
    },
  };
}

/** Every guest's pin table: counts sum to `pins`, `pinnedFrames` frames are held, each on a referenced MFN. */
function assertPinTables(stack: XenStack): void {
  const refs = stack.host.phys.pins;
  for (const d of stack.xen.domains) {
    const t = stack.adapter.pinTable(d.domid);
    if (t === undefined) continue;
    let frames = 0;
    let pins = 0;
    for (let gfn = 0; gfn < t.count.length; gfn++) {
      const c = t.count[gfn]!;
      if (c === 0) continue;
      frames++;
      pins += c;
      if (refs[t.mfn[gfn]!]! < 1) throw new Error(`pin table of ${d.name}: gfn ${gfn} is pinned but mfn ${t.mfn[gfn]} holds no reference`);
    }
    if (frames !== t.pinnedFrames || pins !== t.pins) throw new Error(`pin table of ${d.name}: ${frames} frames / ${pins} pins counted, table says ${t.pinnedFrames} / ${t.pins}`);
  }
}

export const XEN_PLATFORMS: readonly PlatformFactory[] = XEN_STACK_CONFIGS.map(xenFactory);
export const PLATFORMS: readonly PlatformFactory[] = [KVM, ...XEN_PLATFORMS];

/** The value for this platform; `xen` stands for every Xen configuration not listed. */
export function per<T>(p: { readonly id: PlatformId }, values: { readonly kvm: T } & ({ readonly xen: T } | Readonly<Record<XenStackConfig, T>>) & Partial<Record<XenStackConfig, T>>): T {
  const own = (values as Partial<Record<PlatformId, T>>)[p.id];
  if (own !== undefined || p.id in values) return own as T;
  return (values as { readonly xen: T }).xen;
}
