/**
 * Workload submission (vendors.md 1.5, 1.8; execlist.c, scheduler.c,
 * cmd_parser.c), reduced to what touches guest memory.
 *
 * The guest submits through the render engine's ELSP: four 32-bit writes
 * (element 1 then element 0, upper dword first). Element 0's context
 * descriptor names the context image by its GGTT address (LRCA). Page 1 of
 * the image is the register state: ring head, tail and start (a GGTT address)
 * and PDP0, the guest-physical address of the PML4 of a 4-level PPGTT.
 *
 * Everything read here goes through `dmaRw` after a gma -> gpa translation in
 * the guest's own GGTT or PPGTT: the context image, the ring and the batch
 * buffers are copied, never pinned. Only what the GPU reaches through a GTT
 * is pinned and mapped, and that is the PPGTT shadow's work.
 *
 * The scanner knows MI_NOOP, MI_BATCH_BUFFER_START (3 dwords, bit 8 = PPGTT
 * address) and MI_BATCH_BUFFER_END. An address that does not translate or
 * cannot be read is -EFAULT; an unknown command is -EBADRQC; both mark the VM
 * unhealthy (failsafe) in the caller.
 */
import { ERRNO, type VgpuServices } from "@vgpu-iommu/core";
import type { GvtGgtt } from "./ggtt.js";
import type { GvtPpgtt, PpgttMm } from "./ppgtt.js";
import {
  CTX_DESC_LRCA_MASK,
  CTX_DESC_VALID,
  CTX_PDP0_LDW,
  CTX_PDP0_UDW,
  CTX_RING_BUFFER_START,
  CTX_RING_HEAD,
  CTX_RING_TAIL,
  LRC_STATE_PN,
  MI_BATCH_BUFFER_END,
  MI_BATCH_BUFFER_START,
  MI_BB_PPGTT,
  MI_NOOP,
  PAGE_SIZE,
} from "./gvt-params.js";

/** EBADRQC (invalid request code): not a name the core's errno table carries, so a plain number here. */
export const EBADRQC = 56;
/** A batch buffer longer than this many pages is refused (-EFAULT), so a hostile loop cannot run away. */
export const MAX_BATCH_PAGES = 64;

export interface RingState {
  /** GGTT address of the ring buffer. */
  readonly startGma: number;
  /** Byte offsets into the ring. */
  readonly head: number;
  readonly tail: number;
}

export interface ContextState {
  readonly rootGfn: number;
  readonly ring: RingState;
}

/** The ELSP port of one engine: collects four dwords, then yields element 0's descriptor. */
export class ElspPort {
  readonly #dwords = new Uint32Array(4);
  #index = 0;

