/**
 * The embedded default stack: what `vgpu-iommu run` runs when given no file.
 * Realistic sizes (two 16 GiB guests, memlock at 8 GiB), cheap to run because
 * guest memory is faulted in and pinned lazily.
 */
export const DEFAULT_STACK_SOURCE = "(embedded default)";

export const DEFAULT_STACK_YAML = `# KVM, a GVT-g-like GPU, two vGPUs, 16 GiB guests, memlock at 8 GiB
name: default
seed: 1
host:
  memory: 64GiB
  fragmentation: 0.25        # a quarter of the 2 MiB blocks already broken up
processes:
  - { name: qemu-vm0, memlock: 8GiB }
  - { name: qemu-vm1, memlock: 8GiB }
hypervisor:
  package: "@vgpu-iommu/adapter-kvm"
  settings: { dmaMode: dma-iommu, strict: false, dmaMaskBits: 39 }
iommu:
  backend: vfio-type1v2
  params: { dmaEntryLimit: 65535 }
vendors:
  - package: "@vgpu-iommu/plugin-gvt"
vms:
  - name: vm0
    process: qemu-vm0
    memory: 16GiB
    backing: thp
    balloon: { size: 1GiB, block: 2MiB }
  - name: vm1
    process: qemu-vm1
    memory: 16GiB
    backing: thp
    balloon: { size: 1GiB, block: 2MiB }
vgpus:
  - { name: vgpu0, vm: vm0, vendor: "@vgpu-iommu/plugin-gvt", type: GVTg_V5_4 }
  - { name: vgpu1, vm: vm1, vendor: "@vgpu-iommu/plugin-gvt", type: GVTg_V5_4 }
scenario:
  name: lifecycle
  params: { width: 1920, height: 1080, balloonBlocks: 4, pagesPerBlock: 32 }
`;
