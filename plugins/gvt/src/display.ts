/**
 * The vGPU's display as the host sees it (vendors.md 1.9; dmabuf.c,
 * fb_decoder.c): `VFIO_DEVICE_QUERY_GFX_PLANE` decodes the guest's primary or
 * cursor plane registers into a framebuffer description, and
 * `VFIO_DEVICE_GET_GFX_DMABUF` exports it.
 *
 * Model. A dma-buf object is one decoded plane `{gma, width, height, stride,
 * size, format}`; a query that decodes to the same description returns the
 * same object (and id). Each export reads the *host* GGTT entries of the
 * surface (DMA addresses) and takes one extra reference on each through
 * `pinByDma` (intel_gvt_dma_pin_guest_page); if any page is not in the DMA
 * cache, every reference taken so far is dropped and the export fails with
 * -EINVAL. Releasing an export drops its references (put_pages).
 *
 * Invariants: the references an export holds are exactly the DMA pages it
 * recorded; a displayed framebuffer therefore keeps its guest pages pinned
 * independently of the GGTT entries that first mapped them.
 */
import { KernelError, type PlaneInfo } from "@vgpu-iommu/core";
import type { GvtDmaCache } from "./dma-cache.js";
import { SCRATCH, type GvtGgtt } from "./ggtt.js";
import {
  CURSOR_MODE_128_ARGB,
  CURSOR_MODE_256_ARGB,
  CURSOR_MODE_64_ARGB,
  DISPLAY_PLANE_ENABLE,
  DISPPLANE_BGRX101010,
  DISPPLANE_BGRX565,
  DISPPLANE_BGRX888,
  DISPPLANE_PIXFORMAT_SHIFT,
  DISPPLANE_RGBX888,
  PAGE_SIZE,
  REG,
} from "./gvt-params.js";

export type PlaneKind = "primary" | "cursor";

interface DmabufObject {
  readonly id: number;
  readonly plane: PlaneKind;
  readonly gma: number;
  readonly width: number;
  readonly height: number;
  readonly stride: number;
  readonly npages: number;
  readonly format: number;
  /** One array of DMA pages per live export. */
  readonly exports: Float64Array[];
}

export class GvtDisplay {
  readonly #objects = new Map<number, DmabufObject>();
  #nextId = 1;

  constructor(
    private readonly vreg: Uint32Array,
    private readonly ggtt: GvtGgtt,
    private readonly cache: GvtDmaCache,
  ) {}

  /** Decodes a plane: its description, or undefined when the plane is off (-ENODEV, "plane not ready"). */
  queryPlane(plane: PlaneKind): PlaneInfo | undefined {
    const fb = plane === "primary" ? this.#decodePrimary() : this.#decodeCursor();
    if (fb === undefined) return undefined;
    const npages = Math.ceil((fb.stride * fb.height) / PAGE_SIZE);
    if (npages === 0) throw new KernelError("EINVAL", "gvt-plane-empty", { plane });
    if (fb.gma % PAGE_SIZE !== 0) throw new KernelError("EFAULT", "gvt-plane-not-aligned", { plane, gma: fb.gma });
    if (!this.ggtt.validRange(fb.gma / PAGE_SIZE, npages)) throw new KernelError("EFAULT", "gvt-plane-outside-partition", { plane, gma: fb.gma, npages });
    if (this.ggtt.guestGfn(fb.gma / PAGE_SIZE) < 0) throw new KernelError("EINVAL", "gvt-plane-base-not-mapped", { plane, gma: fb.gma });
    let obj = [...this.#objects.values()].find(
      (o) => o.plane === plane && o.gma === fb.gma && o.width === fb.width && o.height === fb.height && o.stride === fb.stride && o.format === fb.format && o.npages === npages,
    );
    if (obj === undefined) {
      obj = { id: this.#nextId++, plane, gma: fb.gma, width: fb.width, height: fb.height, stride: fb.stride, npages, format: fb.format, exports: [] };
      this.#objects.set(obj.id, obj);
    }
    return { dmabufId: obj.id, width: obj.width, height: obj.height, stride: obj.stride, size: npages * PAGE_SIZE, gmaddr: BigInt(obj.gma) };
  }

  /** Exports a decoded plane: one extra reference per page, all or nothing. */
  getDmabuf(id: number): void {
    const obj = this.#objects.get(id);
    if (obj === undefined) throw new KernelError("ENOENT", "gvt-dmabuf-unknown", { dmabufId: id });
    const first = obj.gma / PAGE_SIZE;
    const pages = new Float64Array(obj.npages);
    for (let i = 0; i < obj.npages; i++) {
      const dma = this.ggtt.hostEntry(first + i);
      const r = dma === undefined || dma === SCRATCH ? -1 : this.cache.pinByDma(dma);
      if (r < 0) {
        for (let j = 0; j < i; j++) this.cache.unmapByDma(pages[j]!);
        throw new KernelError("EINVAL", "gvt-dmabuf-page-not-cached", { dmabufId: id, page: i });
      }
      pages[i] = dma!;
    }
    obj.exports.push(pages);
  }

  /** Closes one export of the object: its references go. Nothing exported is a no-op. */
  releaseDmabuf(id: number): void {
    const pages = this.#objects.get(id)?.exports.pop();
    if (pages === undefined) return;
    for (let i = 0; i < pages.length; i++) this.cache.unmapByDma(pages[i]!);
  }

  /** References held by live exports. */
  exportedRefs(): number {
    let n = 0;
    for (const o of this.#objects.values()) for (const e of o.exports) n += e.length;
    return n;
  }

  /** intel_vgpu_dmabuf_cleanup: every export released, every object forgotten. */
  cleanup(): void {
    for (const o of this.#objects.values()) while (o.exports.length > 0) this.releaseDmabuf(o.id);
    this.#objects.clear();
  }

  #decodePrimary(): { gma: number; width: number; height: number; stride: number; format: number } | undefined {
    const cntr = this.vreg[REG.DSPACNTR >> 2]!;
    if ((cntr & DISPLAY_PLANE_ENABLE) === 0) return undefined;
    const format = (cntr >>> DISPPLANE_PIXFORMAT_SHIFT) & 0xf;
    const bpp = format === DISPPLANE_BGRX888 || format === DISPPLANE_RGBX888 || format === DISPPLANE_BGRX101010 ? 32 : format === DISPPLANE_BGRX565 ? 16 : 0;
    if (bpp === 0) throw new KernelError("EINVAL", "gvt-plane-format", { format });
    const src = this.vreg[REG.PIPEASRC >> 2]!;
    return {
      gma: this.vreg[REG.DSPASURF >> 2]!,
      width: ((src >>> 16) & 0xfff) + 1,
      height: (src & 0xfff) + 1,
      stride: this.vreg[REG.DSPASTRIDE >> 2]!,
      format,
    };
  }

  #decodeCursor(): { gma: number; width: number; height: number; stride: number; format: number } | undefined {
    const mode = this.vreg[REG.CURACNTR >> 2]! & 0x3f;
    if (mode === 0) return undefined;
    const side = mode === CURSOR_MODE_64_ARGB ? 64 : mode === CURSOR_MODE_128_ARGB ? 128 : mode === CURSOR_MODE_256_ARGB ? 256 : 0;
    if (side === 0) throw new KernelError("EINVAL", "gvt-cursor-mode", { mode });
    return { gma: this.vreg[REG.CURABASE >> 2]!, width: side, height: side, stride: side * 4, format: mode };
  }
}
