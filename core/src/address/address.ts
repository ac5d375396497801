/**
 * Typed addresses and page numbers.
 *
 * Model: every address space has its own brand, so a GPA cannot be passed where
 * an HVA is expected without a conversion that names both spaces. Byte
 * addresses are `bigint` (u64, as at the uapi); page numbers are plain numbers
 * (exact up to 2^53, i.e. every 4 KiB page of a 64-bit space) because they sit
 * in typed arrays on hot paths.
 *
 * Vocabulary: a page is 4 KiB. `Pfn` is a host frame, `Gfn` a guest frame,
 * `IovaPfn` a page of the VFIO "iova" space (the GPA in a QEMU container),
 * `HvaPfn` a page of a process's virtual space.
 */
declare const brand: unique symbol;
type Brand<T, S extends string> = T & { readonly [brand]: S };

export type Gpa = Brand<bigint, "gpa">;
export type Hva = Brand<bigint, "hva">;
export type Hpa = Brand<bigint, "hpa">;
/** The VFIO container's IO virtual address: equal to the GPA in a QEMU container. */
export type Iova = Brand<bigint, "iova">;
/** What the parent device's DMA engine uses (host IOVA, or the PA in direct mode). */
export type DmaAddr = Brand<bigint, "dma_addr">;

export type Pfn = Brand<number, "pfn">;
export type Gfn = Brand<number, "gfn">;
export type IovaPfn = Brand<number, "iova_pfn">;
export type HvaPfn = Brand<number, "hva_pfn">;

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PAGE_SIZE_N = 4096n;
export const U64_MAX = (1n << 64n) - 1n;

export const gpa = (v: bigint): Gpa => v as Gpa;
export const hva = (v: bigint): Hva => v as Hva;
export const hpa = (v: bigint): Hpa => v as Hpa;
export const iova = (v: bigint): Iova => v as Iova;
export const dmaAddr = (v: bigint): DmaAddr => v as DmaAddr;
export const pfn = (v: number): Pfn => v as Pfn;
export const gfn = (v: number): Gfn => v as Gfn;
export const iovaPfn = (v: number): IovaPfn => v as IovaPfn;
export const hvaPfn = (v: number): HvaPfn => v as HvaPfn;

/** Page number of a byte address; exact because addresses are below 2^64. */
export const pageOf = (addr: bigint): number => Number(addr >> 12n);
/** Byte address of a page number. */
export const addrOfPage = (page: number): bigint => BigInt(page) << 12n;

export const iovaToPfn = (a: Iova): IovaPfn => pageOf(a) as IovaPfn;
export const iovaPfnToIova = (p: IovaPfn): Iova => addrOfPage(p) as Iova;
export const hvaToPfn = (a: Hva): HvaPfn => pageOf(a) as HvaPfn;
export const hvaPfnToHva = (p: HvaPfn): Hva => addrOfPage(p) as Hva;
export const gpaToGfn = (a: Gpa): Gfn => pageOf(a) as Gfn;
export const gfnToGpa = (g: Gfn): Gpa => addrOfPage(g) as Gpa;
export const pfnToHpa = (p: Pfn): Hpa => addrOfPage(p) as Hpa;
export const hpaToPfn = (a: Hpa): Pfn => pageOf(a) as Pfn;
/** In a QEMU container the VFIO iova is the GPA, so a guest frame is an iova page. */
export const gfnToIovaPfn = (g: Gfn): IovaPfn => g as number as IovaPfn;
