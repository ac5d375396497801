/**
 * Write tracking on Xen by an ioreq server (XenGT; xen/arch/x86/hvm/dm.c,
 * ioreq.c): a device model in Dom0 claims the p2m type ioreq_server and
 * protects guest frames by giving them that type; guest writes to them become
 * requests the server must emulate.
 *
 * Model:
 * - `createIoreqServer` (XEN_DMOP_create_ioreq_server) by a privileged domain
 *   for a running HVM target (-EPERM unprivileged, -ESRCH no such domain,
 *   -EINVAL for a PV target); `setState` enables it.
 * - `mapMemType` (XEN_DMOP_map_mem_type_to_ioreq_server): type must be
 *   HVMMEM_ioreq_server and the flags WRITE only (reads cannot be claimed:
 *   -EINVAL); one server per domain (-EBUSY). Unmapping (flags 0) resets
 *   every protected frame to ram_rw.
 * - `setMemType` (XEN_DMOP_set_mem_type): first_pfn + nr within the guest
 *   (-EINVAL); to ioreq_server only from ram_rw and only once a server claims
 *   the type (-EINVAL); back to ram_rw from ram or ioreq_server; a paged frame
 *   starts a populate and answers -EAGAIN; a crashed target -ESRCH.
 * - Only writes are intercepted: a vCPU write to a protected frame becomes an
 *   IOREQ_TYPE_COPY request carrying the data; reads go to memory. The handler
 *   runs (write-protect handling, then emulation); when it returns 0 the
 *   emulated write lands in guest memory and the request is completed
 *   (STATE_IORESP_READY). When it throws or returns an error, the guest is
 *   crashed (SCHEDOP_remote_shutdown, SHUTDOWN_crash) and every later operation
 *   on it fails.
 *
 * Invariant: while enabled and claiming the type, every vCPU write to an
 * ioreq_server frame reaches the handler exactly once, and no read does.
 */
import { ERRNO } from "@vgpu-iommu/core";
import type { Xen } from "./xen.js";
import type { WriteInterceptor, XenDomain } from "./xen-domain.js";
import { P2mType } from "./p2m.js";

export const HVMMEM_ram_rw = 0;
export const HVMMEM_ram_ro = 1;
export const HVMMEM_mmio_dm = 2;
export const HVMMEM_ioreq_server = 4;
export const XEN_DMOP_IOREQ_MEM_ACCESS_READ = 1 << 0;
export const XEN_DMOP_IOREQ_MEM_ACCESS_WRITE = 1 << 1;
export const IOREQ_TYPE_COPY = 1;
export const IOREQ_WRITE = 1;
export const STATE_IORESP_READY = 3;

/** An ioreq as the server receives it (struct ioreq, data inline). */
export interface Ioreq {
  readonly type: typeof IOREQ_TYPE_COPY;
  readonly dir: typeof IOREQ_WRITE;
  readonly addr: bigint;
  readonly size: number;
  readonly data: Uint8Array;
  readonly dataIsPtr: false;
  state: number;
}

/** The device model's handler: 0 when emulated, a negative errno (or a throw) when emulation failed. */
export type IoreqHandler = (req: Ioreq) => number;

export class IoreqServer implements WriteInterceptor {
  enabled = false;
  /** Requests delivered / failed. */
  requests = 0;
  failures = 0;
  #claims = false;

  constructor(
    private readonly xen: Xen,
    readonly id: number,
    readonly target: XenDomain,
    readonly dm: XenDomain,
    private readonly handler: IoreqHandler,
  ) {}

  /** XEN_DMOP_set_ioreq_server_state. */
  setState(enabled: boolean): number {
    if (this.target.state !== "running") return -ERRNO.ESRCH;
    this.enabled = enabled;
    return 0;
  }

  get claimsType(): boolean {
    return this.#claims;
  }

