/**
 * A simulated process: its mm, its RLIMIT_MEMLOCK, its capabilities and its
 * file descriptors. Threads are not modelled, so a process is its own group
 * leader, which is the task type1 records for accounting.
 */
import { Mm, type VmaProt } from "./mm.js";
import { MemoryObject, type BackingKind } from "./memory-object.js";
import type { PhysicalMemory } from "./physical-memory.js";
import { hvaPfnToHva, type Hva, hvaToPfn, PAGE_SIZE, U64_MAX } from "../address/address.js";
import { HostError } from "../errors/kernel-error.js";

export type Capability = "CAP_IPC_LOCK" | "CAP_SYS_RESOURCE" | "CAP_SYS_RAWIO";

/** RLIM_INFINITY. */
export const RLIM_INFINITY = U64_MAX;

export interface ProcessOptions {
  readonly comm?: string;
  readonly uid?: number;
  /** RLIMIT_MEMLOCK in bytes; RLIM_INFINITY when omitted. */
  readonly memlockBytes?: bigint;
  readonly capabilities?: readonly Capability[];
}

export interface MmapOptions {
  readonly length: bigint;
  readonly backing?: BackingKind;
  readonly prot?: VmaProt;
  /** Map an existing object (a memfd another process mapped) instead of a new one. */
  readonly object?: MemoryObject;
  readonly fragmentation?: number;
}

/** What an open file descriptor refers to; implemented by the subsystems that own device nodes. */
export interface OpenFile {
  ioctl(request: number, arg: unknown, current: Process): Promise<number>;
  release(): void;
}

export class Process {
  readonly mm: Mm;
  readonly comm: string;
  readonly uid: number;
  #rlimitMemlock = 0n;
  #memlockLimitPages = 0;
  readonly #caps: Set<Capability>;
  readonly files = new Map<number, OpenFile>();
  #nextFd = 3;

  constructor(
    readonly pid: number,
    private readonly phys: PhysicalMemory,
    options: ProcessOptions = {},
  ) {
    this.mm = new Mm(pid, phys);
    this.comm = options.comm ?? `proc${pid}`;
    this.uid = options.uid ?? 0;
    this.rlimitMemlock = options.memlockBytes ?? RLIM_INFINITY;
    this.#caps = new Set(options.capabilities ?? []);
  }

  get alive(): boolean {
    return this.mm.alive;
  }

  capable(cap: Capability): boolean {
    return this.#caps.has(cap);
  }

  setCapability(cap: Capability, on: boolean): void {
    if (on) this.#caps.add(cap);
    else this.#caps.delete(cap);
  }

  /** RLIMIT_MEMLOCK in bytes. */
  get rlimitMemlock(): bigint {
    return this.#rlimitMemlock;
  }

  set rlimitMemlock(bytes: bigint) {
    this.#rlimitMemlock = bytes;
    this.#memlockLimitPages = Number(bytes >> 12n);
  }

  /** RLIMIT_MEMLOCK in pages, saturating like `rlimit >> PAGE_SHIFT` (kept with the limit: read on every charge). */
  get memlockLimitPages(): number {
    return this.#memlockLimitPages;
  }

  /** mmap of anonymous guest RAM (or of an existing shared object); returns its HVA. */
  mmap(options: MmapOptions): Hva {
    if (options.length <= 0n || options.length % BigInt(PAGE_SIZE) !== 0n) throw new HostError("EINVAL", "mmap-length-unaligned", { length: options.length });
    const npages = Number(options.length / BigInt(PAGE_SIZE));
    const object =
      options.object ??
      new MemoryObject(this.phys, { backing: options.backing ?? "scattered-4k", npages, ...(options.fragmentation === undefined ? {} : { fragmentation: options.fragmentation }) });
    const page = this.mm.mmap(object, 0, npages, options.prot ?? { read: true, write: true });
    return hvaPfnToHva(page as never);
  }

  munmap(addr: Hva): void {
    this.mm.munmap(hvaToPfn(addr));
  }

  /** The memory object mapped at `addr`, e.g. to share a memfd with a new process. */
  objectAt(addr: Hva): MemoryObject {
    const vma = this.mm.findVma(hvaToPfn(addr));
    if (vma === undefined) throw new HostError("EFAULT", "no-vma", { addr });
    return vma.object;
  }

  installFile(file: OpenFile): number {
    const fd = this.#nextFd++;
    this.files.set(fd, file);
    return fd;
  }

  /** Process exit: every fd is closed, then the mm is torn down. */
  exit(): void {
    if (!this.mm.alive) return;
    for (const [fd, file] of [...this.files]) {
      this.files.delete(fd);
      file.release();
    }
    this.mm.teardown();
    this.mm.put();
  }
}
