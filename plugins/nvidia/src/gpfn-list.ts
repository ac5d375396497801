/**
 * The shim's `gpfn_list` (vendors.md 2.2): guest frames pinned in host-PFN
 * mode, each with a reference count. Every GET_HOST_PFN request pins each of
 * its frames once more (VFIO refcounts per IOVA) and takes one reference here;
 * so the count of a frame equals the pins this vGPU holds on it in that mode.
 *
 * Kept in a B+ tree keyed by frame (the shim's rb-tree), which gives ordered
 * range walks for the DMA_UNMAP notifier and the migration dirty report
 * without one object per frame.
 */
import sortedBtree from "sorted-btree";

type BTree<K, V> = import("sorted-btree").default<K, V>;

export class GpfnList {
  readonly #refs: BTree<number, number> = new sortedBtree.default<number, number>();
  #total = 0;

  /** Frames in the list. */
  get size(): number {
    return this.#refs.size;
  }

  /** Sum of the reference counts: pins held in host-PFN mode. */
  get references(): number {
    return this.#total;
  }

  refcount(gpfn: number): number {
    return this.#refs.get(gpfn) ?? 0;
  }

  /** add_gpfn_buffer_to_list: one reference per listed frame (a repeat takes another). */
  addAll(gpfns: ArrayLike<number>, from: number, to: number): void {
    const refs = this.#refs;
    for (let i = from; i < to; i++) {
      const g = gpfns[i]!;
      refs.set(g, (refs.get(g) ?? 0) + 1);
    }
    this.#total += to - from;
  }

  /** remove_gpfn_from_list: drops one reference, erasing the frame at zero; false when it was not listed. */
  drop(gpfn: number): boolean {
    const r = this.#refs.get(gpfn);
    if (r === undefined) return false;
    if (r === 1) this.#refs.delete(gpfn);
    else this.#refs.set(gpfn, r - 1);
    this.#total--;
    return true;
  }

  /** Calls `f(gpfn, refcount)` for each listed frame in [first, end), in order. */
  forRange(first: number, end: number, f: (gpfn: number, refs: number) => void): void {
    this.#refs.forRange(first, end, false, f);
  }

  /** Empties the list; returns the references it held. */
  clear(): number {
    const n = this.#total;
    this.#refs.clear();
    this.#total = 0;
    return n;
  }
}
