/**
 * Device-address arrays filled without a BigInt per page.
 *
 * Model: the core's DeviceMapping carries addresses in a BigUint64Array.
 * Creating one BigInt per page costs tens of nanoseconds, so these helpers
 * write the array through a Uint32Array view of the same buffer (low word,
 * then high word, on a little-endian host), from page numbers or from the
 * DMA-address halves of a scatterlist. On a big-endian host they fall back to
 * BigInt writes.
 *
 * Invariant: out[i] = page_i * 4096 + offset_i exactly, for pages below 2^52.
 */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const TWO_20 = 0x10_0000;

/** out[i] = (firstPage + i) << 12, for i < n. */
export function fillContiguous(out: BigUint64Array, firstPage: number, n: number): void {
  if (!LITTLE_ENDIAN) {
    for (let i = 0; i < n; i++) out[i] = BigInt(firstPage + i) << 12n;
    return;
  }
  const w = new Uint32Array(out.buffer, out.byteOffset, n * 2);
  for (let i = 0; i < n; i++) {
    const p = firstPage + i;
    w[2 * i] = (p % TWO_20) * 4096;
    w[2 * i + 1] = Math.floor(p / TWO_20);
  }
}

/** out[i] = (frames[i] + addPages) << 12, for i < n. */
export function fillFromFrames(out: BigUint64Array, frames: ArrayLike<number>, n: number, addPages = 0): void {
  if (!LITTLE_ENDIAN) {
    for (let i = 0; i < n; i++) out[i] = BigInt(frames[i]! + addPages) << 12n;
    return;
  }
  const w = new Uint32Array(out.buffer, out.byteOffset, n * 2);
  for (let i = 0; i < n; i++) {
    const p = frames[i]! + addPages;
    w[2 * i] = (p % TWO_20) * 4096;
    w[2 * i + 1] = Math.floor(p / TWO_20);
  }
}

/** out[i] = hi[i] << 32 | lo[i], for i < n (a scatterlist's sg_dma_address halves). */
export function fillFromHalves(out: BigUint64Array, hi: Uint32Array, lo: Uint32Array, n: number): void {
  if (!LITTLE_ENDIAN) {
    for (let i = 0; i < n; i++) out[i] = (BigInt(hi[i]!) << 32n) | BigInt(lo[i]!);
    return;
  }
  const w = new Uint32Array(out.buffer, out.byteOffset, n * 2);
  for (let i = 0; i < n; i++) {
    w[2 * i] = lo[i]!;
    w[2 * i + 1] = hi[i]!;
  }
}
