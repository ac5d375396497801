/**
 * The lazy-mode flush queue: freed IOVAs wait for a batched IOTLB flush
 * before they can be reused (struct iova_fq of drivers/iommu/dma-iommu.c since
 * 5.17, of iova.c before; the 2016 VT-d driver's deferred_flush tables behaved
 * the same way).
 *
 * Model: per CPU a ring of `size` entries {pfn, pages, counter} (one slot is
 * kept empty, so a ring holds size - 1, as fq_full does); a domain-wide pair of
 * flush counters. `queue` (queue_iova) first frees the current CPU's entries
 * that a finished flush covers, flushes the IOTLB of the whole domain when the
 * ring is full, then appends the entry stamped with the flush-start counter,
 * and arms the timer. `timeout()` is the 10 ms timer (fq_flush_timeout): one
 * flush, then every CPU's covered entries are freed. An entry is freed into
 * the IOVA rcache of the CPU doing the freeing (free_iova_fast).
 *
 * Invariants: an entry is returned to the allocator only after an IOTLB flush
 * that started after it was queued has finished (entry.counter < finishCount);
 * `flushes` counts flush_iotlb_all calls, each also counted by the domain's
 * `iotlbSyncs`.
 */
import type { IommuDomain } from "../iommu/iommu-domain.js";
import type { IovaDomain } from "./iova-domain.js";

/** IOVA_DEFAULT_FQ_SIZE (IOVA_FQ_SIZE before 6.1). */
export const IOVA_FQ_SIZE = 256;
/** IOVA_DEFAULT_FQ_TIMEOUT, in milliseconds: what `timeout()` stands for. */
export const IOVA_FQ_TIMEOUT_MS = 10;

class Ring {
  head = 0;
  tail = 0;
  readonly pfn: Float64Array;
  readonly pages: Float64Array;
  readonly counter: Float64Array;
  constructor(size: number) {
    this.pfn = new Float64Array(size);
    this.pages = new Float64Array(size);
    this.counter = new Float64Array(size);
  }
}

export class IovaFlushQueue {
  readonly size: number;
  /** flush_iotlb_all calls made by the queue. */
  flushes = 0;
  #startCount = 0;
  #finishCount = 0;
  #timerArmed = false;
  readonly #rings: Ring[] = [];

  constructor(
    private readonly iovad: IovaDomain,
    private readonly domain: IommuDomain,
    size: number = IOVA_FQ_SIZE,
  ) {
    if (!(size >= 2 && (size & (size - 1)) === 0)) throw new RangeError(`flush queue size ${size} must be a power of two >= 2`);
    this.size = size;
    for (let cpu = 0; cpu < iovad.cpus; cpu++) this.#rings.push(new Ring(size));
  }

  get timerArmed(): boolean {
    return this.#timerArmed;
  }

  /** Entries not yet returned to the allocator, over every CPU. */
  get pending(): number {
    let n = 0;
    for (const ring of this.#rings) n += (ring.tail - ring.head + this.size) & (this.size - 1);
    return n;
  }

  /** queue_iova: defers the free of `pages` granules at `pfn` until a flush covers it. */
  queue(pfn: number, pages: number): void {
    const ring = this.#rings[this.iovad.cpu]!;
    this.#ringFree(ring);
    const mask = this.size - 1;
    if (((ring.tail + 1) & mask) === ring.head) {
      this.#flush();
      this.#ringFree(ring);
    }
    const idx = ring.tail;
    ring.tail = (ring.tail + 1) & mask;
    ring.pfn[idx] = pfn;
    ring.pages[idx] = pages;
    ring.counter[idx] = this.#startCount;
    this.#timerArmed = true;
  }

  /** fq_flush_timeout: the armed timer fires; returns false when it was not armed. */
  timeout(): boolean {
    if (!this.#timerArmed) return false;
    this.#timerArmed = false;
    this.#flush();
    for (const ring of this.#rings) this.#ringFree(ring);
    return true;
  }

  /** Calls `fn` for every queued entry (invariant checks, leak reports). */
  forEachPending(fn: (pfn: number, pages: number) => void): void {
    const mask = this.size - 1;
    for (const ring of this.#rings) {
      for (let i = ring.head; i !== ring.tail; i = (i + 1) & mask) fn(ring.pfn[i]!, ring.pages[i]!);
    }
  }

  /** iommu_dma_free_fq: drops the entries; the IOVA domain is put right after. */
  destroy(): void {
    for (const ring of this.#rings) ring.head = ring.tail = 0;
    this.#timerArmed = false;
  }

  /** fq_flush_iotlb. */
  #flush(): void {
    this.#startCount++;
    this.domain.iotlbSync();
    this.flushes++;
    this.#finishCount++;
  }

  /** fq_ring_free_locked: frees the entries a finished flush covers. */
  #ringFree(ring: Ring): void {
    const mask = this.size - 1;
    while (ring.head !== ring.tail && ring.counter[ring.head]! < this.#finishCount) {
      this.iovad.freeIovaFast(ring.pfn[ring.head]!, ring.pages[ring.head]!);
      ring.head = (ring.head + 1) & mask;
    }
  }
}
