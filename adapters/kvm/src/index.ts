import "reflect-metadata";
export * from "./kvm-vm.js";
export * from "./memory-listener.js";
export * from "./vgpu-attachment.js";
