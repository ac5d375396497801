/** `@vgpu-iommu/core/cli`: the command's functions, for tests and tools that drive runs without a shell. */
export * from "./scenario-api.js";
export * from "./stack-error.js";
export * from "./stack-schema.js";
export * from "./stack-loader.js";
export * from "./stack-composer.js";
export * from "./scenario-runner.js";
export * from "./run-recorder.js";
export * from "./pin-ledger.js";
export * from "./summary.js";
export * from "./trace.js";
export * from "./report.js";
export * from "./sizes.js";
export * from "./run-stack.js";
export * from "./default-stack.js";
export * from "./plugin-discovery.js";
export { BUILTIN_SCENARIOS } from "./scenarios/index.js";
