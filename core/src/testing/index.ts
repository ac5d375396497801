export * from "./fixture.js";
export * from "./fake-services.js";
export * from "./errors.js";
