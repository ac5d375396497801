export * from "./conformance-target.js";
export * from "./services-ledger.js";
export * from "./recording-vendor.js";
export * from "./session.js";
export * from "./checks.js";
export * from "./vendor-conformance.js";
