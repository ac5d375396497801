/**
 * Bench cases of the GVT-g-like vendor: `gvt.ggtt-write`, ns per present
 * 8-byte GGTT write through BAR0 into an empty slot, each naming a new guest
 * frame (a cache miss).
 * - on KVM: the miss's VFIO type1 pin (charged to the VMM) and dma-iommu map
 *   on the parent GPU through the translate API, plus the shadow update; one
 *   fresh VM per repetition;
 * - plugin only: the same writes on services that pin and map nothing, i.e.
 *   the vendor's own share (BAR0 decode, GGTT, the gvt_dma cache's two indexes).
 * The value is the median of the repetitions.
 */
import { createKvmStack } from "@vgpu-iommu/adapter-kvm";
import { GvtVendor, measureGgttWrites, runGvtBench, type GvtVgpu } from "@vgpu-iommu/plugin-gvt";
import { NullVgpuServices } from "@vgpu-iommu/plugin-gvt/testing";
import { median, type Measured } from "./result.js";

export { GVT_GGTT_WRITE_TARGET_NS } from "@vgpu-iommu/plugin-gvt";

const WRITES = 16384;
const FIRST_GFN = 0x1000;

export async function measureGvtGgttWrite(reps: number): Promise<Measured> {
  const runs: number[] = [];
  let mappings = 0;
  for (let r = 0; r < reps; r++) {
    const stack = createKvmStack({ host: { ramBytes: 1n << 30n, seed: 5 } });
    const vm = await stack.platform.createVm({ name: "bench", ramBytes: 256n << 20n });
    const vgpu = (await vm.addVgpu(new GvtVendor(), "GVTg_V5_4", "gvt-bench")) as GvtVgpu;
    // Faulted in, as memory the guest driver allocated and wrote is: the case measures pin, map and shadow update.
    const byte = new Uint8Array(1);
    for (let g = FIRST_GFN; g < FIRST_GFN + 2 * WRITES; g++) vm.guestRead(BigInt(g) << 12n, byte);
    const m = measureGgttWrites(vgpu, { writes: WRITES, firstGfn: FIRST_GFN });
    runs.push(m.nsPerOp);
    mappings = m.mappings;
    await vm.shutdown();
  }
  return { value: median(runs), runs, note: `KVM, dma-iommu: ${WRITES} writes per run, ${mappings} type1 pins + parent DMA maps` };
}

export async function measureGvtPluginOnly(reps: number): Promise<Measured> {
  const runs: number[] = [];
  for (let r = 0; r < reps; r++) runs.push((await runGvtBench(new NullVgpuServices(), { writes: WRITES })).nsPerOp);
  return { value: median(runs), runs, note: "the vendor's own share: services that pin and map nothing" };
}
