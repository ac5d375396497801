/**
 * Instrumentation between a platform and a vendor: the vendor the platform is
 * handed creates vGPUs whose services record every pin, unpin, translation and
 * release in the vGPU's ledger and the trace, and whose dmaUnmap is checked
 * against the contract (no pin left in the range on return).
 *
 * Nothing here knows which vendor or hypervisor it sits between: it wraps the
 * ports (`VgpuVendor`, `Vgpu`, `VgpuServices`) and passes every call through
 * unchanged. A vGPU can be told to ignore dmaUnmap, the buggy-vendor fault
 * injection of vendors.md 5.5.
 *
 * Invariants: the inner vendor sees the inner vGPUs it created (destroy is
 * unwrapped); a ledger changes only after the inner call succeeded.
 */
import { isKernelError } from "../errors/kernel-error.js";
import type { TranslateApi } from "../translate/translate-api.js";
import type { ResetKind, Vgpu, VgpuVendor } from "../vendor/vgpu-vendor.js";
import { frameList, type VgpuServices } from "../vendor/vgpu-services.js";
import { ForwardingVendor, ForwardingVgpu, forwardServices } from "../vendor/forwarding.js";
import { PinLedger, type LedgerSegment } from "./pin-ledger.js";
import type { RunRecorder } from "./run-recorder.js";

const errnoOf = (e: unknown): string => (isKernelError(e) ? `${e.code} (${e.reason})` : e instanceof Error ? e.message : String(e));

/** A vGPU as the platform holds it: every call reaches the vendor's own vGPU. */
export class InstrumentedVgpu extends ForwardingVgpu {
  ignoreDmaUnmap = false;

  constructor(
    inner: Vgpu,
    readonly ledger: PinLedger,
    readonly services: VgpuServices,
    private readonly rec: RunRecorder,
  ) {
    super(inner);
  }

  override open(): Promise<void> {
    this.rec.instant(`vgpu ${this.name}`, "open", "vgpu");
    return this.inner.open();
  }

  override async close(): Promise<void> {
    await this.inner.close();
    this.rec.instant(`vgpu ${this.name}`, "close", "vgpu", { pinsLeft: this.ledger.liveRefs, mappingsLeft: this.ledger.mappingsLive });
    if (this.ledger.liveRefs !== 0) this.rec.violation(this.name, `${this.name} kept ${this.ledger.liveRefs} pin references after close`);
    this.rec.sample();
  }

  override async reset(kind: ResetKind): Promise<void> {
    await this.inner.reset(kind);
    this.rec.instant(`vgpu ${this.name}`, `reset (${kind})`, "vgpu", { pinsLeft: this.ledger.liveRefs });
    this.rec.sample();
  }

  /** Runs `action` inside the next dmaUnmap this vGPU receives, before the vendor sees it or right after it returned. */
  interleave(when: "before" | "after", action: () => void): void {
    this.#interleaved = { when, action };
  }

  override dmaUnmap(iova: bigint, length: bigint): void | Promise<void> {
    this.ledger.invalidations++;
    this.rec.instant(`vgpu ${this.name}`, "dma_unmap", "invalidation", { iova: hex(iova), length: Number(length), ignored: this.ignoreDmaUnmap });
    if (this.ignoreDmaUnmap) return;
    const injected = this.#interleaved;
    this.#interleaved = undefined;
    if (injected?.when === "before") this.#runInterleaved(injected.action, "before the vendor's dmaUnmap");
    const r = this.inner.dmaUnmap(iova, length);
    const after = (): void => {
      this.#afterUnmap(iova, length);
      if (injected?.when === "after") this.#runInterleaved(injected.action, "after the vendor's dmaUnmap returned");
    };
    if (r instanceof Promise) return r.then(after);
    after();
  }

  #interleaved: { when: "before" | "after"; action: () => void } | undefined;

  #runInterleaved(action: () => void, when: string): void {
    this.rec.instant(`vgpu ${this.name}`, `interleaved ${when}`, "race");
    action();
  }

  override onMemslotRemoved(firstGfn: number, npages: number): void {
    this.ledger.invalidations++;
    this.rec.instant(`vgpu ${this.name}`, "memslot removed", "invalidation", { firstGfn, npages });
    this.inner.onMemslotRemoved(firstGfn, npages);
    this.rec.sample();
  }

  override getDmabuf(dmabufId: number): void {
    this.inner.getDmabuf(dmabufId);
    this.rec.instant(`vgpu ${this.name}`, "dma-buf exported", "display", { dmabufId });
  }

  override releaseDmabuf(dmabufId: number): void {
    this.inner.releaseDmabuf(dmabufId);
    this.rec.instant(`vgpu ${this.name}`, "dma-buf released", "display", { dmabufId });
  }

  #afterUnmap(iova: bigint, length: bigint): void {
    const first = Number(iova >> 12n);
    const npages = Number((length + 0xfffn) >> 12n);
    const left = this.ledger.refsInRange(first, npages);
    if (left !== 0) this.rec.violation(this.name, `${this.name} kept ${left} pin references in [${hex(iova)}, ${hex(iova + length)}) after dmaUnmap returned`);
    this.rec.sample();
  }
}

/** The vendor the platform is handed. */
export class InstrumentedVendor extends ForwardingVendor {
  readonly #wrapped = new Map<string, InstrumentedVgpu>();
  /** Called when a vGPU is created, with its instrumented form. */
  onCreated: (vgpu: InstrumentedVgpu) => void = () => undefined;

