/**
 * Pinning guest frames for a vGPU: all or nothing, refcounted per frame by the
 * backend, accounted by the backend. On KVM this is the VFIO type1 vendor API
 * (iova = GPA in a QEMU container); on Xen, a referenced P2M lookup.
 */
export interface GuestPinPort {
  /** Pins guest frames `gfns[0..n)`, writing their host frames to `out`; throws a KernelError and pins nothing on failure. */
  pin(gfns: ArrayLike<number>, n: number, write: boolean, out: Uint32Array): void;
  /** Drops one pin of each guest frame. */
  unpin(gfns: ArrayLike<number>, n: number): void;
}
