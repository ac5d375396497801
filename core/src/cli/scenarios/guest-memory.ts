/**
 * Where scenarios find guest frames: RAM below 4 GiB from 16 MiB up (clear of
 * firmware, legacy holes and the guest driver's own pool at 8-16 MiB), and a
 * VM's balloon blocks. Choices come from the scenario's seeded generator, so
 * a run is reproducible.
 */
import { GUEST_DRIVER_POOL, type ScenarioContext, type ScenarioVm } from "../scenario-api.js";

const PAGE = 4096n;
const LOW_LIMIT = 3n << 30n;
const FIRST_GFN = GUEST_DRIVER_POOL.firstGfn + GUEST_DRIVER_POOL.npages;

/** Guest frames [first, end) of RAM below 4 GiB a scenario may use. */
export function lowRamFrames(vm: ScenarioVm): { first: number; end: number } {
  const low = vm.spec.ramBytes < LOW_LIMIT ? vm.spec.ramBytes : LOW_LIMIT;
  return { first: FIRST_GFN, end: Number(low / PAGE) };
}

/** `n` distinct guest frames of low RAM, in a seeded random order. */
export function pickFrames(ctx: ScenarioContext, vm: ScenarioVm, n: number): number[] {
  const { first, end } = lowRamFrames(vm);
  const span = end - first;
  if (n > span) throw new RangeError(`${vm.name} has ${span} usable frames, fewer than ${n}`);
  const out: number[] = [];
  const taken = new Set<number>();
  while (out.length < n) {
    const gfn = first + ctx.rng.below(span);
    if (taken.has(gfn)) continue;
    taken.add(gfn);
    out.push(gfn);
  }
  return out;
}

/** `n` consecutive guest frames of low RAM from a seeded offset. */
export function pickRun(ctx: ScenarioContext, vm: ScenarioVm, n: number, align = 1): number {
  const { first, end } = lowRamFrames(vm);
  const slots = Math.floor((end - first - n) / align);
  if (slots < 0) throw new RangeError(`${vm.name} has no run of ${n} frames`);
  return Math.ceil(first / align) * align + ctx.rng.below(slots) * align;
}

/** The first frame and frame count of balloon block `block`, or undefined without a balloon. */
export function balloonBlock(vm: ScenarioVm, block: number): { first: number; npages: number } | undefined {
  const base = vm.vm.balloonBase;
  const b = vm.spec.balloon;
  if (base === undefined || b === undefined) return undefined;
  const npages = Number(b.blockBytes / PAGE);
  return { first: Number(base / PAGE) + block * npages, npages };
}

/** Balloon blocks of a VM. */
export const balloonBlocks = (vm: ScenarioVm): number => (vm.spec.balloon === undefined ? 0 : Number(vm.spec.balloon.bytes / vm.spec.balloon.blockBytes));

/** The first frame past the end of guest RAM (and balloon): a frame no memory slot holds. */
export function frameOutsideRam(vm: ScenarioVm): number {
  const ram = vm.spec.ramBytes + (vm.spec.balloon?.bytes ?? 0n);
  // Above 4 GiB with room for RAM and hot-plug alignment, well past anything mapped.
  return Number(((8n << 30n) + 2n * ram + (1n << 30n)) / PAGE);
}
