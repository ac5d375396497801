/**
 * What the two IOMMU-backed DMA ops of the model share: an IOMMU domain, its
 * IOVA allocator (whose reserved ranges the subclass sets up), and strict or
 * lazy invalidation. Strict frees an IOVA right after the IOTLB sync; lazy
 * queues it until a batched flush (the flush queue), so a freed IOVA is not
 * reused while the IOTLB may still hold it.
 */
import type { IommuDomain } from "../iommu/iommu-domain.js";
import type { KernelLog } from "../host/kernel-log.js";
import type { FaultInjector } from "../host/fault-injector.js";
import { IovaDomain } from "./iova-domain.js";
import { IovaFlushQueue, IOVA_FQ_SIZE } from "./flush-queue.js";

export interface IovaOpsOptions {
  readonly domain: IommuDomain;
  readonly log: KernelLog;
  readonly faults?: FaultInjector;
  /** Strict invalidation; lazy (a flush queue) when false or omitted. */
  readonly strict?: boolean;
  /** Never try a 32-bit address first. */
  readonly forcedac?: boolean;
  /** Online CPUs of the rcaches and flush queues; 1 when omitted. */
  readonly cpus?: number;
  readonly fqSize?: number;
}

export abstract class IovaOps {
  readonly domain: IommuDomain;
  readonly iovad: IovaDomain;
  readonly fq: IovaFlushQueue | undefined;
  readonly strict: boolean;
  readonly forcedac: boolean;
  protected readonly log: KernelLog;

  protected constructor(options: IovaOpsOptions, granule: number, startPfn: number, reserved: readonly (readonly [number, number])[]) {
    this.domain = options.domain;
    this.log = options.log;
    this.iovad = new IovaDomain(granule, startPfn, { cpus: options.cpus ?? 1, log: options.log, faults: options.faults });
    for (const [lo, hi] of reserved) this.iovad.reserveIova(lo, hi);
    this.strict = options.strict ?? false;
    this.forcedac = options.forcedac ?? false;
    this.fq = this.strict ? undefined : new IovaFlushQueue(this.iovad, this.domain, options.fqSize ?? IOVA_FQ_SIZE);
  }

  /** The CPU the next operation runs on (its rcache and flush queue). */
  get cpu(): number {
    return this.iovad.cpu;
  }

  set cpu(cpu: number) {
    this.iovad.cpu = cpu;
  }

  /** IOTLB flushes of the domain: one per strict unmap, one per flush-queue flush. */
  get iotlbFlushes(): number {
    return this.domain.iotlbSyncs;
  }

  /** The flush timer fires (lazy mode); false when nothing was armed. */
  flushTimeout(): boolean {
    return this.fq?.timeout() ?? false;
  }

  /** Drops the flush queue and every IOVA. */
  destroy(): void {
    this.fq?.destroy();
    this.iovad.destroy();
  }

  /** After the domain unmap: free the IOVA now (strict, after a sync) or queue it (lazy). */
  protected releaseIova(pfn: number, pages: number): void {
    if (this.fq !== undefined) this.fq.queue(pfn, pages);
    else {
      this.domain.iotlbSync();
      this.iovad.freeIovaFast(pfn, pages);
    }
  }
}
