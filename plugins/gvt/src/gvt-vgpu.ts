/**
 * One GVT-g vGPU: the mediated device kvmgt exposes, on the VgpuServices of
 * whatever hypervisor it runs on.
 *
 * Regions: config space (a small PCI header with a PM capability) and BAR0,
 * 16 MiB: MMIO registers in [0, 2 MiB) (a vreg file; the ELSP, GDRST, plane
 * and PV info registers have behaviour), the GGTT in [8 MiB, 16 MiB). A write
 * is cut as the vfio write op cuts it: 8-byte aligned chunks of a GGTT range
 * go 8 bytes at a time, the rest 4, 2 or 1; the GGTT accepts only 4 and 8.
 *
 * State and who changes it:
 * - the DMA cache: GGTT writes, PPGTT shadowing, dma-bufs, dmaUnmap, close;
 * - the GGTT shadow: guest GGTT writes, FLR;
 * - the PPGTT shadows: workload submission (lazily), guest page-table writes,
 *   FLR and engine reset (shadows), FLR without D3 (mms), close;
 * - failsafe: set by an unhealthy workload (-EFAULT, -EBADRQC), cleared by FLR.
 *
 * One lock, as kvmgt's vgpu_lock: a guest page-table write that arrives while
 * the vGPU is inside an operation (shadowing a root, handling another write)
 * is queued and handled when the operation ends, in arrival order.
 *
 * Close releases everything (dma-bufs, PPGTT shadows, then gvt_cache_destroy);
 * the kernel keeps the shadow objects until the vGPU is destroyed, pointing at
 * released addresses, which this model does not.
 */
import {
  ERRNO,
  KernelError,
  Observable,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  type IsolationFinding,
  type PlaneInfo,
  type ResetKind,
  type Vgpu,
  type VgpuServices,
} from "@vgpu-iommu/core";
import { GvtDmaCache } from "./dma-cache.js";
import { GvtDisplay } from "./display.js";
import { GvtGgtt, SCRATCH } from "./ggtt.js";
import type { GmSlice } from "./gm-space.js";
import { BAR0_BYTES, GGTT_BYTES, GGTT_OFFSET, GRDOM_FULL, MMIO_BYTES, PAGE_SIZE, PVINFO, REG, VGT_MAGIC } from "./gvt-params.js";
import { GvtPpgtt, type PpgttOptions } from "./ppgtt.js";
import { EBADRQC, ElspPort, lrcaOf, readContext, scanRing, type RingState } from "./workload.js";

export interface GvtVgpuEvents {
  /** A present GGTT entry could not be mapped; its shadow points at scratch and the guest is not told. */
  ggttEntryScratched(e: { vgpu: string; index: number; gfn: number; errno: number }): void;
  workloadCompleted(e: { vgpu: string; rootGfn: number; status: number; copied: number }): void;
  failsafeEntered(e: { vgpu: string; reason: string; status: number }): void;
  guestWriteFailed(e: { vgpu: string; gpa: bigint; errno: number }): void;
  warned(e: { vgpu: string; site: string; message: string }): void;
  resetCompleted(e: { vgpu: string; kind: ResetKind | "gdrst"; released: number }): void;
}

export interface GvtVgpuSpec {
  readonly id: number;
  readonly name: string;
  readonly type: string;
  readonly aperture: GmSlice;
  readonly hidden: GmSlice;
  readonly fences: number;
  readonly ppgtt: PpgttOptions;
}

export interface WorkloadResult {
  /** 0, or the negative errno the workload failed with. */
  readonly status: number;
  /** False when the vGPU was in failsafe and dropped the submission. */
  readonly submitted: boolean;
  /** Bytes of ring and batch copied with dmaRw (never pinned). */
  readonly copied: number;
}

export interface GvtVgpuCounters {
  workloads: number;
  workloadsFailed: number;
  droppedInFailsafe: number;
  deferredWrites: number;
  guestWriteErrors: number;
  memslotFlushes: number;
  irqs: number;
  dmaUnmapCalls: number;
}

/** Config space: i915-like IDs, a PM capability at 0xd0 whose PMCSR (0xd4) records D3hot. */
const CFG_PM_CAP = 0xd0;
const CFG_PMCSR = 0xd4;
const PCI_D3HOT = 3;

