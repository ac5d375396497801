export * from "./fake-services.js";
export * from "./guest-driver.js";
export * from "./null-services.js";
