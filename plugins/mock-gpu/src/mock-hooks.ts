/**
 * The mock GPU's observation points: one public method per step, called on
 * the vendor's `hooks` object (shared by its vGPUs) at the moment the step
 * happens, so a test can `sinon.spy(mock.hooks, "beforeMap")` or stub it.
 *
 * A `before*` hook that throws a KernelError fails its step the way the
 * services would: `beforeMap` makes the entry scratch, `beforeUnmap` is not
 * allowed to stop a release (its error is counted, the release goes on).
 * The default bodies do nothing.
 */
import type { ResetKind } from "@vgpu-iommu/core";

/** Why a cache entry was released. */
export type UnmapReason = "rewrite" | "dma-unmap" | "reset" | "close" | "memslot";

export class MockGpuHooks {
  /** A guest write reached table entry `index` (`half`: 0 low, 1 high, 2 both). */
  entryWritten(_vgpu: string, _index: number, _half: number, _value: bigint): void {}
  /** Before a present entry's frame is looked up in the cache and, on a miss, translated. */
  beforeMap(_vgpu: string, _gfn: number): void {}
  /** After the frame is reachable at `addr` with `refcount` references (`cached`: a hit). */
  afterMap(_vgpu: string, _gfn: number, _addr: bigint, _refcount: number, _cached: boolean): void {}
  /** A map failed: the entry now points at the scratch page. */
  mapFailed(_vgpu: string, _index: number, _gfn: number, _error: unknown): void {}
  /** Before a cache entry's translation is released. */
  beforeUnmap(_vgpu: string, _gfn: number, _addr: bigint, _reason: UnmapReason): void {}
  /** After it was released (or its release reported an error, counted in `releaseErrors`). */
  afterUnmap(_vgpu: string, _gfn: number, _addr: bigint, _reason: UnmapReason): void {}
  /** Before a reset of `kind` takes effect. */
  beforeReset(_vgpu: string, _kind: ResetKind): void {}
}
