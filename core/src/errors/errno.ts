/** Linux errno values (x86-64), the shared error vocabulary of every layer. */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOTTY: 25,
  ENOSPC: 28,
  EDEADLK: 35,
  ENOSYS: 38,
  EOVERFLOW: 75,
  EBADFD: 77,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
  ETIMEDOUT: 110,
  EREMOTEIO: 121,
} as const;

export type ErrnoName = keyof typeof ERRNO;

const NAMES = new Map<number, ErrnoName>(Object.entries(ERRNO).map(([k, v]) => [v, k as ErrnoName]));

export const errnoName = (errno: number): ErrnoName | undefined => NAMES.get(Math.abs(errno));
