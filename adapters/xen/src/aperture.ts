/**
 * Aperture passthrough: MMIO frames of the physical GPU mapped straight into a
 * guest's P2M (XEN_DOMCTL_iomem_permission, XEN_DOMCTL_memory_mapping), as
 * XenGT's map_gfn_to_mfn does for the part of the aperture a vGPU owns.
 *
 * Model:
 * - `iomemPermission` grants (or revokes) a domain access to a machine-frame
 *   range; only the hardware domain may call it (-EPERM), for an existing
 *   domain (-ESRCH).
 * - `memoryMapping` adds or removes p2m mmio_direct entries: more than
 *   `memoryMappingMaxFrames` frames (64) per call is -E2BIG ("must break
 *   hypercall up"), a range the domain has no iomem permission for -EPERM, a
 *   wrapping range -EINVAL, a GFN already in use -EBUSY. Removal needs no
 *   permission (it cannot grant access).
 * - `xengtMapGfnToMfn` is XenGT's caller: permission first (revoked last when
 *   unmapping), then chunks of 64
 *   frames; on -E2BIG the chunk is halved and the same call retried; on any
 *   other error everything it mapped is removed and the error returned.
 *
 * Invariant: after xengtMapGfnToMfn fails, the guest P2M holds no entry it
 * added; after it succeeds, GFN gfn + i maps MFN mfn + i as mmio_direct.
 */
import { ERRNO } from "@vgpu-iommu/core";
import type { Xen } from "./xen.js";
import type { XenDomain } from "./xen-domain.js";
import { P2mType } from "./p2m.js";

export const XENGT_MAP_CHUNK = 64;

const permissions = new WeakMap<XenDomain, { first: number; end: number }[]>();

function permitted(d: XenDomain, first: number, n: number): boolean {
  return (permissions.get(d) ?? []).some((r) => first >= r.first && first + n <= r.end);
}

/** XEN_DOMCTL_iomem_permission. */
export function iomemPermission(xen: Xen, caller: XenDomain, domid: number, firstMfn: number, nr: number, allow: boolean): number {
  xen.countHypercall("domctl");
  if (!caller.isHardwareDomain) return -ERRNO.EPERM;
  const d = xen.domain(domid);
  if (d === undefined) return -ERRNO.ESRCH;
  if (!(Number.isInteger(firstMfn) && Number.isInteger(nr) && firstMfn >= 0 && nr >= 1)) return -ERRNO.EINVAL;
  const list = permissions.get(d) ?? [];
  if (allow) list.push({ first: firstMfn, end: firstMfn + nr });
  else permissions.set(d, (list.filter((r) => r.end <= firstMfn || r.first >= firstMfn + nr)));
  if (allow) permissions.set(d, list);
  return 0;
}

/** XEN_DOMCTL_memory_mapping(domid, first_gfn, first_mfn, nr_mfns, add). */
export function memoryMapping(xen: Xen, caller: XenDomain, domid: number, firstGfn: number, firstMfn: number, nr: number, add: boolean): number {
  xen.countHypercall("domctl");
  if (!caller.isHardwareDomain) return -ERRNO.EPERM;
  const d = xen.domain(domid);
  if (d === undefined) return -ERRNO.ESRCH;
  if (!(Number.isInteger(firstGfn) && Number.isInteger(firstMfn) && Number.isInteger(nr) && firstGfn >= 0 && firstMfn >= 0 && nr >= 1)) return -ERRNO.EINVAL;
  if (firstMfn + nr > 2 ** 40 || firstGfn + nr > 2 ** 40) return -ERRNO.EINVAL;
  if (nr > xen.options.memoryMappingMaxFrames) return -ERRNO.E2BIG;
  if (d.p2m === undefined || (add && !permitted(d, firstMfn, nr))) return -ERRNO.EPERM;
  const p2m = d.p2m;
  if (add) {
    for (let i = 0; i < nr; i++) if (p2m.type(firstGfn + i) !== P2mType.invalid && !(p2m.type(firstGfn + i) === P2mType.mmio_direct && p2m.mfn(firstGfn + i) === firstMfn + i)) return -ERRNO.EBUSY;
    for (let i = 0; i < nr; i++) p2m.set(firstGfn + i, firstMfn + i, P2mType.mmio_direct);
  } else {
    for (let i = 0; i < nr; i++) if (p2m.type(firstGfn + i) === P2mType.mmio_direct && p2m.mfn(firstGfn + i) === firstMfn + i) p2m.clear(firstGfn + i);
  }
  return 0;
}

/** XenGT map_gfn_to_mfn (map = true) or its removal: 0 or a negative errno; chunk halving on -E2BIG; calls made are returned in `calls`. */
export function xengtMapGfnToMfn(xen: Xen, dm: XenDomain, domid: number, gfn: number, mfn: number, nr: number, map: boolean, stats: { calls: number; halvings: number } = { calls: 0, halvings: 0 }): number {
  if (map) {
    const rc = iomemPermission(xen, dm, domid, mfn, nr, true);
    stats.calls++;
    if (rc !== 0) return rc;
  }
  let chunk = XENGT_MAP_CHUNK;
  let done = 0;
  while (done < nr) {
    const n = Math.min(chunk, nr - done);
    const rc = memoryMapping(xen, dm, domid, gfn + done, mfn + done, n, map);
    stats.calls++;
    if (rc === -ERRNO.E2BIG && chunk > 1) {
      chunk >>= 1;
      stats.halvings++;
      continue;
    }
    if (rc !== 0) {
      if (map && done > 0) {
        for (let undone = 0; undone < done; undone += chunk) memoryMapping(xen, dm, domid, gfn + undone, mfn + undone, Math.min(chunk, done - undone), false);
      }
      return rc;
    }
    done += n;
  }
  if (!map) {
    stats.calls++;
    return iomemPermission(xen, dm, domid, mfn, nr, false);
  }
  return 0;
}
