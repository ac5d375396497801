/** Sizes as stack files write them: "16GiB", "512MiB", "1.5GiB", or a number of bytes. */

const UNITS: Readonly<Record<string, bigint>> = { B: 1n, KiB: 1n << 10n, MiB: 1n << 20n, GiB: 1n << 30n, TiB: 1n << 40n };

/** Bytes of a size the schema accepted; undefined when a fraction does not come out in whole bytes. */
export function parseSize(v: string | number): bigint | undefined {
  if (typeof v === "number") return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : undefined;
  const m = /^(0|[1-9][0-9]*)(?:\.([0-9]+))?\s*(B|KiB|MiB|GiB|TiB)$/.exec(v);
  if (m === null) return undefined;
  const unit = UNITS[m[3]!]!;
  const frac = m[2] ?? "";
  const scale = 10n ** BigInt(frac.length);
  const num = BigInt(m[1]!) * scale + BigInt(frac === "" ? "0" : frac);
  const bytes = num * unit;
  return bytes % scale === 0n ? bytes / scale : undefined;
}

/** The shortest exact binary-unit spelling of a byte count: 17179869184 -> "16GiB". */
export function formatSize(bytes: bigint | number): string {
  const b = BigInt(bytes);
  for (const unit of ["TiB", "GiB", "MiB", "KiB"] as const) {
    const u = UNITS[unit]!;
    if (b >= u && b % u === 0n) return `${b / u}${unit}`;
  }
  return `${b}B`;
}

/** A byte count for people: 1.5 GiB, 12 MiB, 4 KiB. */
export function humanSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}
