/**
 * Write tracking of one guest for its vGPUs, on the device model's ioreq
 * server: what KVM page-track and kvmgt's per-vGPU `ptable` are on KVM.
 *
 * Model:
 * - One ioreq server per guest, created by Dom0's device model when the VM is
 *   built, claiming HVMMEM_ioreq_server for writes and enabled.
 * - Protection is per vGPU and idempotent (a frame protected twice by one
 *   vGPU is one protection); the frame's p2m type is ioreq_server while at
 *   least one vGPU protects it (XEN_DMOP_set_mem_type on the first protection,
 *   back to ram_rw on the last). protect/unprotect answer 0, -ESRCH for a vGPU
 *   that is not attached, or set_mem_type's errno (-EINVAL outside guest RAM,
 *   -EAGAIN for a paged frame, -ESRCH for a crashed guest).
 * - A vCPU write to a protected frame is a request the server emulates: the
 *   bytes are written to guest memory, then every vGPU protecting the frame
 *   gets them in `onGuestWrite`, so a vGPU sees the new contents as it does on
 *   KVM. A vGPU that throws fails the emulation: the ioreq server crashes the
 *   guest.
 * - A balloon-out removes the frames from the P2M and with them their type:
 *   their protection is forgotten, without telling the vGPUs (Xen has no
 *   memslot to remove; a later balloon-in brings plain ram_rw frames back).
 *
 * Invariants: `#domainCount.get(gfn)` = number of attached vGPUs protecting
 * gfn, and a frame of the guest has type ioreq_server iff that count > 0.
 */
import { ERRNO } from "@vgpu-iommu/core";
import type { Xen } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { P2mType } from "./p2m.js";
import { createIoreqServer, HVMMEM_ioreq_server, HVMMEM_ram_rw, IoreqServer, setMemType, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE, type Ioreq } from "./ioreq-server.js";
import { xenErrnoError } from "./xen-error.js";

/** What a vGPU is told by the tracker. */
export interface GuestWriteListener {
  /** A guest write to a frame this vGPU protected, after it was emulated (the bytes are in guest memory). */
  onGuestWrite(gpa: bigint, data: Uint8Array): void;
}

interface Tracked {
  readonly listener: GuestWriteListener;
  readonly frames: Set<number>;
}

export class XenWriteTracker {
  readonly server: IoreqServer;
  readonly #byVgpu = new Map<string, Tracked>();
  readonly #domainCount = new Map<number, number>();
  #disposed = false;

  constructor(
    private readonly xen: Xen,
    readonly guest: XenDomain,
  ) {
    const dm = xen.hardwareDomain!;
    const s = createIoreqServer(xen, dm, guest.domid, (req) => this.#emulate(req));
    if (typeof s === "number") throw xenErrnoError("dmop", s, "create-ioreq-server-failed", { domid: guest.domid });
    let r = s.mapMemType(HVMMEM_ioreq_server, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE);
    if (r === 0) r = s.setState(true);
    if (r !== 0) throw xenErrnoError("dmop", r, "ioreq-server-setup-failed", { domid: guest.domid });
    this.server = s;
  }

  /** Frames of the guest currently protected by at least one vGPU. */
  get trackedCount(): number {
    return this.#domainCount.size;
  }

  /** Frames `vgpu` protects. */
  protectedBy(vgpu: string): number {
    return this.#byVgpu.get(vgpu)?.frames.size ?? 0;
  }

  attach(vgpu: string, listener: GuestWriteListener): void {
    this.#byVgpu.set(vgpu, { listener, frames: new Set() });
  }

  /** Ends the vGPU's tracking: every frame it protects is unprotected. */
  detach(vgpu: string): void {
    const t = this.#byVgpu.get(vgpu);
    if (t === undefined) return;
    for (const gfn of [...t.frames]) this.unprotect(vgpu, gfn);
    this.#byVgpu.delete(vgpu);
  }

  protect(vgpu: string, gfn: number): number {
    const t = this.#byVgpu.get(vgpu);
    if (t === undefined) return -ERRNO.ESRCH;
    if (t.frames.has(gfn)) return 0;
    const n = this.#domainCount.get(gfn) ?? 0;
    if (n === 0) {
      const r = setMemType(this.xen, this.xen.hardwareDomain!, this.guest.domid, gfn, 1, HVMMEM_ioreq_server);
      if (r !== 0) return r;
    }
    this.#domainCount.set(gfn, n + 1);
    t.frames.add(gfn);
    return 0;
  }

  unprotect(vgpu: string, gfn: number): number {
    const t = this.#byVgpu.get(vgpu);
    if (t === undefined) return -ERRNO.ESRCH;
    if (!t.frames.delete(gfn)) return 0;
    const n = this.#domainCount.get(gfn)!;
    if (n > 1) {
      this.#domainCount.set(gfn, n - 1);
      return 0;
    }
    this.#domainCount.delete(gfn);
    if (this.guest.p2m!.type(gfn) !== P2mType.ioreq_server) return 0;
    return setMemType(this.xen, this.xen.hardwareDomain!, this.guest.domid, gfn, 1, HVMMEM_ram_rw);
  }

  /** The frames of [firstGfn, firstGfn + npages) left the P2M: their protection is gone. */
  forgetRange(firstGfn: number, npages: number): void {
    for (const gfn of [...this.#domainCount.keys()]) {
      if (gfn < firstGfn || gfn >= firstGfn + npages) continue;
      this.#domainCount.delete(gfn);
      for (const t of this.#byVgpu.values()) t.frames.delete(gfn);
    }
  }

  /** The device model goes: the server stops claiming the type (every frame back to ram_rw). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.guest.state === "running") {
      this.server.mapMemType(HVMMEM_ioreq_server, 0);
      this.server.setState(false);
    }
    this.#byVgpu.clear();
    this.#domainCount.clear();
  }

  /** The server's handler: the write lands, then each protecting vGPU is told; a throw fails the emulation. */
  #emulate(req: Ioreq): number {
    const r = this.guest.writeGuest(req.addr, req.data);
    if (r !== 0) return r;
    const gfn = Number(req.addr >> 12n);
    for (const t of [...this.#byVgpu.values()]) if (t.frames.has(gfn)) t.listener.onGuestWrite(req.addr, req.data);
    return 0;
  }
}
