/**
 * Typed errors. Every failure the model reports is a `KernelError`: a stable
 * `code` (the errno name), the `errno` number, a stable machine-readable
 * `reason`, and structured fields (the offending range, counts, the native
 * cause). Tests assert `code`, `reason` and fields, never message text.
 */
import { ERRNO, type ErrnoName } from "./errno.js";
import { formatRange, type Range } from "../address/range.js";

export interface KernelErrorFields {
  /** The byte range at fault, where there is one. */
  readonly range?: Range;
  /** Pages or entries completed before the failure, where progress is partial. */
  readonly done?: number;
  /** The lower-layer error or native status this one wraps. */
  readonly cause?: unknown;
  readonly [key: string]: unknown;
}

export class KernelError extends Error {
  readonly errno: number;
  constructor(
    readonly code: ErrnoName,
    readonly reason: string,
    readonly fields: KernelErrorFields = {},
    message?: string,
  ) {
    super(message ?? `${code}: ${reason}${fields.range ? ` ${formatRange(fields.range)}` : ""}`, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.errno = ERRNO[code];
    this.name = new.target.name;
  }
}

/** An error of the VFIO container, the type1 backend or the vendor pin API. */
export class VfioError extends KernelError {}

/** An error of the simulated host: memory, processes, accounting. */
export class HostError extends KernelError {}

/**
 * Raised by every entry point once a simulated BUG_ON has fired: the simulated
 * host is dead, as a real kernel would be after an oops in that path.
 */
export class HostCrashedError extends KernelError {
  constructor(readonly bug: BugRecord) {
    super("EIO", "host-crashed", { bug }, `host crashed: BUG at ${bug.site}: ${bug.message}`);
  }
}

export interface BugRecord {
  readonly site: string;
  readonly message: string;
  readonly details: Readonly<Record<string, unknown>>;
}

export const isKernelError = (e: unknown): e is KernelError => e instanceof KernelError;