  /** Takes one 32-bit write; after the fourth returns element 0's descriptor low dword, else -1. */
  write(value: number): number {
    this.#dwords[3 - this.#index] = value >>> 0;
    if (++this.#index < 4) return -1;
    this.#index = 0;
    return this.#dwords[0]!;
  }

  reset(): void {
    this.#index = 0;
  }
}

/** The LRCA (GGTT address of the context image) of a valid descriptor, or -1. */
export function lrcaOf(descriptorLo: number): number {
  if ((descriptorLo & CTX_DESC_VALID) === 0) return -1;
  return (descriptorLo & CTX_DESC_LRCA_MASK) >>> 0;
}

/** Reads the ring and PPGTT root from a context image: the state, or a negative errno. */
export function readContext(services: VgpuServices, ggtt: GvtGgtt, lrca: number): ContextState | number {
  const gfn = ggtt.guestGfn(lrca / PAGE_SIZE + LRC_STATE_PN);
  if (gfn < 0) return -ERRNO.EFAULT;
  const regs = new Uint8Array(0x40 * 4);
  try {
    services.dmaRw(BigInt(gfn) * 4096n, regs, false);
  } catch (_e) {
    return -ERRNO.EFAULT;
  }
  const v = new DataView(regs.buffer);
  const dw = (i: number): number => v.getUint32(i * 4, true);
  const pdp0 = dw(CTX_PDP0_UDW) * 0x100000000 + dw(CTX_PDP0_LDW);
  return {
    rootGfn: Math.floor(pdp0 / PAGE_SIZE),
    ring: { startGma: dw(CTX_RING_BUFFER_START) & 0xfffff000, head: dw(CTX_RING_HEAD) & 0x1ffffc, tail: dw(CTX_RING_TAIL) & 0x1ffff8 },
  };
}

export interface ScanResult {
  /** 0, -EFAULT or -EBADRQC. */
  readonly status: number;
  /** Bytes copied from guest memory with dmaRw. */
  readonly copied: number;
  readonly batches: number;
}

/** Copies the ring [head, tail) and every batch it starts, and checks their commands. */
export function scanRing(services: VgpuServices, ggtt: GvtGgtt, ppgtt: GvtPpgtt, mm: PpgttMm, ring: RingState): ScanResult {
  let copied = 0;
  let batches = 0;
  const bytes = ring.tail - ring.head;
  if (bytes <= 0) return { status: 0, copied, batches };
  const buf = new Uint8Array(bytes);
  const r = copyGgtt(services, ggtt, ring.startGma + ring.head, buf);
  if (r < 0) return { status: r, copied, batches };
  copied += bytes;
  const v = new DataView(buf.buffer);
  for (let off = 0; off + 4 <= bytes; ) {
    const cmd = v.getUint32(off, true);
    const op = (cmd >>> 23) & 0x3f;
    if (cmd >>> 29 !== 0) return { status: -EBADRQC, copied, batches };
    if (op === MI_NOOP || op === MI_BATCH_BUFFER_END) {
      off += 4;
      continue;
    }
    if (op !== MI_BATCH_BUFFER_START || off + 12 > bytes) return { status: -EBADRQC, copied, batches };
    const gma = v.getUint32(off + 4, true) + (v.getUint32(off + 8, true) & 0xffff) * 0x100000000;
    const b = copyBatch(services, ggtt, ppgtt, mm, gma, (cmd & MI_BB_PPGTT) !== 0);
    if (b < 0) return { status: b, copied, batches };
    copied += b;
    batches++;
    off += 12;
  }
  return { status: 0, copied, batches };
}

/** Copies a batch buffer page by page until MI_BATCH_BUFFER_END: bytes copied, or a negative errno. */
function copyBatch(services: VgpuServices, ggtt: GvtGgtt, ppgtt: GvtPpgtt, mm: PpgttMm, gma: number, usePpgtt: boolean): number {
  const page = new Uint8Array(PAGE_SIZE);
  const v = new DataView(page.buffer);
  let copied = 0;
  let at = gma;
  for (let n = 0; n < MAX_BATCH_PAGES; n++) {
    const len = PAGE_SIZE - (at % PAGE_SIZE);
    const gpa = usePpgtt ? ppgtt.gmaToGpa(mm, at) : ggttGpa(ggtt, at);
    if (gpa < 0) return -ERRNO.EFAULT;
    const chunk = page.subarray(0, len);
    try {
      services.dmaRw(BigInt(gpa), chunk, false);
    } catch (_e) {
      return -ERRNO.EFAULT;
    }
    copied += len;
    for (let off = 0; off + 4 <= len; off += 4) {
      const cmd = v.getUint32(off, true);
      const op = (cmd >>> 23) & 0x3f;
      if (cmd >>> 29 !== 0 || (op !== MI_NOOP && op !== MI_BATCH_BUFFER_END)) return -EBADRQC;
      if (op === MI_BATCH_BUFFER_END) return copied;
    }
    at += len;
  }
  return -ERRNO.EFAULT;
}

/** Copies `out.length` bytes at a GGTT address: 0 or -EFAULT. */
function copyGgtt(services: VgpuServices, ggtt: GvtGgtt, gma: number, out: Uint8Array): number {
  for (let done = 0; done < out.length; ) {
    const at = gma + done;
    const len = Math.min(out.length - done, PAGE_SIZE - (at % PAGE_SIZE));
    const gpa = ggttGpa(ggtt, at);
    if (gpa < 0) return -ERRNO.EFAULT;
    try {
      services.dmaRw(BigInt(gpa), out.subarray(done, done + len), false);
    } catch (_e) {
      return -ERRNO.EFAULT;
    }
    done += len;
  }
  return 0;
}

function ggttGpa(ggtt: GvtGgtt, gma: number): number {
  const gfn = ggtt.guestGfn(Math.floor(gma / PAGE_SIZE));
  return gfn < 0 ? -1 : gfn * PAGE_SIZE + (gma % PAGE_SIZE);
}
