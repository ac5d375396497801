/**
 * Typed arrays carved from shared slabs: the per-call arrays of the map paths
 * (frame lists, scatterlists, segment tables) without one ArrayBuffer each.
 *
 * Model: V8 gives every ArrayBuffer its own zeroed backing store from the
 * system allocator and counts it as external memory, which costs microseconds
 * and drives garbage collections; a view of an existing buffer costs tens of
 * nanoseconds. Arrays of at most 64 bytes live on the JS heap and are already
 * cheap, and large ones amortise their own buffer: both are allocated
 * directly. Everything in between is cut from the current slab by bumping an
 * offset; a full slab is replaced, and the old one is collected when its last
 * view is.
 *
 * Invariants: a carved array is zero-filled (slab memory is never handed out
 * twice); every carved array is 8-byte aligned; arrays never overlap. Code
 * must not view an array's `.buffer` beyond its own byteOffset and length.
 */

const SLAB_BYTES = 1 << 16;
/** V8_TYPED_ARRAY_MAX_SIZE_IN_HEAP: smaller typed arrays are heap objects. */
const ON_HEAP_BYTES = 64;
/** Larger requests get a buffer of their own, so a slab wastes at most this much. */
const MAX_CARVED_BYTES = SLAB_BYTES / 4;

let slab = new ArrayBuffer(SLAB_BYTES);
let used = 0;

/** Reserves `bytes` in the current slab (replacing it when full); returns the offset. */
function take(bytes: number): number {
  if (used + bytes > SLAB_BYTES) {
    slab = new ArrayBuffer(SLAB_BYTES);
    used = 0;
  }
  const at = used;
  used += (bytes + 7) & ~7;
  return at;
}

const carved = (bytes: number): boolean => bytes > ON_HEAP_BYTES && bytes <= MAX_CARVED_BYTES;

/** A zeroed Uint32Array of `n` elements. */
export function u32Array(n: number): Uint32Array {
  if (!carved(n * 4)) return new Uint32Array(n);
  const at = take(n * 4);
  return new Uint32Array(slab, at, n);
}

/** A zeroed Float64Array of `n` elements. */
export function f64Array(n: number): Float64Array {
  if (!carved(n * 8)) return new Float64Array(n);
  const at = take(n * 8);
  return new Float64Array(slab, at, n);
}

/**
 * `columns` zeroed Uint32Arrays of `n` elements each, adjacent in one region
 * (a structure-of-arrays record). Views need a buffer whatever their size, so
 * small records are carved too.
 */
export function u32Columns(columns: number, n: number): Uint32Array[] {
  const bytes = columns * n * 4;
  const at = bytes <= MAX_CARVED_BYTES ? take(bytes) : -1;
  const buffer = at < 0 ? new ArrayBuffer(bytes) : slab;
  const out: Uint32Array[] = [];
  for (let c = 0; c < columns; c++) out.push(new Uint32Array(buffer, Math.max(at, 0) + c * n * 4, n));
  return out;
}

/**
 * A zeroed BigUint64Array of `n` elements and a Uint32Array over the same
 * bytes (carved like columns), so 64-bit values can be stored as two u32 halves (element 2i the low
 * half, 2i + 1 the high one) without creating a BigInt each.
 */
export function u64WithHalves(n: number): { readonly u64: BigUint64Array; readonly halves: Uint32Array } {
  const bytes = n * 8;
  const at = bytes <= MAX_CARVED_BYTES ? take(bytes) : -1;
  const buffer = at < 0 ? new ArrayBuffer(bytes) : slab;
  const offset = Math.max(at, 0);
  return { u64: new BigUint64Array(buffer, offset, n), halves: new Uint32Array(buffer, offset, n * 2) };
}

/** The halves layout above is the machine's: BigUint64Array elements are little-endian on every platform Node supports. */
if (new Uint8Array(BigUint64Array.of(1n).buffer)[0] !== 1) throw new Error("vgpu-iommu needs a little-endian machine");
