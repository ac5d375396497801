/**
 * The typed-array baseline sketch (shared/bench/baseline-sketch.js), run in
 * the bench's own process so its figures and the type1 cases share a machine,
 * a Node and a moment. The logic is the sketch's, line for line: batches of
 * 512 pages, one memlock check per batch, a pin bit, a u16 refcount, a host
 * frame and an IOVA per page, host frames in shuffled 2 MiB runs.
 */

export interface BaselineFigures {
  /** ns per page: pin + account + map. */
  readonly pin: number;
  /** ns per random translation. */
  readonly translate: number;
  /** ns per page: unpin + unaccount. */
  readonly unpin: number;
  /** Bytes of per-page state the sketch holds (bitmap + refs + hpa + iova). */
  readonly bytesPerPage: number;
}

const now = (): number => Number(process.hrtime.bigint());
const BATCH = 512;

export function runBaseline(guestPages: number): BaselineFigures {
  const G = guestPages;
  const runs = G / 512;
  const runOrder = new Uint32Array(runs);
  for (let i = 0; i < runs; i++) runOrder[i] = i;
  for (let i = runs - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    const t = runOrder[i]!;
    runOrder[i] = runOrder[j]!;
    runOrder[j] = t;
  }
  const hostPfnOf = (g: number): number => 0x100000 + runOrder[g >>> 9]! * 512 + (g & 511);
  const pinned = new Uint32Array(G >>> 5);
  const refs = new Uint16Array(G);
  const hpa = new Float64Array(G);
  const iovaOf = new Float64Array(G);
  let locked = 0;
  let iovaNext = 1;
  const limit = G;
  let t0 = now();
  for (let b = 0; b < G; b += BATCH) {
    if (locked + BATCH > limit) throw new Error("ENOMEM");
    locked += BATCH;
    let runStart = -1;
    let runHpa = 0;
    let runLen = 0;
    for (let g = b; g < b + BATCH; g++) {
      pinned[g >>> 5]! |= 1 << (g & 31);
      refs[g]!++;
      const h = hostPfnOf(g);
      hpa[g] = h;
      if (runLen > 0 && h === runHpa + runLen) runLen++;
      else {
        for (let k = 0; k < runLen; k++) iovaOf[runStart + k] = iovaNext + k;
        iovaNext += runLen;
        runStart = g;
        runHpa = h;
        runLen = 1;
      }
    }
    for (let k = 0; k < runLen; k++) iovaOf[runStart + k] = iovaNext + k;
    iovaNext += runLen;
  }
  const tPin = now() - t0;
  const q = new Float64Array(1 << 22);
  for (let i = 0; i < q.length; i++) q[i] = Math.floor(Math.random() * G) * 4096 + (i & 4095);
  let s = 0;
  t0 = now();
  for (let i = 0; i < q.length; i++) {
    const g = Math.floor(q[i]! / 4096);
    s += hpa[g]! * 4096 + (q[i]! - g * 4096);
  }
  const tX = now() - t0;
  t0 = now();
  for (let g = 0; g < G; g++)
    if (--refs[g]! === 0) {
      pinned[g >>> 5]! &= ~(1 << (g & 31));
      hpa[g] = 0;
      iovaOf[g] = 0;
      locked--;
    }
  const tU = now() - t0;
  if (!(s > 0) || locked !== 0) throw new Error("baseline sketch: inconsistent result");
  const bytes = pinned.byteLength + refs.byteLength + hpa.byteLength + iovaOf.byteLength;
  return { pin: tPin / G, translate: tX / q.length, unpin: tU / G, bytesPerPage: bytes / G };
}
