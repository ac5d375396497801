/**
 * The kit's view of a vendor: a VgpuVendor that forwards to the real one but
 * gives each vGPU a recording proxy of its services (services-ledger.ts) and
 * hands the platform a thin wrapper of the vGPU, so the kit also sees each
 * dmaUnmap and checks its postcondition the moment it returns (vendors.md
 * 4.1: "on return, no page in [iova, iova + length) may remain pinned").
 *
 * The platform only ever holds wrappers; `exercise` and the address hooks get
 * the vendor's own vGPU object.
 */
import { ForwardingVendor, ForwardingVgpu, type Vgpu, type VgpuServices, type VgpuVendor } from "@vgpu-iommu/core";
import { ServicesLedger } from "./services-ledger.js";

export interface Subject {
  readonly name: string;
  /** What the platform holds. */
  readonly wrapper: RecordedVgpu;
  /** The vendor's own vGPU. */
  readonly real: Vgpu;
  readonly ledger: ServicesLedger;
}

export class RecordedVgpu extends ForwardingVgpu {
  /** dmaUnmap calls, as [first gfn, npages]. */
  readonly dmaUnmaps: [number, number][] = [];

  constructor(
    inner: Vgpu,
    readonly ledger: ServicesLedger,
  ) {
    super(inner);
  }

  override async dmaUnmap(iova: bigint, length: bigint): Promise<void> {
    const first = Number(iova >> 12n);
    const npages = Number((length + 0xfffn) >> 12n);
    this.dmaUnmaps.push([first, npages]);
    await this.inner.dmaUnmap(iova, length);
    const left = this.ledger.pinsIn(first, first + npages);
    if (left > 0) this.ledger.violations.push(`dmaUnmap(0x${iova.toString(16)}, 0x${length.toString(16)}) returned with ${left} frame(s) of the range still pinned`);
  }
}

export class RecordingVendor extends ForwardingVendor {
  readonly subjects = new Map<string, Subject>();

  constructor(inner: VgpuVendor) {
    super(inner);
  }

  create(type: string, name: string, services: VgpuServices): Vgpu {
    const ledger = new ServicesLedger(name, services);
    const real = this.inner.create(type, name, ledger.services);
    const wrapper = new RecordedVgpu(real, ledger);
    this.subjects.set(name, { name, wrapper, real, ledger });
    return wrapper;
  }

  subject(vgpu: Vgpu): Subject {
    const s = this.subjects.get(vgpu.name);
    if (s === undefined) throw new Error(`conformance: ${vgpu.name} was not created through the kit`);
    return s;
  }
}
