/** The module parameters of vfio_iommu_type1 (/sys/module/vfio_iommu_type1/parameters). */
export class Type1Params {
  /** Maximum user DMA mappings per container, read when a container sets its IOMMU. */
  dmaEntryLimit = 65535;
  /** Every IOMMU mapping is one page. */
  disableHugepages = false;
  /** Allow IOMMU-backed groups without interrupt remapping. */
  allowUnsafeInterrupts = false;
}
