/** The built-in scenarios: the fifteen of vendors.md section 5, in its order, and the default tour. */
import { defineScenario, type ScenarioDefinition } from "../scenario-api.js";
import { balloonWhilePinned } from "./balloon.js";
import { bootFramebuffer } from "./boot-framebuffer.js";
import { driverReload } from "./driver-reload.js";
import { hostileGuest } from "./hostile-guest.js";
import { hugePages } from "./huge-pages.js";
import { lifecycle } from "./lifecycle.js";
import { memlockPressure } from "./memlock-pressure.js";
import { memslotChurn } from "./memslot-churn.js";
import { migrationDirty } from "./migration.js";
import { multiVgpu } from "./multi-vgpu.js";
import { pteChurn } from "./pte-churn.js";
import { races } from "./races.js";
import { ringSubmission } from "./ring-submission.js";
import { shutdown } from "./shutdown.js";
import { sriovVf } from "./sriov-vf.js";
import { vmReset } from "./vm-reset.js";

export const BUILTIN_SCENARIOS: readonly ScenarioDefinition[] = [
  defineScenario(bootFramebuffer),
  defineScenario(ringSubmission),
  defineScenario(pteChurn),
  defineScenario(hugePages),
  defineScenario(balloonWhilePinned),
  defineScenario(memslotChurn),
  defineScenario(vmReset),
  defineScenario(driverReload),
  defineScenario(shutdown),
  defineScenario(migrationDirty),
  defineScenario(memlockPressure),
  defineScenario(multiVgpu),
  defineScenario(hostileGuest),
  defineScenario(races),
  defineScenario(sriovVf),
  defineScenario(lifecycle),
];
