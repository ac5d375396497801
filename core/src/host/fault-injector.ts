/**
 * Fault injection for the fallible steps of the model, in the manner of
 * iommufd's fail_nth: each fallible step asks `shouldFail(site)`; when armed
 * with `failNth(n)`, the n-th such call (counted from arming) fails, once. A
 * sweep arms n = 1, 2, ... until a run completes with no injected failure.
 */
export type FaultSite =
  | "kzalloc" // a kernel allocation (vfio_dma, vfio_pfn, bitmaps, iova ranges): -ENOMEM
  | "gup" // pin_user_pages_remote: -ENOMEM
  | "iommu_map" // iommu_map into a domain: -ENOMEM
  | "mmap_lock"; // mmap_write_lock_killable interrupted: -EINTR

/** Generic in its sites, so plugins reuse it for their own fallible steps. */
export class FaultInjector<Site extends string = FaultSite> {
  #armedAt = 0;
  #calls = 0;
  #fired: Site | undefined;
  #sites: ReadonlySet<Site> | undefined;

  /** Fail the n-th fallible step from now (1-based), optionally only at some sites. */
  failNth(n: number, sites?: Iterable<Site>): void {
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

  /** The site that failed since arming, if any. */
  get fired(): Site | undefined {
    return this.#fired;
  }

  /** Whether a failure is pending. While it is not, `shouldFail` has no effect at all, so a hot path may skip calling it. */
  get armed(): boolean {
    return this.#armedAt !== 0;
  }

  /** Fallible steps seen since arming. */
  get calls(): number {
    return this.#calls;
  }

  shouldFail(site: Site): boolean {
    if (this.#armedAt === 0 || (this.#sites !== undefined && !this.#sites.has(site))) return false;
    if (++this.#calls !== this.#armedAt) return false;
    this.#fired = site;
    this.#armedAt = 0;
    return true;
  }
}
