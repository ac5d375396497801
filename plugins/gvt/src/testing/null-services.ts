/**
 * VgpuServices that pin and map nothing, for measuring the vendor's own cost:
 * `translate` answers a reused result with the next device address (no
 * allocation), `release` only counts. Balanced use leaves `live` at zero.
 */
import type { FrameSpec, IsolationFinding, Translation, TranslationHandle, TranslateOptions, VgpuServices } from "@vgpu-iommu/core";

export class NullVgpuServices implements VgpuServices {
  readonly vm = "null-vm";
  readonly parentDevice = { name: "null-parent" };
  translates = 0;
  releases = 0;
  #nextPage = 0x100000;
  readonly #handles: TranslationHandle[] = [];
  readonly #dmaAddrs = new BigUint64Array(512);
  readonly #pfns = new Uint32Array(512);
  readonly #result: { handle: TranslationHandle; pfns: Uint32Array; dmaAddrs: BigUint64Array } = { handle: { id: 0 }, pfns: this.#pfns, dmaAddrs: this.#dmaAddrs };

  get live(): number {
    return this.translates - this.releases;
  }

  translate(frames: FrameSpec, _options: TranslateOptions): Translation {
    const n = "npages" in frames ? frames.npages : frames.length;
    const id = this.translates++;
    let h = this.#handles[id & 0xffff];
    if (h === undefined || h.id !== id) this.#handles[id & 0xffff] = h = { id };
    this.#result.handle = h;
    for (let i = 0; i < n; i++) this.#dmaAddrs[i] = BigInt((this.#nextPage + i) * 4096);
    this.#nextPage += n;
    return this.#result;
  }

  release(_handle: TranslationHandle): void {
    this.releases++;
  }

  pinPages(gfn: number, npage: number, _prot: number, out: Uint32Array): number {
    for (let i = 0; i < npage; i++) out[i] = gfn + i;
    return npage;
  }

  unpinPages(_gfn: number, _npage: number): void {}

  pinPagesArray(gfns: ArrayLike<number>, npage: number, _prot: number, out: Uint32Array): number {
    for (let i = 0; i < npage; i++) out[i] = gfns[i]!;
    return npage;
  }

  unpinPagesArray(_gfns: ArrayLike<number>, npage: number): number {
    return npage;
  }

  dmaRw(_gpa: bigint, data: Uint8Array, write: boolean): void {
    if (!write) data.fill(0);
  }

  checkIsolation(_visible: ArrayLike<bigint>): IsolationFinding[] {
    return [];
  }

  protect(_gfn: number): number {
    return 0;
  }

  unprotect(_gfn: number): number {
    return 0;
  }

  injectIrq(_vector: number): boolean {
    return true;
  }
}
