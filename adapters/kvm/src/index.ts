import "reflect-metadata";
export * from "./kvm-vm.js";
export * from "./memory-listener.js";
export * from "./vgpu-attachment.js";
export * from "./kvm-adapter.js";
export * from "./kvm-platform.js";
export * from "./dma-api-parent.js";
export * from "./kvm-stack.js";
export * from "./plugin.js";
