/** A seeded generator, so every run of the model is reproducible. */
import { xoroshiro128plus } from "pure-rand/generator/xoroshiro128plus";

type Generator = ReturnType<typeof xoroshiro128plus>;

export class SeededRng {
  readonly #gen: Generator;

  constructor(readonly seed: number) {
    this.#gen = xoroshiro128plus(seed);
  }

  /** A uniform number in [0, 1). */
  float(): number {
    return (this.#gen.next() >>> 0) / 4294967296;
  }

  /** A uniform integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.float() * n);
  }

  /** Fisher-Yates shuffle of `a[start, end)` in place. */
  shuffle(a: Uint32Array, start = 0, end = a.length): void {
    for (let i = end - 1; i > start; i--) {
      const j = start + this.below(i - start + 1);
      const t = a[i]!;
      a[i] = a[j]!;
      a[j] = t;
    }
  }
}