  constructor(
    inner: VgpuVendor,
    readonly id: string,
    private readonly rec: RunRecorder,
    /** The translate API of the VM a services object belongs to (for revocations). */
    private readonly translateOf: (vm: string) => TranslateApi | undefined,
  ) {
    super(inner);
  }

  create(type: string, name: string, services: VgpuServices): Vgpu {
    let ledger = this.rec.ledger(name);
    if (ledger === undefined) {
      ledger = new PinLedger(name, services.vm, this.id, type);
      this.rec.addLedger(ledger);
    }
    const wrappedServices = instrumentServices(services, ledger, this.rec, this.translateOf(services.vm));
    const inner = this.inner.create(type, name, wrappedServices);
    const vgpu = new InstrumentedVgpu(inner, ledger, wrappedServices, this.rec);
    this.#wrapped.set(name, vgpu);
    this.rec.instant(`vgpu ${name}`, `created (${type})`, "vgpu", { vendor: this.id, vm: services.vm });
    this.onCreated(vgpu);
    return vgpu;
  }

  override destroy(vgpu: Vgpu): void {
    const w = vgpu instanceof InstrumentedVgpu ? vgpu : this.#wrapped.get(vgpu.name);
    this.inner.destroy(w?.inner ?? vgpu);
    this.#wrapped.delete(vgpu.name);
    this.rec.instant(`vgpu ${vgpu.name}`, "destroyed", "vgpu");
  }
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

function instrumentServices(inner: VgpuServices, ledger: PinLedger, rec: RunRecorder, translate: TranslateApi | undefined): VgpuServices {
  const track = `vgpu ${ledger.vgpu}`;
  const pinTrack = `${ledger.vgpu} pins`;
  const mapTrack = `${ledger.vgpu} mappings`;
  if (translate !== undefined) {
    translate.on("revoked", (e) => {
      if (e.vdev !== ledger.vgpu) return;
      let n = 0;
      for (const id of e.handles) {
        if (!ledger.removeTranslation(id)) continue;
        n++;
        rec.endAsync(mapTrack, "translation", "map", `${ledger.vgpu}:t${id}`, { revoked: e.reason });
      }
      ledger.invalidations++;
      rec.instant(`translate ${ledger.vm}`, `revoked ${n} of ${ledger.vgpu}`, "invalidation", { firstGfn: e.firstGfn, npages: e.npages, reason: e.reason });
      rec.sample();
    });
  }
  const failed = (op: string, e: unknown, args: Record<string, unknown>): void => {
    ledger.failedPins++;
    rec.instant(track, `${op} failed: ${errnoOf(e)}`, "error", args);
    rec.sample();
  };
  return forwardServices(inner, {
    pinPages(gfn, npage, prot, out) {
      let r: number;
      try {
        r = inner.pinPages(gfn, npage, prot, out);
      } catch (e) {
        failed("pin", e, { gfn, npage });
        throw e;
      }
      ledger.pinRange(gfn, npage);
      rec.beginAsync(pinTrack, "pin", "pin", `${ledger.vgpu}:p${gfn}:${npage}`, { gfn, npage });
      rec.sample();
      return r;
    },
    unpinPages(gfn, npage) {
      inner.unpinPages(gfn, npage);
      ledger.unpinRange(gfn, npage);
      rec.endAsync(pinTrack, "pin", "pin", `${ledger.vgpu}:p${gfn}:${npage}`);
      rec.sample();
    },
    pinPagesArray(gfns, npage, prot, out) {
      let r: number;
      try {
        r = inner.pinPagesArray(gfns, npage, prot, out);
      } catch (e) {
        failed("pin (array)", e, { npage });
        throw e;
      }
      for (let i = 0; i < npage; i++) ledger.pin(gfns[i]!);
      rec.instant(pinTrack, `pin ${npage} (array)`, "pin", { first: gfns[0], npage });
      rec.sample();
      return r;
    },
    unpinPagesArray(gfns, npage) {
      const r = inner.unpinPagesArray(gfns, npage);
      for (let i = 0; i < npage; i++) ledger.unpin(gfns[i]!);
      rec.instant(pinTrack, `unpin ${npage} (array)`, "pin", { first: gfns[0], npage });
      rec.sample();
      return r;
    },
    dmaRw(gpa, data, write) {
      inner.dmaRw(gpa, data, write);
      rec.instant(track, write ? "dma_rw write" : "dma_rw read", "copy", { gpa: hex(gpa), length: data.length });
    },
    translate(frames, options) {
      let t;
      try {
        t = inner.translate(frames, options);
      } catch (e) {
        failed(options.device === undefined ? "pin for CPU" : "translate", e, {});
        throw e;
      }
      const gfns = frameList(frames);
      const segments: LedgerSegment[] = [];
      const segs = t.segments;
      if (options.device !== undefined && segs !== undefined) {
        for (let s = 0; s < segs.count; s++) segments.push({ device: options.device.name, addr: segs.addr[s]!, length: segs.length[s]! });
      }
      ledger.addTranslation(t.handle.id, gfns, segments);
      rec.beginAsync(mapTrack, "translation", "map", `${ledger.vgpu}:t${t.handle.id}`, {
        firstGfn: gfns[0],
        npages: gfns.length,
        ...(segments.length > 0 ? { device: segments[0]!.device, addr: hex(segments[0]!.addr), segments: segments.length } : {}),
      });
      rec.sample();
      return t;
    },
    release(handle) {
      inner.release(handle);
      if (ledger.removeTranslation(handle.id)) rec.endAsync(mapTrack, "translation", "map", `${ledger.vgpu}:t${handle.id}`);
      rec.sample();
    },
  });
}
