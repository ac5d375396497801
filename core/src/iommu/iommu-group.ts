/**
 * An IOMMU group as VFIO sees it: either backed by real IOMMU hardware (a PCI
 * function bound to vfio-pci) or emulated (a mediated device, whose DMA never
 * goes through the container's IOMMU).
 */
import type { IommuHardware, ReservedRegion } from "./iommu-domain.js";

export type IommuGroupType = "iommu" | "emulated";

let nextGroupId = 0;

export class IommuGroup {
  readonly id = nextGroupId++;

  private constructor(
    readonly type: IommuGroupType,
    readonly hw: IommuHardware | undefined,
    readonly reservedRegions: readonly ReservedRegion[],
  ) {}

  static emulated(): IommuGroup {
    return new IommuGroup("emulated", undefined, []);
  }

  static backedBy(hw: IommuHardware, reservedRegions: readonly ReservedRegion[] = []): IommuGroup {
    return new IommuGroup("iommu", hw, reservedRegions);
  }
}
