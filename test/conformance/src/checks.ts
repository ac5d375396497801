/**
 * The checks of vendors.md 4.3, each a function from a target factory to a
 * verdict, so a self-test can assert that a check FAILS on a broken vendor
 * without mocha reporting a red test. Each check builds a fresh target, drives
 * the vGPU only through the platform (addVgpu, balloonOut, reset, removeVgpu)
 * and the target's `exercise`, and judges from the services ledger, the
 * dmaUnmap postcondition and the host's counters. A check that cannot make
 * its point (the vendor pinned nothing) fails: an assertion on nothing is a
 * defect.
 */
import type { DirtyReport, PlatformVm } from "@vgpu-iommu/core";
import { hasIntrospection, type CheckId, type ConformanceTarget, type Verdict } from "./conformance-target.js";
import type { Subject } from "./recording-vendor.js";
import { Session } from "./session.js";

type Figures = Record<string, number>;
type Body = (s: Session, violations: string[], figures: Figures) => Promise<string | void>;

export interface ConformanceCheck {
  readonly id: CheckId;
  /** The item of vendors.md 4.3 it checks. */
  readonly clause: string;
  readonly title: string;
  run(setup: () => Promise<ConformanceTarget>): Promise<Verdict>;
}

/** Thrown by a check that finds it does not apply. */
class Skip extends Error {}

/** Repeated violations (type1 retrying a dmaUnmap) once each, with their count. */
function collapse(violations: readonly string[]): string[] {
  const counts = new Map<string, number>();
  for (const v of violations) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].map(([v, n]) => (n === 1 ? v : `${v} (x${n})`));
}

const hex = (a: bigint): string => `0x${a.toString(16)}`;

function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

function check(id: CheckId, clause: string, title: string, body: Body): ConformanceCheck {
  return {
    id,
    clause,
    title,
    async run(setup) {
      const violations: string[] = [];
      const figures: Figures = {};
      let skipped: string | undefined;
      let session: Session | undefined;
      try {
        session = new Session(await setup(), id);
        skipped = (await body(session, violations, figures)) ?? undefined;
      } catch (e) {
        if (e instanceof Skip) skipped = e.message;
        else
          violations.push(`the check stopped: ${describeError(e)}${session?.target.platform.host.kernel.crashed ? ` (the host crashed: ${session.crashReason()})` : ""}`);
      } finally {
        await session?.dispose();
      }
      return { check: id, ok: violations.length === 0, ...(skipped !== undefined && violations.length === 0 ? { skipped } : {}), violations: collapse(violations), figures };
    },
  };
}

function ledgerFindings(subject: Subject, violations: string[]): void {
  for (const v of subject.ledger.violations) violations.push(`${subject.name}: ${v}`);
}

const listGfns = (gfns: readonly number[]): string => `${gfns.slice(0, 8).join(",")}${gfns.length > 8 ? ",..." : ""}`;

function stillPinned(subject: Subject, when: string, violations: string[]): void {
  const n = subject.ledger.livePins();
  if (n === 0) return;
  violations.push(`${subject.name}: ${n} frame(s) still pinned ${when} (gfns ${listGfns(subject.ledger.heldFrames())})`);
}

/** Exercises and checks the vendor actually pinned something, else the check cannot be made. */
async function exercised(s: Session, subject: Subject, vm: PlatformVm, gfns: readonly number[], violations: string[]): Promise<number> {
  await s.exercise(subject, vm, gfns);
  const n = subject.ledger.livePins();
  if (n === 0 && s.vendor.capabilities.ownRequesterId) throw new Skip("the vGPU has its own requester ID and makes no vendor pins (VF)");
  if (n === 0) violations.push(`${subject.name}: exercise(${gfns.length} frames) pinned nothing, so the check cannot be made`);
  return n;
}

async function balloonOut(vm: PlatformVm, block: number, violations: string[]): Promise<void> {
  const r = await vm.balloonOut(block, 1);
  if (typeof r === "number") violations.push(`balloonOut(block ${block}) failed with ${r}`);
}

/** The addresses a vGPU's tables expose (target hook, else ConformanceIntrospection), or undefined when it tells none. */
function visibleAddresses(s: Session, x: Subject): bigint[] | undefined {
  const list = s.target.deviceVisibleAddresses?.(x.real) ?? (hasIntrospection(x.real) ? x.real.deviceVisibleAddresses() : undefined);
  return list === undefined ? undefined : Array.from(list);
}

function ownedAddresses(s: Session, x: Subject): bigint[] {
  return Array.from(s.target.vendorOwnedAddresses?.(x.real) ?? (hasIntrospection(x.real) ? (x.real.vendorOwnedAddresses?.() ?? []) : []));
}

