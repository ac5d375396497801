/**
 * What is wrong with a stack file: one issue per offending value, each naming
 * the path inside the file (a JSON pointer, with the line and column where the
 * text has them), the value found and what is allowed there.
 */

export interface StackIssue {
  /** JSON pointer into the stack file, e.g. "/vms/0/memory". */
  readonly path: string;
  /** The offending value; undefined for a missing key. */
  readonly value: unknown;
  /** What is allowed at this path. */
  readonly allowed: string;
  readonly line?: number;
  readonly column?: number;
}

export class StackError extends Error {
  constructor(
    readonly source: string,
    readonly issues: readonly StackIssue[],
  ) {
    super(issues.map((i) => formatIssue(source, i)).join("\n"));
    this.name = "StackError";
  }
}

const show = (v: unknown): string => {
  if (v === undefined) return "missing";
  const text = typeof v === "bigint" ? v.toString() : JSON.stringify(v);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
};

/** `file:line:col: /path: value is not allowed: what is allowed` (a missing key reads "is missing"). */
export function formatIssue(source: string, issue: StackIssue): string {
  const where = issue.line === undefined ? source : `${source}:${issue.line}:${issue.column ?? 1}`;
  const what = issue.value === undefined ? "is missing" : `${show(issue.value)} is not allowed`;
  return `${where}: ${issue.path === "" ? "/" : issue.path}: ${what}: ${issue.allowed}`;
}
