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
export type MockFaultSite = "alloc" | "translate" | "release";

export const MOCK_FAULT_SITES: readonly MockFaultSite[] = ["alloc", "translate", "release"];

export class MockFaults {
  #armedAt = 0;
  #calls = 0;
  #fired: MockFaultSite | undefined;
  #sites: ReadonlySet<MockFaultSite> | undefined;

  /** Fail the n-th fallible step from now (1-based), optionally counting only some sites. */
  failNth(n: number, sites?: Iterable<MockFaultSite>): void {
    if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`failNth needs n >= 1, got ${n}`);
    this.#armedAt = n;
    this.#calls = 0;
    this.#fired = undefined;
    this.#sites = sites === undefined ? undefined : new Set(sites);
  }

  disarm(): void {
    this.#armedAt = 0;
    this.#sites = undefined;
  }

  get armed(): boolean {
    return this.#armedAt !== 0;
  }

  /** The site that failed since arming, if any. */
  get fired(): MockFaultSite | undefined {
    return this.#fired;
  }

  /** Fallible steps counted since arming. */
  get calls(): number {
    return this.#calls;
  }

  shouldFail(site: MockFaultSite): boolean {
    if (this.#armedAt === 0 || (this.#sites !== undefined && !this.#sites.has(site))) return false;
    if (++this.#calls !== this.#armedAt) return false;
    this.#fired = site;
    this.#armedAt = 0;
    return true;
  }
}
