export * from "./fixture.js";
