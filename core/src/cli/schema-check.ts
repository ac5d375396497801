/**
 * JSON Schema validation (Ajv, draft 2020-12) turned into stack issues: one
 * per offending path, saying what is allowed there in words taken from the
 * schema's `description` where it has one.
 */
import { Ajv2020, type ErrorObject, type ValidateFunction } from "ajv/dist/2020.js";
import type { StackIssue } from "./stack-error.js";

type Schema = Readonly<Record<string, unknown>>;

const strictAjv = new Ajv2020({ allErrors: true, verbose: true, strict: true, allowUnionTypes: true });
const defaultingAjv = new Ajv2020({ allErrors: true, verbose: true, strict: true, allowUnionTypes: true, useDefaults: true });
const compiled = new WeakMap<Schema, ValidateFunction>();
const compiledDefaulting = new WeakMap<Schema, ValidateFunction>();

/** Validates `data` against `schema`; issue paths are prefixed with `prefix`. With `fillDefaults`, missing properties take their defaults (in place). */
export function checkSchema(schema: Schema, data: unknown, prefix = "", fillDefaults = false): StackIssue[] {
  const cache = fillDefaults ? compiledDefaulting : compiled;
  let validate = cache.get(schema);
  if (validate === undefined) {
    validate = (fillDefaults ? defaultingAjv : strictAjv).compile(schema);
    cache.set(schema, validate);
  }
  if (validate(data)) return [];
  const issues: StackIssue[] = [];
  const seen = new Set<string>();
  for (const e of validate.errors ?? []) {
    const issue = toIssue(e, prefix);
    if (issue === undefined || seen.has(issue.path)) continue;
    seen.add(issue.path);
    issues.push(issue);
  }
  return issues;
}

/** Throws when a plugin's declared schema is not a schema Ajv accepts. */
export function assertSchema(schema: Schema): void {
  strictAjv.compile(schema);
}

const escape = (key: string): string => key.replace(/~/g, "~0").replace(/\//g, "~1");

function toIssue(e: ErrorObject, prefix: string): StackIssue | undefined {
  const parent = (e.parentSchema ?? {}) as { description?: string; properties?: Record<string, { description?: string }> };
  const described = parent.description;
  const path = prefix + e.instancePath;
  switch (e.keyword) {
    case "required": {
      const missing = (e.params as { missingProperty: string }).missingProperty;
      const d = parent.properties?.[missing]?.description;
      return { path: `${path}/${escape(missing)}`, value: undefined, allowed: d === undefined ? "a required key" : `a required key: ${d}` };
    }
    case "additionalProperties": {
      const key = (e.params as { additionalProperty: string }).additionalProperty;
      const known = Object.keys(parent.properties ?? {});
      const value = (e.data as Record<string, unknown>)[key];
      return {
        path: `${path}/${escape(key)}`,
        value,
        allowed: known.length === 0 ? `no key "${key}" here` : `an unknown key "${key}": the keys of ${path === "" ? "/" : path} are ${known.join(", ")}`,
      };
    }
    case "enum": {
      const allowed = (e.params as { allowedValues: unknown[] }).allowedValues;
      return { path, value: e.data, allowed: `one of ${allowed.map((v) => JSON.stringify(v)).join(", ")}` };
    }
    case "type":
      return { path, value: e.data, allowed: described ?? `a value of type ${String((e.params as { type: unknown }).type)}` };
    case "minItems":
      return { path, value: e.data, allowed: `a list of at least ${String((e.params as { limit: number }).limit)} item(s)` };
    case "uniqueItems":
      return { path, value: e.data, allowed: "a list without duplicates" };
    case "if":
    case "anyOf":
    case "oneOf":
      return undefined;
    default:
      return { path, value: e.data, allowed: described ?? e.message ?? e.keyword };
  }
}
