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
 * - Protection is the frame's p2m type, so it goes with the P2M entry: a
 *   decrease_reservation (a balloon-out, by the device model or by the
 *   guest's own balloon driver) removes the entry and the type with it (Xen's
 *   p2m_entry_modify only drops the server's count of ioreq_server entries and
 *   tells no one; a later populate brings plain ram_rw frames back). The
 *   device model learns of the change as the adapter does (the guest's
 *   `p2mChanged`, hypervisors.md 3.2: "a Xen P2M change" reaches the core),
 *   and makes the loss visible the way KVM's page-track makes a memslot
 *   removal visible (track_remove_region): each vGPU that protected a frame
 *   of the range is told `onMemslotRemoved(firstGfn, npages)` once, then
 *   `protectionDropped` names the frames and the vGPUs. A vGPU that protected
 *   none of them is not told; a frame whose entry stayed (grant, foreign,
 *   MMIO) keeps its protection.
 *
 * Invariants: `#domainCount.get(gfn)` = number of attached vGPUs protecting
 * gfn, and a frame of the guest has type ioreq_server iff that count > 0.
 */
import { ERRNO, Observable, type Disposable } from "@vgpu-iommu/core";
import type { Xen } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { P2mType } from "./p2m.js";
import { createIoreqServer, HVMMEM_ioreq_server, HVMMEM_ram_rw, IoreqServer, setMemType, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE, type Ioreq } from "./ioreq-server.js";
import { xenErrnoError } from "./xen-error.js";

/** What a vGPU is told by the tracker (the vendor port's calls of the same names). */
export interface GuestWriteListener {
  /** A guest write to a frame this vGPU protected, after it was emulated (the bytes are in guest memory). */
  onGuestWrite(gpa: bigint, data: Uint8Array): void;
  /** Frames of [firstGfn, firstGfn + npages) this vGPU protected left the P2M: their protection ended. */
  onMemslotRemoved(firstGfn: number, npages: number): void;
}

export interface XenWriteTrackerEvents {
  /** A P2M change took protected frames: `frames` (ascending) lost their protection, and each vGPU in `vgpus` was told. */
  protectionDropped(e: { domid: number; firstGfn: number; npages: number; reason: string; frames: number[]; vgpus: string[] }): void;
}

interface Tracked {
  readonly listener: GuestWriteListener;
  readonly frames: Set<number>;
}

export class XenWriteTracker extends Observable<XenWriteTrackerEvents> {
  readonly server: IoreqServer;
  readonly #byVgpu = new Map<string, Tracked>();
  readonly #domainCount = new Map<number, number>();
  readonly #subscription: Disposable;
  #disposed = false;

  constructor(
    private readonly xen: Xen,
    readonly guest: XenDomain,
  ) {
    super();
    const dm = xen.hardwareDomain!;
    const s = createIoreqServer(xen, dm, guest.domid, (req) => this.#emulate(req));
    if (typeof s === "number") throw xenErrnoError("dmop", s, "create-ioreq-server-failed", { domid: guest.domid });
    let r = s.mapMemType(HVMMEM_ioreq_server, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE);
    if (r === 0) r = s.setState(true);
    if (r !== 0) throw xenErrnoError("dmop", r, "ioreq-server-setup-failed", { domid: guest.domid });
    this.server = s;
    this.#subscription = guest.on("p2mChanged", (e) => this.#p2mChanged(e.firstGfn, e.npages, e.reason));
  }

  /** Frames of the guest currently protected by at least one vGPU. */
  get trackedCount(): number {
    return this.#domainCount.size;
  }

  /** Frames `vgpu` protects. */
  protectedBy(vgpu: string): number {
    return this.#byVgpu.get(vgpu)?.frames.size ?? 0;
  }

  /** Frames of [firstGfn, firstGfn + npages) `vgpu` protects. */
  protectedIn(vgpu: string, firstGfn: number, npages: number): number {
    let n = 0;
    for (const gfn of this.#byVgpu.get(vgpu)?.frames ?? []) if (gfn >= firstGfn && gfn < firstGfn + npages) n++;
    return n;
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

  /** Frames of [firstGfn, firstGfn + npages) changed in the P2M: those no longer of type ioreq_server lost their protection. */
  #p2mChanged(firstGfn: number, npages: number, reason: string): void {
    const p2m = this.guest.p2m!;
    const frames: number[] = [];
    for (const gfn of this.#domainCount.keys()) if (gfn >= firstGfn && gfn < firstGfn + npages && p2m.type(gfn) !== P2mType.ioreq_server) frames.push(gfn);
    if (frames.length === 0) return;
    frames.sort((a, b) => a - b);
    const told: Tracked[] = [];
    const vgpus: string[] = [];
    for (const gfn of frames) this.#domainCount.delete(gfn);
    for (const [name, t] of this.#byVgpu) {
      const before = t.frames.size;
      for (const gfn of frames) t.frames.delete(gfn);
      if (t.frames.size === before) continue;
      told.push(t);
      vgpus.push(name);
    }
    for (const t of told) t.listener.onMemslotRemoved(firstGfn, npages);
    this.emit("protectionDropped", { domid: this.guest.domid, firstGfn, npages, reason, frames, vgpus });
  }

  /** The device model goes: the server stops claiming the type (every frame back to ram_rw). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#subscription.dispose();
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
