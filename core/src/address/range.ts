/**
 * Ranges: `{ start, last }` with `last` inclusive, so the top of the 64-bit space
 * is representable. `end` always means exclusive; `last + 1` is computed only
 * through `checkedEnd`, which reports the wrap instead of producing 2^64.
 */
import { U64_MAX } from "./address.js";

export interface Range<T extends bigint = bigint> {
  readonly start: T;
  readonly last: T;
}

export const range = <T extends bigint>(start: T, last: T): Range<T> => ({ start, last });

/** `[start, start + length)` as an inclusive range, or undefined when it wraps past 2^64 or is empty. */
export function rangeOfLength<T extends bigint>(start: T, length: bigint): Range<T> | undefined {
  if (length <= 0n) return undefined;
  const last = start + length - 1n;
  return last > U64_MAX ? undefined : { start, last: last as T };
}

/** Exclusive end of a range, or undefined when `last` is U64_MAX. */
export const checkedEnd = (r: Range): bigint | undefined => (r.last === U64_MAX ? undefined : r.last + 1n);

export const rangesOverlap = (a: Range, b: Range): boolean => a.start <= b.last && b.start <= a.last;

export const rangeContains = (outer: Range, inner: Range): boolean => outer.start <= inner.start && inner.last <= outer.last;

export const formatRange = (r: Range): string => `[0x${r.start.toString(16)}, 0x${r.last.toString(16)}]`;
