export * from "./guest-driver.js";
export * from "./null-services.js";
