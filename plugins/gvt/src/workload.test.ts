import { expect } from "chai";
import { apIndex, closeAndCheck, makeRig, type Rig } from "./gvt.test.helpers.js";
import { MI_NOOP } from "./gvt-params.js";
import { batchStart, pte } from "./testing/guest-driver.js";
import { EBADRQC } from "./workload.js";

const LRCA_SLOT = 100;
const RING_SLOT = 110;

/** A PPGTT with 8 leaves and a batch page mapped at gma 0x10000, and a context whose ring holds `cmds`. */
function prepare(rig: Rig, cmds: (batchGma: number) => number[]): { root: number; desc: number } {
  const root = rig.drv.newTable();
  for (let i = 0; i < 8; i++) rig.drv.map(root, i * 4096, 0x100 + i);
  const batch = rig.drv.newBatch([MI_NOOP, MI_NOOP]);
  rig.drv.map(root, 0x10000, batch);
  const desc = rig.drv.buildContext(apIndex(rig, LRCA_SLOT) * 4096, root, apIndex(rig, RING_SLOT) * 4096, cmds(0x10000));
  return { root, desc };
}

describe("gvt: workload submission through the ELSP", () => {
  it("an ELSP write shadows the context's PPGTT and copies ring and batch with dmaRw, pinning neither", async () => {
    const rig = await makeRig();
    const { root, desc } = prepare(rig, (b) => [MI_NOOP, ...batchStart(b), MI_NOOP]);
    // Three GGTT entries (context pages and ring) are the only GGTT pins.
    expect(rig.svc.pinnedFrames).to.equal(3);
    const done: { status: number; copied: number; rootGfn: number }[] = [];
    rig.vgpu.on("workloadCompleted", (e) => done.push(e));
    rig.drv.elspSubmit(desc);
    expect(done).to.deep.equal([{ vgpu: "vgpu0", rootGfn: root, status: 0, copied: 24 + 4096 }]);
    // 8 + 1 leaves (the batch page is a PPGTT leaf too) and 3 GGTT entries.
    expect(rig.svc.pinnedFrames).to.equal(3 + 9);
    expect(rig.svc.protectedFrames.size).to.equal(4);
    expect(rig.vgpu.counters.workloads).to.equal(1);
    expect(rig.svc.counters.irqs).to.equal(1);
    // The ring and batch pages are pinned only by their GTT entries, not by the copy.
    const ringGfn = rig.vgpu.ggtt.guestGfn(apIndex(rig, RING_SLOT));
    expect(rig.svc.refs[ringGfn]).to.equal(1);
    await closeAndCheck(rig);
  });

  it("a batch address that does not translate is -EFAULT: the VM is unhealthy and enters failsafe", async () => {
    const rig = await makeRig();
    const { desc } = prepare(rig, () => [...batchStart(0x7770000)]);
    const failsafe: number[] = [];
    rig.vgpu.on("failsafeEntered", (e) => failsafe.push(e.status));
    rig.drv.elspSubmit(desc);
    expect(failsafe).to.deep.equal([-14]);
    expect(rig.vgpu.failsafe).to.equal(true);
    expect(rig.vgpu.counters.workloadsFailed).to.equal(1);
    // In failsafe, further submissions are dropped.
    rig.drv.elspSubmit(desc);
    expect(rig.vgpu.counters.droppedInFailsafe).to.equal(0, "MMIO writes are only stored in failsafe");
    expect(rig.vgpu.counters.workloads + rig.vgpu.counters.workloadsFailed).to.equal(1);
    await rig.vgpu.reset("flr");
    expect(rig.vgpu.failsafe).to.equal(false);
    await closeAndCheck(rig);
  });

  it("a GGTT batch address whose entry names a frame outside guest RAM is -EFAULT too", async () => {
    const rig = await makeRig({ services: { guestPages: 0x8000 } });
    const root = rig.drv.newTable();
    rig.drv.map(root, 0, 0x100);
    const batchGma = apIndex(rig, 200) * 4096;
    rig.drv.ggttWrite(apIndex(rig, 200), 0x9000); // its shadow is scratch; the guest entry stays
    const desc = rig.drv.buildContext(apIndex(rig, LRCA_SLOT) * 4096, root, apIndex(rig, RING_SLOT) * 4096, [...batchStart(batchGma, false)]);
    rig.drv.elspSubmit(desc);
    expect(rig.vgpu.failsafe).to.equal(true);
    expect(rig.vgpu.ggtt.counters.scratched).to.equal(1);
    expect(rig.vgpu.counters.workloadsFailed).to.equal(1);
    await closeAndCheck(rig);
  });

  it("an unknown command is -EBADRQC and enters failsafe", async () => {
    const rig = await makeRig();
    const { desc } = prepare(rig, () => [0x7a000004]);
    rig.drv.elspSubmit(desc);
    expect(rig.vgpu.failsafe).to.equal(true);
    expect(EBADRQC).to.equal(56);
    await closeAndCheck(rig);
  });

  it("a descriptor whose context page is not mapped fails the workload without failsafe", async () => {
    const rig = await makeRig();
    const codes: number[] = [];
    rig.vgpu.on("workloadCompleted", (e) => codes.push(e.status));
    rig.drv.elspSubmit((apIndex(rig, 300) * 4096) | 1);
    expect(codes).to.deep.equal([-22]);
    expect(rig.vgpu.failsafe).to.equal(false);
    // An invalid descriptor (valid bit clear) is ignored.
    rig.drv.elspSubmit(apIndex(rig, 300) * 4096);
    expect(codes).to.have.length(1);
    await closeAndCheck(rig);
  });

  it("post-shadow entries are resolved before the ring is scanned", async () => {
    const rig = await makeRig();
    const { root, desc } = prepare(rig, (b) => [...batchStart(b)]);
    rig.drv.elspSubmit(desc);
    const [lo, hi] = pte(0x900);
    const pt = rig.drv.map(root, 0x3000, 0x103).table;
    rig.drv.writeEntry(pt, 3, lo, hi, true);
    expect(rig.vgpu.ppgtt.pendingPostShadow()).to.equal(1);
    rig.drv.elspSubmit(desc);
    expect(rig.vgpu.ppgtt.pendingPostShadow()).to.equal(0);
    expect(rig.svc.refs[0x900]).to.equal(1);
    expect(rig.vgpu.counters.workloads).to.equal(2);
    await closeAndCheck(rig);
  });
});
