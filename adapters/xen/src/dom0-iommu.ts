/**
 * `dom0-iommu=` (docs/misc/xen-command-line.pandoc): what the IOMMU context of
 * Dom0's devices contains.
 *
 * Model:
 * - `passthrough` (PV only, default off): Dom0's devices bypass translation;
 * - `strict` (PV only, default off): when off, the context maps all host RAM
 *   1:1 (BFN == MFN), so any Dom0 device reaches any guest page at its MFN;
 *   when on, only Dom0's own frames (and its grant maps) are mapped;
 * - a PVH Dom0 is always strict, and its context is its P2M (BFN == GFN);
 *   `passthrough` does not apply to it and is ignored;
 * - `map-reserved` (default on): reserved regions (RMRRs) are identity-mapped
 *   whatever the mode.
 *
 * Invariant: `reachesAllRam` holds exactly for a PV Dom0 in passthrough or
 * non-strict mode: the only configurations where "DMA address = MFN" works.
 */
export interface Dom0IommuOptions {
  readonly passthrough?: boolean;
  readonly strict?: boolean;
  readonly mapReserved?: boolean;
}

export type Dom0Kind = "pv" | "pvh";

export interface Dom0IommuMode {
  readonly passthrough: boolean;
  readonly strict: boolean;
  readonly mapReserved: boolean;
  /** Every host RAM frame is reachable by Dom0's devices at BFN == MFN. */
  readonly reachesAllRam: boolean;
}

export function resolveDom0Iommu(kind: Dom0Kind, options: Dom0IommuOptions = {}): Dom0IommuMode {
  const mapReserved = options.mapReserved ?? true;
  if (kind === "pvh") return { passthrough: false, strict: true, mapReserved, reachesAllRam: false };
  const passthrough = options.passthrough ?? false;
  const strict = options.strict ?? false;
  return { passthrough, strict, mapReserved, reachesAllRam: passthrough || !strict };
}
