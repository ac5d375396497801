/**
 * Capturing the typed error a call throws, for tests that assert its exact
 * code, errno and reason. A call that returns, or throws anything but the
 * expected kind of KernelError, fails the capture itself, so it can never pass
 * for the expected failure.
 */
import { KernelError } from "../errors/kernel-error.js";
import { ERRNO, type ErrnoName } from "../errors/errno.js";

type ErrorClass<E> = abstract new (...args: never[]) => E;

const describe = (e: unknown): string => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));

/** The error of kind `kind` (any KernelError by default) that `fn` throws. */
export function thrown<E extends KernelError = KernelError>(fn: () => unknown, kind: ErrorClass<E> = KernelError as unknown as ErrorClass<E>): E {
  try {
    fn();
  } catch (e) {
    if (e instanceof kind) return e;
    throw new Error(`expected a ${kind.name}, got ${describe(e)}`, { cause: e });
  }
  throw new Error(`expected a ${kind.name}, the call returned`);
}

/** The same for a call that may return a promise: the error it throws or rejects with. */
export async function rejection<E extends KernelError = KernelError>(fn: () => unknown, kind: ErrorClass<E> = KernelError as unknown as ErrorClass<E>): Promise<E> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof kind) return e;
    throw new Error(`expected a ${kind.name}, got ${describe(e)}`, { cause: e });
  }
  throw new Error(`expected a ${kind.name}, the call returned`);
}

/** The KernelError `fn` throws, or undefined when it returns; any other exception propagates. */
export function kernelErrorOf(fn: () => unknown): KernelError | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof KernelError) return e;
    throw e;
  }
  return undefined;
}

/** `CODE:reason` of the KernelError `fn` throws, or "ok" when it returns. */
export function outcome(fn: () => unknown): string {
  const e = kernelErrorOf(fn);
  return e === undefined ? "ok" : `${e.code}:${e.reason}`;
}

/** A call as the kernel would return it: 0, or the negative errno of the KernelError it threw. */
export function errnoOf(fn: () => unknown): number {
  const e = kernelErrorOf(fn);
  return e === undefined ? 0 : -e.errno;
}

/** The error of kind `kind` that `fn` throws, which must have exactly this code, its errno, and this reason. */
export function expectKernelError<E extends KernelError = KernelError>(fn: () => unknown, code: ErrnoName, reason: string, kind: ErrorClass<E> = KernelError as unknown as ErrorClass<E>): E {
  const err = thrown(fn, kind);
  if (err.code !== code || err.errno !== ERRNO[code] || err.reason !== reason) throw new Error(`expected ${code} (${ERRNO[code]}, ${reason}), got ${err.code} (${err.errno}, ${err.reason})`);
  return err;
}
