/**
 * The mock GPU's typed events, past tense, emitted after the state change they
 * report (DESIGN.md "Events"). A vGPU emits its own; the vendor emits creation
 * and destruction so a test can subscribe to vGPUs a platform creates.
 */
import type { ResetKind } from "@vgpu-iommu/core";
import type { UnmapReason } from "./mock-hooks.js";

export interface MockVgpuEvents {
  /** A guest write updated table entry `index`; `committed` is false while half of it is still awaited. */
  entryWritten(e: { vgpu: string; index: number; value: bigint; committed: boolean }): void;
  /** A present entry's frame became reachable at `addr` (a cache hit when `cached`). */
  pageMapped(e: { vgpu: string; index: number; gfn: number; addr: bigint; refcount: number; cached: boolean }): void;
  /** Mapping failed; entry `index` points at the scratch page. */
  mapFailed(e: { vgpu: string; index: number; gfn: number; code: string; reason: string }): void;
  /** A cache entry was released (its pin and mapping are gone). */
  pageUnmapped(e: { vgpu: string; gfn: number; addr: bigint; reason: UnmapReason }): void;
  /** A release call reported an error; the entry is forgotten and never released again. */
  releaseFailed(e: { vgpu: string; gfn: number; code: string; reason: string }): void;
  /** dmaUnmap: every cache entry in the range was dropped, whatever its refcount. */
  rangeInvalidated(e: { vgpu: string; firstGfn: number; npages: number; dropped: number }): void;
  opened(e: { vgpu: string }): void;
  /** A reset released `released` cache entries. */
  reset(e: { vgpu: string; kind: ResetKind; released: number }): void;
  closed(e: { vgpu: string; released: number }): void;
}

export interface MockGpuEvents {
  vgpuCreated(e: { vgpu: string; type: string }): void;
  vgpuDestroyed(e: { vgpu: string; type: string }): void;
}