export const pinsBalanced = check("pins-balanced", "1", "every pin is balanced by an unpin or by the sweep of reset or close", async (s, v, f) => {
  const vm = await s.createVm();
  const base = s.snapshot();
  const a = await s.addVgpu(vm);
  const low = s.lowFrames(6);
  f["peakPins"] = await exercised(s, a, vm, [...low, low[0]!, ...s.balloonFrames(vm, 0, 3)], v);
  await balloonOut(vm, 0, v);
  await s.exercise(a, vm, s.lowFrames(4, 3));
  await a.wrapper.reset("flr");
  await s.exercise(a, vm, s.lowFrames(3, 10));
  await vm.removeVgpu(a.wrapper);
  stillPinned(a, "after close", v);
  ledgerFindings(a, v);
  s.compare(base, s.snapshot(), "after close", v);
  const c = a.ledger.counters;
  Object.assign(f, { pinCalls: c.pinCalls, unpinCalls: c.unpinCalls, translations: c.translations, releases: c.releases, framesPinned: c.framesPinned, framesUnpinned: c.framesUnpinned });
});

export const dmaUnmapDropsRange = check("dma-unmap-drops-range", "2", "after dmaUnmap(range) returns, the vGPU holds no pin in the range", async (s, v, f) => {
  const vm = await s.createVm();
  const a = await s.addVgpu(vm);
  const [first, end] = s.balloonBlock(vm, 0);
  const inBlock = s.balloonFrames(vm, 0, 4);
  await exercised(s, a, vm, [...inBlock, ...s.lowFrames(4), inBlock[1]!], v);
  f["pinnedInRange"] = a.ledger.pinsIn(first, end);
  f["pinnedOutside"] = a.ledger.livePins() - f["pinnedInRange"];
  if (f["pinnedInRange"] === 0) v.push(`${a.name}: exercise pinned nothing in balloon block 0, so the check cannot be made`);
  const warnings = s.target.platform.host.stats().warnings;
  await balloonOut(vm, 0, v);
  const told = a.wrapper.dmaUnmaps.filter(([g, n]) => g <= first && g + n >= end).length;
  f["dmaUnmapCalls"] = a.wrapper.dmaUnmaps.length;
  if (told === 0) v.push(`${a.name}: no dmaUnmap covering balloon block 0 reached the vGPU`);
  f["leftInRange"] = a.ledger.pinsIn(first, end);
  if (f["leftInRange"] > 0) v.push(`${a.name}: ${f["leftInRange"]} frame(s) of the unplugged block still pinned`);
  ledgerFindings(a, v);
  const host = s.target.platform.host.stats();
  if (host.crashed) v.push(`the host crashed: ${s.crashReason()}`);
  if (host.warnings > warnings) v.push(`${host.warnings - warnings} WARN(s) during the unplug: ${s.target.platform.host.kernel.warnings.slice(warnings).map((w) => `${w.site}: ${w.message}`).join("; ")}`);
  if (!host.crashed) await vm.removeVgpu(a.wrapper);
});

export const unmappedExactlyOnce = check("unmapped-exactly-once", "3", "each DMA mapping is unmapped exactly once, with its size", async (s, v, f) => {
  const vm = await s.createVm();
  const a = await s.addVgpu(vm);
  const low = s.lowFrames(6);
  await exercised(s, a, vm, [...low, low[2]!, ...s.balloonFrames(vm, 0, 2)], v);
  await balloonOut(vm, 0, v);
  await s.exercise(a, vm, s.lowFrames(3, 20));
  await a.wrapper.reset("flr");
  await s.exercise(a, vm, s.lowFrames(2, 30));
  await vm.removeVgpu(a.wrapper);
  for (const t of a.ledger.translations.values()) if (t.releases === 0 && !t.revoked) v.push(`${a.name}: translation ${t.id} (gfns ${t.gfns.join(",")}) never unmapped`);
  ledgerFindings(a, v);
  const c = a.ledger.counters;
  if (c.bytesUnmapped !== c.bytesMapped) v.push(`${a.name}: ${c.bytesMapped} bytes mapped, ${c.bytesUnmapped} unmapped`);
  Object.assign(f, { translations: c.translations, releases: c.releases, doubleReleases: c.doubleReleases, overUnpins: c.overUnpins, bytesMapped: c.bytesMapped, bytesUnmapped: c.bytesUnmapped });
});

