/**
 * Errors of the Xen adapter in the shared vocabulary.
 *
 * Model: Xen answers in several native vocabularies: negative errnos from
 * hypercalls (PV-IOMMU, memory ops, domctls), `GNTST_*` grant statuses, and
 * the lookup outcomes of a referenced P2M lookup. Every failure the adapter
 * reports to the core is a `XenError`, a KernelError whose `code` is the
 * shared errno name and whose `cause` is the native status it came from, with
 * `done` when the operation stopped part way.
 *
 * Invariants: `cause.status` is the exact native value (an errno is negative,
 * a GNTST code is negative, GNTST_okay is never a cause); `code` is derived
 * from it by one table, so the same native status always maps to one code.
 */
import { KernelError, errnoName, type ErrnoName, type KernelErrorFields } from "@vgpu-iommu/core";

/** Where a native status came from. */
export type NativeApi = "pv-iommu" | "grant" | "p2m" | "privcmd" | "memory-op" | "dmop" | "domctl" | "swiotlb" | "domain";

export interface NativeStatus {
  readonly api: NativeApi;
  /** The native value: a negative errno, or a GNTST code. */
  readonly status: number;
  /** The native name: `-EPERM`, `GNTST_eagain`, ... */
  readonly name: string;
}

export class XenError extends KernelError {
  /** The native status this error wraps. */
  get native(): NativeStatus | undefined {
    return this.fields.cause as NativeStatus | undefined;
  }
}

/** The native form of a negative errno, e.g. `{ api, status: -1, name: "-EPERM" }`. */
export function errnoStatus(api: NativeApi, status: number): NativeStatus {
  return { api, status, name: `-${errnoName(status) ?? `E${-status}`}` };
}

/** A XenError for a negative errno from a hypercall; EIO when the value has no name. */
export function xenErrnoError(api: NativeApi, status: number, reason: string, fields: KernelErrorFields = {}): XenError {
  const code: ErrnoName = errnoName(status) ?? "EIO";
  return new XenError(code, reason, { ...fields, cause: errnoStatus(api, status) });
}

/** A XenError with a code the adapter chose (EAGAIN for a paged frame), keeping the native status. */
export function xenError(code: ErrnoName, reason: string, cause: NativeStatus | undefined, fields: KernelErrorFields = {}): XenError {
  return new XenError(code, reason, cause === undefined ? fields : { ...fields, cause });
}