export class GvtVgpu extends Observable<GvtVgpuEvents> implements Vgpu {
  readonly name: string;
  readonly type: string;
  readonly id: number;
  readonly aperture: GmSlice;
  readonly hidden: GmSlice;
  readonly fences: number;
  readonly cache: GvtDmaCache;
  readonly ggtt: GvtGgtt;
  readonly ppgtt: GvtPpgtt;
  readonly display: GvtDisplay;
  /** The MMIO register file, one u32 per 4 bytes of [0, 2 MiB). */
  readonly vreg = new Uint32Array(MMIO_BYTES / 4);
  readonly cfg = new Uint8Array(256);
  readonly counters: GvtVgpuCounters = { workloads: 0, workloadsFailed: 0, droppedInFailsafe: 0, deferredWrites: 0, guestWriteErrors: 0, memslotFlushes: 0, irqs: 0, dmaUnmapCalls: 0 };
  /** WARNs this vGPU raised. */
  warnings = 0;
  failsafe = false;
  /** The guest put the device in D3hot; the next FLR keeps the PPGTT mms. */
  d3Entered = false;
  #open = false;
  readonly #elsp = new ElspPort();
  #busy = 0;
  readonly #deferred: { gpa: bigint; data: Uint8Array }[] = [];

  constructor(
    spec: GvtVgpuSpec,
    readonly services: VgpuServices,
  ) {
    super();
    this.name = spec.name;
    this.type = spec.type;
    this.id = spec.id;
    this.aperture = spec.aperture;
    this.hidden = spec.hidden;
    this.fences = spec.fences;
    this.cache = new GvtDmaCache(services);
    this.ggtt = new GvtGgtt(spec.aperture, spec.hidden, this.cache);
    this.ggtt.onFailure = (index, gfn, errno) => {
      if (this.hasListeners("ggttEntryScratched")) this.emit("ggttEntryScratched", { vgpu: this.name, index, gfn, errno });
    };
    this.ppgtt = new GvtPpgtt(services, this.cache, spec.ppgtt, (site, message) => this.#warn(site, message));
    this.display = new GvtDisplay(this.vreg, this.ggtt, this.cache);
    this.#resetConfig();
    this.#populatePvinfo();
  }

  get isOpen(): boolean {
    return this.#open;
  }

  async open(): Promise<void> {
    if (this.#open) throw new KernelError("EEXIST", "gvt-vgpu-already-attached", { vgpu: this.name });
    this.#open = true;
    this.cache.attached = true;
  }

  async close(): Promise<void> {
    if (!this.#open) return;
    this.display.cleanup();
    this.ppgtt.destroyAll();
    this.#elsp.reset();
    this.#open = false;
    this.cache.attached = false;
    this.cache.destroy();
    // The mappings are gone: the shadow GGTT points at scratch again.
    this.ggtt.reset(false);
  }

  read(region: number, offset: bigint, length: number): Uint8Array {
    const out = new Uint8Array(length);
    const start = Number(offset);
    if (region === VFIO_PCI_CONFIG_REGION_INDEX) {
      if (start < 0 || start + length > this.cfg.length) throw new KernelError("EINVAL", "gvt-cfg-out-of-range", { offset: start, length });
      out.set(this.cfg.subarray(start, start + length));
      return out;
    }
    if (region !== VFIO_PCI_BAR0_REGION_INDEX || start < 0 || start + length > BAR0_BYTES) throw new KernelError("EINVAL", "gvt-region-not-readable", { region, offset: start, length });
    for (let pos = start, done = 0; done < length; ) {
      const n = chunkOf(pos, length - done);
      if (pos >= GGTT_OFFSET) {
        if (n < 4) throw new KernelError("EINVAL", "gvt-ggtt-bad-access", { offset: pos, bytes: n });
        const rel = pos - GGTT_OFFSET;
        const index = Math.floor(rel / 8);
        putU32(out, done, this.ggtt.read32(index, rel % 8));
        if (n === 8) putU32(out, done + 4, this.ggtt.read32(index, 4));
      } else if (pos < MMIO_BYTES) {
        for (let i = 0; i < n; i++) out[done + i] = (this.vreg[(pos + i) >> 2]! >>> (((pos + i) & 3) * 8)) & 0xff;
      }
      pos += n;
      done += n;
    }
    return out;
  }

  write(region: number, offset: bigint, data: Uint8Array): void {
    const start = Number(offset);
    const length = data.length;
    if (region === VFIO_PCI_CONFIG_REGION_INDEX) {
      if (start < 0 || start + length > this.cfg.length) throw new KernelError("EINVAL", "gvt-cfg-out-of-range", { offset: start, length });
      this.#writeConfig(start, data);
      return;
    }
    if (region !== VFIO_PCI_BAR0_REGION_INDEX || start < 0 || start + length > BAR0_BYTES) throw new KernelError("EINVAL", "gvt-region-not-writable", { region, offset: start, length });
    for (let pos = start, done = 0; done < length; ) {
      const n = chunkOf(pos, length - done);
      if (pos >= GGTT_OFFSET) {
        if (n < 4) throw new KernelError("EINVAL", "gvt-ggtt-bad-access", { offset: pos, bytes: n });
        const index = (pos - GGTT_OFFSET) >>> 3;
        if (n === 8) this.ggtt.write64(index, getU32(data, done), getU32(data, done + 4));
        else this.ggtt.write32(index, (pos - GGTT_OFFSET) & 7, getU32(data, done));
      } else if (pos < MMIO_BYTES) {
        if (n >= 4) this.#writeMmio(pos, getU32(data, done));
        else for (let i = 0; i < n; i++) this.#writeMmioByte(pos + i, data[done + i]!);
      }
      pos += n;
      done += n;
    }
  }

  async reset(kind: ResetKind): Promise<void> {
    if (kind === "engine") {
      this.#engineReset("engine");
      return;
    }
    // Device-model-level reset (VFIO_DEVICE_RESET), equivalent to FLR.
    this.#elsp.reset();
    const keepMms = kind === "d3-resume" || this.d3Entered;
    this.ppgtt.invalidateAll();
    if (!keepMms) this.ppgtt.destroyAll();
    const released = this.ggtt.reset(true);
    this.vreg.fill(0);
    this.#populatePvinfo();
    this.#resetConfig();
    this.failsafe = false;
    this.d3Entered = false;
    this.emit("resetCompleted", { vgpu: this.name, kind, released });
  }

  /** intel_vgpu_dma_unmap: every cache entry whose GFN lies in the range goes, whatever its kref. */
  dmaUnmap(iova: bigint, length: bigint): void {
    this.counters.dmaUnmapCalls++;
    const first = Number(iova >> 12n);
    const npages = Number((iova + length + 0xfffn) >> 12n) - first;
    this.cache.unmapRange(first, npages);
  }

  onGuestWrite(gpa: bigint, data: Uint8Array): void {
    if (this.#busy > 0) {
      this.#deferred.push({ gpa, data: data.slice() });
      this.counters.deferredWrites++;
      return;
    }
    this.#locked(() => this.#guestWrite(gpa, data.length));
  }

  /** The page-track handler's own result, for callers that want the errno (0, -EINVAL for a bad size, ...). */
  handleGuestWrite(gpa: bigint, data: Uint8Array): number {
    if (this.#busy > 0) {
      this.#deferred.push({ gpa, data: data.slice() });
      this.counters.deferredWrites++;
      return 0;
    }
    return this.#locked(() => this.#guestWrite(gpa, data.length));
  }

  onMemslotRemoved(firstGfn: number, npages: number): void {
    // KVM dropped the write protection of the slot's frames; the shadows stay,
    // and writes to those tables are no longer seen until they are re-protected.
    this.counters.memslotFlushes += this.ppgtt.trackedIn(firstGfn, npages);
  }

  queryPlane(plane: "primary" | "cursor"): PlaneInfo | undefined {
    return this.display.queryPlane(plane);
  }

  getDmabuf(dmabufId: number): void {
    if (!this.#open) throw new KernelError("ENODEV", "gvt-not-attached", { vgpu: this.name });
    this.display.getDmabuf(dmabufId);
  }

  releaseDmabuf(dmabufId: number): void {
    this.display.releaseDmabuf(dmabufId);
  }

  /**
   * A workload on the render engine using the 4-level PPGTT rooted at guest
   * page `rootGfn`, and optionally a ring to copy and scan. The ELSP register
   * path decodes a context image and lands here.
   */
  submitWorkload(rootGfn: number, ring?: RingState): WorkloadResult {
    if (!this.#open) return { status: -ERRNO.EINVAL, submitted: false, copied: 0 };
    if (this.failsafe) {
      this.counters.droppedInFailsafe++;
      return { status: 0, submitted: false, copied: 0 };
    }
    return this.#locked(() => this.#runWorkload(rootGfn, ring));
  }

  /** Enters failsafe: MMIO writes are only stored, page-table writes only unprotect. */
  enterFailsafe(reason: string, status = 0): void {
    if (this.failsafe) return;
    this.failsafe = true;
    this.emit("failsafeEntered", { vgpu: this.name, reason, status });
  }

  /** Every device address the GPU can reach through this vGPU's shadows (GGTT and PPGTT leaves). */
  deviceVisibleAddresses(): BigUint64Array {
    const pages: number[] = [];
    for (let slot = 0; slot < this.ggtt.length; slot++) {
      const d = this.ggtt.hostDma[slot]!;
      if (d !== SCRATCH) pages.push(d);
    }
    this.ppgtt.collectLeafDma(pages);
    const out = new BigUint64Array(pages.length);
    for (let i = 0; i < pages.length; i++) out[i] = BigInt(pages[i]!) * 4096n;
    return out;
  }

  /** The core's isolation check over every address this vGPU's shadows expose. */
  checkIsolation(): IsolationFinding[] {
    return this.services.checkIsolation(this.deviceVisibleAddresses());
  }

  /** Shadow entries whose DMA address the cache no longer holds (the stale window after dmaUnmap). */
  staleShadowEntries(): number {
    const pages: number[] = [];
    for (let slot = 0; slot < this.ggtt.length; slot++) {
      const d = this.ggtt.hostDma[slot]!;
      if (d !== SCRATCH) pages.push(d);
    }
    this.ppgtt.collectLeafDma(pages);
    let stale = 0;
    for (const p of pages) if (!this.cache.hasDma(p) && !this.#inside2M(p)) stale++;
    return stale;
  }

  #inside2M(page: number): boolean {
    // A page of a whole 2M mapping is found through the mapping's first page.
    const base = page - (page % 512);
    const e = this.cache.lookupDma(base);
    return e !== undefined && e.size > PAGE_SIZE;
  }

  #runWorkload(rootGfn: number, ring: RingState | undefined): WorkloadResult {
    const { mm, created } = this.ppgtt.findOrCreateMm(rootGfn);
    let status = this.ppgtt.shadowMm(mm);
    if (status < 0 && created) this.ppgtt.destroyMm(mm);
    let copied = 0;
    if (status === 0) {
      mm.pincount++;
      status = this.ppgtt.flushPostShadow();
      if (status === 0 && ring !== undefined) {
        const scan = scanRing(this.services, this.ggtt, this.ppgtt, mm, ring);
        status = scan.status;
        copied = scan.copied;
      }
      mm.pincount--;
    }
    if (status === 0) {
      this.counters.workloads++;
      // The context-switch interrupt of a completed workload.
      if (this.services.injectIrq(0)) this.counters.irqs++;
    } else {
      this.counters.workloadsFailed++;
      if (status === -ERRNO.EFAULT || status === -EBADRQC) this.enterFailsafe("guest-error", status);
    }
    this.emit("workloadCompleted", { vgpu: this.name, rootGfn, status, copied });
    return { status, submitted: true, copied };
  }

  #guestWrite(gpa: bigint, bytes: number): number {
    const gfn = Number(gpa >> 12n);
    if (!this.ppgtt.tracks(gfn)) return 0;
    if (this.failsafe) {
      this.ppgtt.unprotect(gfn);
      return 0;
    }
    const r = this.ppgtt.handleGuestWrite(gpa, bytes);
    if (r < 0) {
      this.counters.guestWriteErrors++;
      this.emit("guestWriteFailed", { vgpu: this.name, gpa, errno: r });
    }
    return r;
  }

  /** Runs `fn` holding the vGPU lock; writes queued meanwhile are handled when the outermost holder leaves. */
  #locked<T>(fn: () => T): T {
    this.#busy++;
    let result: T;
    try {
      result = fn();
    } finally {
      this.#busy--;
    }
    if (this.#busy === 0) {
      while (this.#deferred.length > 0) {
        const w = this.#deferred.shift()!;
        this.#busy++;
        try {
          this.#guestWrite(w.gpa, w.data.length);
        } finally {
          this.#busy--;
        }
      }
    }
    return result;
  }

  #engineReset(kind: "engine" | "gdrst"): void {
    this.#elsp.reset();
    this.ppgtt.invalidateAll();
    this.emit("resetCompleted", { vgpu: this.name, kind, released: 0 });
  }

  #writeMmio(offset: number, value: number): void {
    const reg = offset >>> 2;
    if (offset >= REG.PVINFO_PAGE && offset < REG.PVINFO_PAGE + PAGE_SIZE) {
      // The PV info page is the host's; the guest's writes there are notifications this model ignores.
      return;
    }
    this.vreg[reg] = value >>> 0;
    if (this.failsafe) return;
    if (offset === REG.RCS_ELSP) this.#elspWrite(value);
    else if (offset === REG.GDRST && (value & GRDOM_FULL) !== 0) {
      this.vreg[reg] = 0;
      this.#engineReset("gdrst");
    }
  }

