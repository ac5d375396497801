/**
 * Invariants 1-16 of linux-vfio.md section 7, checked from scratch over the
 * state of every live type1 backend. Tests call this after each step under the
 * debug flag (VGPU_IOMMU_DEBUG=1); it costs O(mapped pages), so it is not for
 * large runs. Properties that are statements about a single call (13-16) are
 * asserted by the tests of those calls; here they appear as the state they
 * leave behind: no pin outside a vfio_pfn or an IOMMU mapping.
 */
import type { Type1Iommu } from "./type1-iommu.js";
import type { Process } from "../../host/process.js";
import type { PhysicalMemory } from "../../host/physical-memory.js";
import { testBit } from "./vfio-dma.js";

export class InvariantViolation extends Error {
  constructor(
    readonly invariant: number,
    detail: string,
  ) {
    super(`type1 invariant ${invariant} violated: ${detail}`);
    this.name = "InvariantViolation";
  }
}

const check = (cond: boolean, invariant: number, detail: () => string): void => {
  if (!cond) throw new InvariantViolation(invariant, detail());
};

export function assertType1Invariants(backends: readonly Type1Iommu[], processes: readonly Process[], phys: PhysicalMemory): void {
  const chargedByMm = new Map<unknown, number>();
  let expectedPins = 0;
  for (const iommu of backends) {
    const dmas = [...iommu.dmas.values()];
    const pp = Number(iommu.pgsize / 4096n);
    // 1: no overlap (the tree is sorted by start).
    for (let i = 1; i < dmas.length; i++) check(dmas[i - 1]!.iovaPage + dmas[i - 1]!.npages <= dmas[i]!.iovaPage, 1, () => `mappings at page ${dmas[i - 1]!.iovaPage} and ${dmas[i]!.iovaPage} overlap`);
    // 2
    check(iommu.dmaAvail + dmas.length === iommu.dmaEntryLimit, 2, () => `dma_avail ${iommu.dmaAvail} + ${dmas.length} != ${iommu.dmaEntryLimit}`);
    const first = iommu.domains[0]?.domain;
    let mappedPages = 0;
    let invalid = 0;
    for (const dma of dmas) {
      // 3: each pin lies in its mapping, ref_count >= 1, counted once.
      let vpfns = 0;
      dma.forEachVpfn((index, frame, refs) => {
        vpfns++;
        check(index >= 0 && index < dma.npages && refs >= 1 && frame !== 0, 3, () => `bad vfio_pfn at offset ${index}`);
        if (!phys.isInvalidOrReserved(frame)) expectedPins++;
      });
      check(vpfns === dma.vpfnCount, 3, () => `vpfnCount ${dma.vpfnCount} != ${vpfns}`);
      // 4
      check(dma.vpfnCount === 0 || iommu.devices.length > 0 || iommu.notifiers.length > 0, 4, () => `pins at page ${dma.iovaPage} with no dma_unmap registrant`);
      // 6
      check(dma.iommuMapped === iommu.domains.length > 0, 6, () => `iommu_mapped ${dma.iommuMapped} with ${iommu.domains.length} domains`);
      // 7: charge = pages pinned by either path, non-reserved, counted once.
      let charged = 0;
      for (let i = 0; i < dma.npages; i++) {
        const pinnedFrame = dma.iommuMapped ? first!.iovaToPfn(dma.iovaPage + i) : 0;
        if (dma.iommuMapped) {
          check(pinnedFrame !== 0, 6, () => `page ${dma.iovaPage + i} of a mapped dma is absent from the first domain`);
          if (!phys.isInvalidOrReserved(pinnedFrame)) expectedPins++;
        }
        const frame = pinnedFrame !== 0 ? pinnedFrame : dma.refsAt(i) !== 0 ? dma.frameAt(i) : 0;
        if (frame !== 0 && !phys.isInvalidOrReserved(frame)) charged++;
      }
      if (dma.mm.alive) check(dma.lockedVm === charged, 7, () => `dma at page ${dma.iovaPage} charges ${dma.lockedVm}, expected ${charged}`);
      chargedByMm.set(dma.mm, (chargedByMm.get(dma.mm) ?? 0) + dma.lockedVm);
      if (dma.iommuMapped) mappedPages += dma.npages;
      if (dma.vaddrInvalid) invalid++;
      // 12
      if (iommu.dirtyPageTracking) {
        check(dma.bitmap !== null, 12, () => `no bitmap at page ${dma.iovaPage} while tracking`);
        dma.forEachVpfn((index) => check(testBit(dma.bitmap!, Math.floor(index / pp)), 12, () => `pinned offset ${index} not dirty`));
      } else check(dma.bitmap === null, 12, () => `bitmap at page ${dma.iovaPage} while not tracking`);
    }
    // Every domain maps exactly the mapped dmas, with the first domain's frames.
    for (const d of iommu.domains) check(d.domain.mappedPages === mappedPages, 6, () => `domain ${d.domain.id} maps ${d.domain.mappedPages} pages, expected ${mappedPages}`);
    // 10
    check(iommu.vaddrInvalidCount === invalid, 10, () => `vaddr_invalid_count ${iommu.vaddrInvalidCount} != ${invalid}`);
    check(invalid === 0 || !iommu.hasEmulated, 10, () => "invalid vaddrs with an emulated group attached");
    // 11
    const nonPinned = iommu.domains.reduce((n, d) => n + d.groups.filter((g) => !g.pinnedPageDirtyScope).length, 0);
    check(iommu.numNonPinnedGroups === nonPinned, 11, () => `num_non_pinned_groups ${iommu.numNonPinnedGroups} != ${nonPinned}`);
  }
  // 8: each mm's VFIO charge is the sum of its mappings' charges.
  for (const p of processes) {
    if (!p.alive) continue;
    check(p.mm.lockedVm === (chargedByMm.get(p.mm) ?? 0), 8, () => `mm ${p.pid} locked_vm ${p.mm.lockedVm} != ${chargedByMm.get(p.mm) ?? 0}`);
  }
  // 5 and 9: pins are held only by vfio_pfns and IOMMU mappings; nothing unpinned early, nothing leaked.
  check(phys.totalPins === expectedPins, 9, () => `host holds ${phys.totalPins} pins, mappings and vfio_pfns account for ${expectedPins}`);
}
