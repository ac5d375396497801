import "reflect-metadata";
export * from "./xen-error.js";
export * from "./frame-radix.js";
export * from "./machine-frames.js";
export * from "./p2m.js";
export * from "./pv-p2m.js";
export * from "./xen-domain.js";
export * from "./dom0-iommu.js";
export * from "./iommu-context.js";
export * from "./xen-iommu.js";
export * from "./grant-table.js";
export * from "./pv-iommu-xenserver.js";
// The 2024 ABI's IOMMU_OP_readable / IOMMU_OP_writeable have the XenServer values (1, 2); they are exported once.
export {
  PvIommu2024,
  type PvIommuOp2024,
  IOMMUOP_query_capabilities,
  IOMMUOP_alloc_context,
  IOMMUOP_free_context,
  IOMMUOP_reattach_device,
  IOMMUOP_map_pages,
  IOMMUOP_unmap_pages,
  IOMMUOP_lookup_page,
  IOMMU_DEFAULT_CONTEXT,
  IOMMU_CREATE_clone,
  PVIOMMU_MAX_PAGES,
  PVIOMMU_MAX_IOVA_ADDR,
  PVIOMMU_DFN_LIMIT,
} from "./pv-iommu-2024.js";
export * from "./xen.js";
export * from "./privcmd.js";
export * from "./guest-pins.js";
export * from "./swiotlb-xen.js";
export * from "./xengt-identity.js";
export * from "./xenserver-dom0.js";
export * from "./ioreq-server.js";
export * from "./aperture.js";
export * from "./xen-adapter.js";
export * from "./write-tracker.js";
export * from "./xen-platform.js";
export * from "./xen-stack.js";
export * from "./scenario-support.js";
export * from "./scenario-guest-balloon.js";
export * from "./plugin.js";
export * from "./bench.js";
