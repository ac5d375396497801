/**
 * Events of an NVIDIA-like vGPU, named in the past tense and emitted after the
 * state they report is committed. `warned` is the shim's WARN_ON / error log:
 * tests assert its count.
 */

/** The two RM request modes of nv_vgpu_translate_gfn_to_pfn (VGPU_ADDR_TYPE_T). */
export type AddrType = "GET_HOST_PFN" | "GET_IOVA";

/** Events the shim posts to the userspace vGPU manager plugin. */
export type ManagerEvent = "VM_START" | "VM_REBOOT" | "VM_SHUTDOWN" | "REGISTER_ACCESS";
/** How the plugin answered: in time and OK, in time with an error, or not within the shim's timeout. */
export type ManagerResult = "ok" | "error" | "timeout";

export type RevokeReason = "dma-unmap" | "rm-unpin" | "core-revoked";

export interface NvidiaVgpuEvents {
  opened(e: { vgpu: string; usage: number }): void;
  closed(e: { vgpu: string; pluginKilled: boolean }): void;
  /** A VFIO_DEVICE_RESET finished (sweep and VF FLR done). */
  wasReset(e: { vgpu: string; kind: string; managerResult: ManagerResult }): void;
  translated(e: { vgpu: string; mode: AddrType; npages: number; batches: number }): void;
  unpinned(e: { vgpu: string; mode: AddrType; npages: number; notPinned: number }): void;
  dmaUnmapped(e: { vgpu: string; firstGfn: number; npages: number; hostPfnUnpinned: number; iovaUnpinned: number; batches: number }): void;
  /**
   * A batch's core translation went while RM still holds its node: its device
   * mapping is gone (the core does not let a mapping outlive its pin), so RM's
   * IOVAs for it are stale until RM unpins or the vGPU is reset or closed.
   */
  mappingRevoked(e: { vgpu: string; baseGfn: number; iovaPage: number; npages: number; reason: RevokeReason; repinned: number }): void;
  swept(e: { vgpu: string; reason: "reset" | "close"; hostPfnUnpinned: number; iovaUnpinned: number; nodesDestroyed: number }): void;
  managerEventPosted(e: { vgpu: string; event: ManagerEvent; result: ManagerResult }): void;
  warned(e: { vgpu: string; site: string; details: Readonly<Record<string, unknown>> }): void;
}
