export * from "./fake-services.js";
