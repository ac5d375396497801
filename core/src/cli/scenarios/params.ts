/** Parameter schemas of the built-in scenarios: an object of defaulted properties, nothing else. */
import type { ParamsSchema } from "../scenario-api.js";

type Property = Readonly<Record<string, unknown>> & { readonly default: unknown; readonly description: string };

export const params = (properties: Readonly<Record<string, Property>>): ParamsSchema => ({ type: "object", additionalProperties: false, properties });

export const int = (def: number, description: string, min = 0, max = 1 << 30): Property => ({ type: "integer", minimum: min, maximum: max, default: def, description: `${description} (an integer in ${min}..${max})` });

export const bool = (def: boolean, description: string): Property => ({ type: "boolean", default: def, description: `${description} (true or false)` });

export const oneOf = <T extends string>(def: T, values: readonly T[], description: string): Property => ({ enum: [...values], default: def, description: `${description} (${values.join(", ")})` });
