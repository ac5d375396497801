/**
 * Fault injection for the mock GPU's own fallible steps, in the manner of
 * iommufd's fail_nth and the core's FaultInjector: each step asks
 * `shouldFail(site)`; armed with `failNth(n)`, the n-th such call counted
 * from arming fails, once. A sweep arms n = 1, 2, ... until a run completes
 * with `fired` still undefined.
 *
 * Sites, in the order a map takes them:
 * - `alloc`: the mock's own allocations (a vGPU's tables at create, a DMA
 *   cache entry after a translation): -ENOMEM, and the translation is released;
 * - `translate`: the call to services.translate: -ENOMEM instead of the call;
 * - `release`: the call to services.release is made, then reports -EINVAL, as
 *   the core's translate API does when it revoked the handle first; the mock
 *   must neither retry it nor stop the sweep it is part of.
 */
import { FaultInjector } from "@vgpu-iommu/core";

export type MockFaultSite = "alloc" | "translate" | "release";

export const MOCK_FAULT_SITES: readonly MockFaultSite[] = ["alloc", "translate", "release"];

/** The core's fail_nth injector over the mock's own sites. */
export class MockFaults extends FaultInjector<MockFaultSite> {}
