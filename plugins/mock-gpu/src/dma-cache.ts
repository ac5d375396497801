/**
 * The per-vGPU DMA cache, after GVT-g's `struct gvt_dma` (kvmgt.c): one entry
 * per guest frame the device can reach, holding the translation that pinned
 * and mapped it, its device address and a reference count.
 *
 * Model: entries live in typed-array slots (gfn, device address, refcount) with
 * a free-slot stack; the translation handle of a slot sits in a plain array.
 * Two B+ tree indexes, as GVT's two rb-trees: gfn -> slot serves invalidation
 * (a guest frame range) and device address -> slot serves teardown from a
 * shadow entry (which holds only the address).
 *
 * Invariants: a live slot is in both indexes and no free slot is in either; a
 * gfn and a device address each name at most one live slot; a live slot's
 * refcount is >= 1; `count` is the number of live slots and `refs` the sum of
 * their refcounts.
 */
import sortedBtree from "sorted-btree";
import type { TranslationHandle } from "@vgpu-iommu/core";

type BTree<K, V> = import("sorted-btree").default<K, V>;

export class DmaCache {
  #gfn = new Float64Array(16);
  #addr = new BigUint64Array(16);
  #ref = new Uint32Array(16);
  #handle: (TranslationHandle | undefined)[] = new Array<TranslationHandle | undefined>(16).fill(undefined);
  #free = new Int32Array(16);
  #freeTop = 0;
  #used = 0;
  #count = 0;
  #refs = 0;
  readonly #byGfn: BTree<number, number> = new sortedBtree.default<number, number>();
  readonly #byAddr: BTree<bigint, number> = new sortedBtree.default<bigint, number>();

  /** Live entries (GVT's nr_cache_entries). */
  get count(): number {
    return this.#count;
  }

  /** Sum of the live entries' refcounts. */
  get refs(): number {
    return this.#refs;
  }

  /** The slot caching `gfn`, or -1. */
  findGfn(gfn: number): number {
    return this.#byGfn.get(gfn) ?? -1;
  }

  /** The slot whose device address is `addr`, or -1. */
  findAddr(addr: bigint): number {
    return this.#byAddr.get(addr) ?? -1;
  }

  gfnOf(slot: number): number {
    return this.#gfn[slot]!;
  }

  addrOf(slot: number): bigint {
    return this.#addr[slot]!;
  }

  refOf(slot: number): number {
    return this.#ref[slot]!;
  }

  /** Inserts a new entry with refcount 1; the gfn and the address must both be absent. */
  insert(gfn: number, addr: bigint, handle: TranslationHandle): number {
    if (this.#byGfn.has(gfn) || this.#byAddr.has(addr)) throw new RangeError(`dma cache: gfn ${gfn} or address 0x${addr.toString(16)} is cached already`);
    const slot = this.#freeTop > 0 ? this.#free[--this.#freeTop]! : this.#grab();
    this.#gfn[slot] = gfn;
    this.#addr[slot] = addr;
    this.#ref[slot] = 1;
    this.#handle[slot] = handle;
    this.#byGfn.set(gfn, slot);
    this.#byAddr.set(addr, slot);
    this.#count++;
    this.#refs++;
    return slot;
  }

  /** kref_get; returns the new refcount. */
  get(slot: number): number {
    this.#refs++;
    return ++this.#ref[slot]!;
  }

  /** kref_put without the release: returns the new refcount; at 0 the caller removes the entry. */
  put(slot: number): number {
    this.#refs--;
    return --this.#ref[slot]!;
  }

  /** Takes the entry out of both indexes, whatever its refcount; returns its translation handle. */
  remove(slot: number): TranslationHandle {
    const handle = this.#handle[slot]!;
    this.#byGfn.delete(this.#gfn[slot]!);
    this.#byAddr.delete(this.#addr[slot]!);
    this.#refs -= this.#ref[slot]!;
    this.#ref[slot] = 0;
    this.#handle[slot] = undefined;
    this.#free[this.#freeTop++] = slot;
    this.#count--;
    return handle;
  }

  /** Slots whose gfn lies in [first, end), in gfn order. */
  slotsInRange(first: number, end: number): number[] {
    const out: number[] = [];
    this.#byGfn.forRange(first, end, false, (_gfn, slot) => {
      out.push(slot);
    });
    return out;
  }

  /** Every live slot, in gfn order. */
  slots(): number[] {
    return [...this.#byGfn.values()];
  }

  #grab(): number {
    if (this.#used === this.#gfn.length) {
      const n = this.#gfn.length * 2;
      const gfn = new Float64Array(n);
      gfn.set(this.#gfn);
      const addr = new BigUint64Array(n);
      addr.set(this.#addr);
      const ref = new Uint32Array(n);
      ref.set(this.#ref);
      const free = new Int32Array(n);
      free.set(this.#free);
      this.#gfn = gfn;
      this.#addr = addr;
      this.#ref = ref;
      this.#free = free;
      for (let i = this.#handle.length; i < n; i++) this.#handle.push(undefined);
    }
    return this.#used++;
  }
}