export const noStaleAddress = check("no-stale-address", "4", "after dmaUnmap, the vGPU's tables expose no address that is no longer mapped for it", async (s, v, f) => {
  const vm = await s.createVm();
  const a = await s.addVgpu(vm);
  await exercised(s, a, vm, [...s.balloonFrames(vm, 0, 4), ...s.lowFrames(4)], v);
  const before = visibleAddresses(s, a);
  if (before === undefined) return "the vendor exposes no device-visible addresses: give the target deviceVisibleAddresses or implement ConformanceIntrospection";
  if (a.ledger.counters.bytesMapped === 0) return "the vGPU made no device mapping (it pins only): nothing for the GPU to reach through the parent";
  await balloonOut(vm, 0, v);
  const mine = new Set(ownedAddresses(s, a));
  const after = visibleAddresses(s, a)!.filter((addr) => !mine.has(addr));
  let stale = 0;
  for (const addr of after) {
    if (a.ledger.ownsAddress(addr)) continue;
    stale++;
    v.push(`${a.name}: after dmaUnmap its tables still expose ${hex(addr)}, which is no longer mapped for it`);
  }
  Object.assign(f, { visibleBefore: before.length, visibleAfter: after.length, stale });
  await vm.removeVgpu(a.wrapper);
  return undefined;
});

export const closeLeavesNothing = check("close-leaves-nothing", "1, 3 (close)", "close releases every pin and every DMA mapping", async (s, v, f) => {
  const vm = await s.createVm();
  const base = s.snapshot();
  const available = s.vendor.availableInstances(s.target.type);
  const a = await s.addVgpu(vm);
  const low = s.lowFrames(8);
  f["pinnedBeforeClose"] = await exercised(s, a, vm, [...low, low[0]!, ...s.balloonFrames(vm, 1, 2)], v);
  f["translationsBeforeClose"] = a.ledger.liveTranslations();
  await vm.removeVgpu(a.wrapper);
  stillPinned(a, "after close", v);
  s.compare(base, s.snapshot(), "after close", v);
  const after = s.vendor.availableInstances(s.target.type);
  if (after !== available) v.push(`availableInstances(${s.target.type}) is ${after} after destroy, was ${available}`);
});

export const resetLeavesNothing = check("reset-leaves-nothing", "1 (reset)", "a device reset (FLR) releases every pin and every DMA mapping", async (s, v, f) => {
  const vm = await s.createVm();
  const a = await s.addVgpu(vm);
  const base = s.snapshot();
  const low = s.lowFrames(8);
  f["pinnedBeforeReset"] = await exercised(s, a, vm, [...low, low[3]!], v);
  await a.wrapper.reset("flr");
  stillPinned(a, "after reset(flr)", v);
  s.compare(base, s.snapshot(), "after reset(flr)", v);
  await s.exercise(a, vm, s.lowFrames(2, 40));
  f["pinnedAfterReuse"] = a.ledger.livePins();
  if (f["pinnedAfterReuse"] === 0) v.push(`${a.name}: pins nothing when exercised after the reset`);
  ledgerFindings(a, v);
  await vm.removeVgpu(a.wrapper);
});

export const isolation = check("isolation", "5", "no device-visible address outside what the vGPU owns", async (s, v, f) => {
  if (s.vendor.capabilities.ownRequesterId) return "the vGPU has its own requester ID: the IOMMU isolates it";
  const vmA = await s.createVm();
  const a = await s.addVgpu(vmA);
  const vmB = s.vendor.capabilities.onePerVm ? await s.createVm() : vmA;
  const b = await s.addVgpu(vmB);
  // Different frames for B: in direct mode two mappings of one host frame share a device
  // address, which the platform's checker (one owner per address) cannot tell apart.
  await exercised(s, a, vmA, s.lowFrames(6), v);
  await exercised(s, b, vmB, s.lowFrames(6, 64), v);
  const visible = (x: Subject) => visibleAddresses(s, x);
  const owned = (x: Subject) => ownedAddresses(s, x);
  for (const [x, other] of [
    [a, b],
    [b, a],
  ] as const) {
    const all = visible(x);
    if (all === undefined) return "the vendor exposes no device-visible addresses: give the target deviceVisibleAddresses or implement ConformanceIntrospection";
    const mine = new Set(owned(x));
    const considered = all.filter((addr) => !mine.has(addr));
    f[`addresses ${x === a ? "A" : "B"}`] = considered.length;
    if (considered.length === 0 && x.ledger.counters.bytesMapped === 0) return "the vGPU made no device mapping (it pins only): nothing for the GPU to reach through the parent";
    if (considered.length === 0) v.push(`${x.name}: made device mappings but exposes no device-visible address, so the check cannot be made`);
    for (const addr of considered) {
      if (x.ledger.ownsAddress(addr)) continue;
      v.push(other.ledger.ownsAddress(addr) ? `${x.name}: exposes ${hex(addr)}, which ${other.name} mapped` : `${x.name}: exposes ${hex(addr)}, which is mapped for none of its pages`);
    }
    for (const finding of x.ledger.inner.checkIsolation(considered)) v.push(`${x.name}: the platform's isolation checker reports ${hex(finding.addr)} ${finding.kind === "other-vgpu" ? `owned by ${finding.owner}` : "unmapped"}`);
  }
  await vmA.removeVgpu(a.wrapper);
  await vmB.removeVgpu(b.wrapper);
  return undefined;
});