  #writeMmioByte(offset: number, value: number): void {
    if (offset >= REG.PVINFO_PAGE && offset < REG.PVINFO_PAGE + PAGE_SIZE) return;
    const reg = offset >>> 2;
    const shift = (offset & 3) * 8;
    this.vreg[reg] = ((this.vreg[reg]! & ~(0xff << shift)) | (value << shift)) >>> 0;
  }

  #elspWrite(value: number): void {
    const desc = this.#elsp.write(value);
    if (desc < 0) return;
    const lrca = lrcaOf(desc);
    if (lrca < 0) return;
    const ctx = readContext(this.services, this.ggtt, lrca);
    if (typeof ctx === "number") {
      this.counters.workloadsFailed++;
      this.emit("workloadCompleted", { vgpu: this.name, rootGfn: -1, status: -ERRNO.EINVAL, copied: 0 });
      return;
    }
    this.submitWorkload(ctx.rootGfn, ctx.ring);
  }

  #writeConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      // Vendor, device, class and the capability header are read-only.
      if (at < 4 || (at >= 8 && at < 12) || at === 0x34 || at === CFG_PM_CAP || at === CFG_PM_CAP + 1) continue;
      this.cfg[at] = data[i]!;
    }
    if (offset <= CFG_PMCSR && offset + data.length > CFG_PMCSR && (this.cfg[CFG_PMCSR]! & 3) === PCI_D3HOT) this.d3Entered = true;
  }

  #resetConfig(): void {
    const c = this.cfg;
    c.fill(0);
    putU16(c, 0x00, 0x8086);
    putU16(c, 0x02, 0x1912);
    putU16(c, 0x06, 0x0010); // capability list
    c[0x0b] = 0x03; // display controller
    putU32(c, 0x10, 0x0000000c); // BAR0: 64-bit, prefetchable memory
    putU32(c, 0x18, 0x0000000c); // BAR2: the aperture
    c[0x34] = CFG_PM_CAP;
    c[CFG_PM_CAP] = 0x01;
  }

  #populatePvinfo(): void {
    const base = REG.PVINFO_PAGE >> 2;
    const v = this.vreg;
    v[base + (PVINFO.MAGIC >> 2)] = Number(VGT_MAGIC & 0xffffffffn);
    v[base + (PVINFO.MAGIC >> 2) + 1] = Number(VGT_MAGIC >> 32n);
    v[base + (PVINFO.VERSION_MAJOR >> 2)] = 1; // major 1, minor 0
    v[base + (PVINFO.VGT_ID >> 2)] = this.id;
    v[base + (PVINFO.MAPPABLE_BASE >> 2)] = this.aperture.start * PAGE_SIZE;
    v[base + (PVINFO.MAPPABLE_SIZE >> 2)] = this.aperture.npages * PAGE_SIZE;
    v[base + (PVINFO.NONMAPPABLE_BASE >> 2)] = (this.hidden.start * PAGE_SIZE) >>> 0;
    v[base + (PVINFO.NONMAPPABLE_SIZE >> 2)] = (this.hidden.npages * PAGE_SIZE) >>> 0;
    v[base + (PVINFO.FENCE_NUM >> 2)] = this.fences;
  }

  #warn(site: string, message: string): void {
    this.warnings++;
    this.emit("warned", { vgpu: this.name, site, message });
  }
}

/** The access size the vfio write op uses at `pos` with `left` bytes to go. */
function chunkOf(pos: number, left: number): number {
  if (left >= 8 && pos % 8 === 0 && pos >= GGTT_OFFSET && pos < GGTT_OFFSET + GGTT_BYTES) return 8;
  if (left >= 4 && pos % 4 === 0) return 4;
  if (left >= 2 && pos % 2 === 0) return 2;
  return 1;
}

function getU32(a: Uint8Array, at: number): number {
  return (a[at]! | (a[at + 1]! << 8) | (a[at + 2]! << 16) | (a[at + 3]! << 24)) >>> 0;
}

function putU32(a: Uint8Array, at: number, v: number): void {
  a[at] = v & 0xff;
  a[at + 1] = (v >>> 8) & 0xff;
  a[at + 2] = (v >>> 16) & 0xff;
  a[at + 3] = (v >>> 24) & 0xff;
}

function putU16(a: Uint8Array, at: number, v: number): void {
  a[at] = v & 0xff;
  a[at + 1] = (v >>> 8) & 0xff;
}