  /** XEN_DMOP_map_mem_type_to_ioreq_server. */
  mapMemType(type: number, flags: number): number {
    this.xen.countHypercall("dm_op");
    const d = this.target;
    if (d.state !== "running") return -ERRNO.ESRCH;
    if (type !== HVMMEM_ioreq_server) return -ERRNO.EINVAL;
    if ((flags & ~XEN_DMOP_IOREQ_MEM_ACCESS_WRITE) !== 0) return -ERRNO.EINVAL;
    if (flags === 0) {
      if (!this.#claims) return 0;
      d.p2m!.table.forEachIn(0, Number.MAX_SAFE_INTEGER, (gfn, _mfn, t) => {
        if (t === P2mType.ioreq_server) d.p2m!.retype(gfn, P2mType.ram_rw);
      });
      d.writeInterceptor = undefined;
      this.#claims = false;
      return 0;
    }
    if (d.writeInterceptor !== undefined && d.writeInterceptor !== this) return -ERRNO.EBUSY;
    d.writeInterceptor = this;
    this.#claims = true;
    return 0;
  }

  interceptWrite(domain: XenDomain, gpa: bigint, data: Uint8Array): boolean {
    if (!this.enabled) return domain.writeGuest(gpa, data) === 0;
    const req: Ioreq = { type: IOREQ_TYPE_COPY, dir: IOREQ_WRITE, addr: gpa, size: data.length, data: data.slice(), dataIsPtr: false, state: 1 };
    this.requests++;
    let r: number;
    try {
      r = this.handler(req);
    } catch {
      r = -ERRNO.EIO;
    }
    if (r !== 0) {
      this.failures++;
      domain.crash(`ioreq server ${this.id}: emulation of a write to ${gpa.toString(16)} failed (${r})`);
      return false;
    }
    domain.writeGuest(gpa, data);
    req.state = STATE_IORESP_READY;
    return true;
  }
}

let nextServerId = 1;

/** XEN_DMOP_create_ioreq_server: the server, or a negative errno. */
export function createIoreqServer(xen: Xen, dm: XenDomain, domid: number, handler: IoreqHandler): IoreqServer | number {
  xen.countHypercall("dm_op");
  if (!dm.isHardwareDomain) return -ERRNO.EPERM;
  const d = xen.domain(domid);
  if (d === undefined || d.state !== "running") return -ERRNO.ESRCH;
  if (d.kind !== "hvm") return -ERRNO.EINVAL;
  return new IoreqServer(xen, nextServerId++, d, dm, handler);
}

/** XEN_DMOP_set_mem_type(domid, first_pfn, nr, mem_type) issued by `dm`. */
export function setMemType(xen: Xen, dm: XenDomain, domid: number, firstPfn: number, nr: number, memType: number): number {
  xen.countHypercall("dm_op");
  if (!dm.isHardwareDomain) return -ERRNO.EPERM;
  const d = xen.domain(domid);
  if (d === undefined || d.state !== "running") return -ERRNO.ESRCH;
  if (d.p2m === undefined) return -ERRNO.EINVAL;
  if (!(Number.isInteger(firstPfn) && Number.isInteger(nr) && firstPfn >= 0 && nr >= 1) || firstPfn + nr > d.maxGfn) return -ERRNO.EINVAL;
  let target: P2mType;
  if (memType === HVMMEM_ram_rw) target = P2mType.ram_rw;
  else if (memType === HVMMEM_ioreq_server) {
    if (d.writeInterceptor === undefined) return -ERRNO.EINVAL;
    target = P2mType.ioreq_server;
  } else return -ERRNO.EINVAL;
  for (let gfn = firstPfn; gfn < firstPfn + nr; gfn++) {
    const t = d.p2m.type(gfn);
    if (t === P2mType.paged_out || t === P2mType.paging_in) {
      d.getPageFromGfn(gfn);
      return -ERRNO.EAGAIN;
    }
    if (t === P2mType.shared) return -ERRNO.EAGAIN;
    const allowed = target === P2mType.ioreq_server ? t === P2mType.ram_rw || t === P2mType.ioreq_server : t === P2mType.ram_rw || t === P2mType.ram_ro || t === P2mType.ioreq_server;
    if (!allowed) return -ERRNO.EINVAL;
  }
  for (let gfn = firstPfn; gfn < firstPfn + nr; gfn++) d.p2m.retype(gfn, target);
  return 0;
}