/** The frames of `gfns` whose bit is clear in every report. */
function reportedClean(reports: readonly DirtyReport[], gfns: readonly number[]): number[] {
  return gfns.filter(
    (gfn) =>
      !reports.some((r) => {
        const i = gfn - r.firstGfn;
        return i >= 0 && i < r.npages && ((r.bitmap[i >> 3]! >> (i & 7)) & 1) === 1;
      }),
  );
}

export const dirtyCoversPins = check("dirty-covers-pins", "6", "while dirty logging is on, every frame the vGPU holds pinned is reported dirty, pass after pass", async (s, v, f) => {
  const vm = await s.createVm();
  const log = vm.dirtyLog;
  const migration = s.vendor.capabilities.migration;
  if (log === undefined && !migration) return "the platform keeps no log of device-dirtied frames in the model and the vendor declares no migration: nothing reports dirty frames";
  const a = await s.addVgpu(vm);
  // Held before logging starts: starting must count them dirty already.
  await exercised(s, a, vm, [...s.lowFrames(4), ...s.balloonFrames(vm, 0, 2)], v);
  f["heldBeforeLogging"] = a.ledger.heldFrames().length;
  if (log !== undefined) {
    const r = await log.start();
    if (r !== 0) v.push(`starting the platform's dirty log failed with ${r}`);
  }
  const report = a.wrapper.dirtyPages;
  if (migration && report === undefined) v.push(`${a.name}: the vendor declares migration but the vGPU gives no dirty report`);
  // The migration loop's passes: new pins before the first two, none before the last, so frames
  // held since earlier passes must be reported again, not once as a write would be.
  const pinnedBefore = [s.lowFrames(4, 8), s.lowFrames(2, 16), []];
  let platformPasses = 0;
  let vendorPasses = 0;
  for (let pass = 1; pass <= pinnedBefore.length; pass++) {
    if (pinnedBefore[pass - 1]!.length > 0) await s.exercise(a, vm, pinnedBefore[pass - 1]!);
    const held = a.ledger.heldFrames();
    f["heldAtLastPass"] = held.length;
    if (log !== undefined) {
      const reports = await log.read();
      if (typeof reports === "number") v.push(`pass ${pass}: reading the platform's dirty log failed with ${reports}`);
      else {
        platformPasses++;
        const clean = reportedClean(reports, held);
        if (clean.length > 0) v.push(`${a.name}: pass ${pass}: the platform's dirty log reports ${clean.length} frame(s) it holds pinned clean (gfns ${listGfns(clean)})`);
      }
    }
    if (migration && report !== undefined) {
      vendorPasses++;
      const clean = reportedClean(
        s.guestRanges(vm).map(([first, end]) => report(first, end - first)),
        held,
      );
      if (clean.length > 0) v.push(`${a.name}: pass ${pass}: its migration dirty report leaves ${clean.length} frame(s) it holds pinned clean (gfns ${listGfns(clean)})`);
    }
  }
  Object.assign(f, { platformPasses, vendorPasses });
  if (log !== undefined) {
    const r = await log.stop();
    if (r !== 0) v.push(`stopping the platform's dirty log failed with ${r}`);
  }
  await vm.removeVgpu(a.wrapper);
  return undefined;
});

export const CONFORMANCE_CHECKS: readonly ConformanceCheck[] = Object.freeze([pinsBalanced, dmaUnmapDropsRange, unmappedExactlyOnce, noStaleAddress, closeLeavesNothing, resetLeavesNothing, isolation, dirtyCoversPins]);

export function conformanceCheck(id: CheckId): ConformanceCheck {
  const c = CONFORMANCE_CHECKS.find((x) => x.id === id);
  if (c === undefined) throw new RangeError(`no conformance check ${id}`);
  return c;
}

/** Runs the checks (all by default) one after another; each builds its own target. */
export async function runConformance(setup: () => Promise<ConformanceTarget>, ids?: readonly CheckId[]): Promise<Verdict[]> {
  const out: Verdict[] = [];
  for (const c of ids === undefined ? CONFORMANCE_CHECKS : ids.map(conformanceCheck)) out.push(await c.run(setup));
  return out;
}

export function formatVerdict(v: Verdict): string {
  const head = `${v.check}: ${v.skipped !== undefined ? `skipped (${v.skipped})` : v.ok ? "ok" : "FAILED"}`;
  const figures = Object.entries(v.figures)
    .map(([k, n]) => `${k}=${n}`)
    .join(" ");
  return [head + (figures === "" ? "" : ` [${figures}]`), ...v.violations.map((x) => `  - ${x}`)].join("\n");
}
