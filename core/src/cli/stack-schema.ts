/**
 * The stack file's JSON Schema (draft 2020-12) and its TypeScript shape.
 *
 * A stack names everything a run composes: the host's memory and how
 * fragmented it is, the VMM processes with their RLIMIT_MEMLOCK and
 * capabilities, the hypervisor adapter and the IOMMU backend with their
 * settings, vendor plugins by package name, VMs, vGPUs and their types, and
 * the scenario with its parameters. Sizes are strings with a binary unit
 * ("16GiB", "512MiB") or a number of bytes. Every object refuses keys it does
 * not know, so a typo is an error, not a silently ignored setting.
 *
 * The `description` of a constrained property says what is allowed: error
 * messages quote it.
 */

export const SIZE_PATTERN = "^(0|[1-9][0-9]*)(\\.[0-9]+)?\\s*(B|KiB|MiB|GiB|TiB)$";
export const MEMLOCK_PATTERN = "^((0|[1-9][0-9]*)(\\.[0-9]+)?\\s*(B|KiB|MiB|GiB|TiB)|unlimited)$";
const SIZE_TEXT = 'a size such as "16GiB", "512MiB" or "4KiB" (units B, KiB, MiB, GiB, TiB), or a number of bytes';

const size = (what: string): Record<string, unknown> => ({
  description: `${what}: ${SIZE_TEXT}`,
  type: ["string", "integer"],
  pattern: SIZE_PATTERN,
  minimum: 0,
});

const NAME = { type: "string", pattern: "^[a-z][a-z0-9-]{0,31}$", description: "a name of lowercase letters, digits and dashes, starting with a letter" };
const PACKAGE = { type: "string", pattern: "^(@[a-z0-9-~][a-z0-9-._~]*/)?[a-z0-9-~][a-z0-9-._~]*$", description: 'an npm package name such as "@vgpu-iommu/adapter-kvm"' };
const SETTINGS = { type: "object", description: "the plugin's settings (checked against the schema the plugin declares)" };

export const CAPABILITIES = ["CAP_IPC_LOCK", "CAP_SYS_RESOURCE", "CAP_SYS_RAWIO"] as const;
export const BACKINGS = ["scattered-4k", "thp", "hugetlbfs"] as const;
export const IOMMU_BACKENDS = ["vfio-type1v2"] as const;

export const STACK_SCHEMA = {
  $schema: "https://json-schema.org/draft/2020-12/schema",
  $id: "https://vgpu-iommu.invalid/stack.schema.json",
  title: "vgpu-iommu stack",
  type: "object",
  additionalProperties: false,
  required: ["hypervisor", "vendors", "vms", "vgpus", "scenario"],
  properties: {
    name: { type: "string", description: "a label for the stack" },
    description: { type: "string" },
    seed: { type: "integer", minimum: 0, maximum: 2147483647, description: "an integer in 0..2147483647" },
    host: {
      type: "object",
      additionalProperties: false,
      properties: {
        memory: size("host RAM"),
        fragmentation: { type: "number", minimum: 0, maximum: 0.99, description: "the fraction of host 2 MiB blocks broken up before the VMs boot, 0 to 0.99" },
      },
    },
    processes: {
      type: "array",
      description: "VMM processes, one per VM",
      items: {
        type: "object",
        additionalProperties: false,
        required: ["name"],
        properties: {
          name: NAME,
          memlock: {
            description: `RLIMIT_MEMLOCK: "unlimited" or ${SIZE_TEXT}`,
            type: ["string", "integer"],
            pattern: MEMLOCK_PATTERN,
            minimum: 0,
          },
          capabilities: { type: "array", uniqueItems: true, items: { enum: [...CAPABILITIES] }, description: `capabilities from ${CAPABILITIES.join(", ")}` },
        },
      },
    },
    hypervisor: {
      type: "object",
      additionalProperties: false,
      required: ["package"],
      properties: { package: PACKAGE, settings: SETTINGS },
    },
    iommu: {
      type: "object",
      additionalProperties: false,
      properties: {
        backend: { enum: [...IOMMU_BACKENDS], description: `the VFIO IOMMU backend: ${IOMMU_BACKENDS.join(", ")}` },
        params: {
          type: "object",
          additionalProperties: false,
          description: "vfio_iommu_type1 module parameters",
          properties: {
            dmaEntryLimit: { type: "integer", minimum: 1, maximum: 4294967295, description: "an integer in 1..4294967295" },
            disableHugepages: { type: "boolean" },
            allowUnsafeInterrupts: { type: "boolean" },
          },
        },
      },
    },
    vendors: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["package"],
        properties: {
          package: PACKAGE,
          export: { type: "string", pattern: "^[A-Za-z_$][A-Za-z0-9_$]*$", description: 'the name of the package\'s export holding the manifest, "plugin" when omitted' },
          settings: SETTINGS,
        },
      },
    },
    plugins: { type: "array", items: PACKAGE, description: "packages contributing scenarios" },
    vms: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["name", "memory"],
        properties: {
          name: NAME,
          process: { ...NAME, description: "the name of an entry of processes" },
          memory: size("guest RAM"),
          backing: { enum: [...BACKINGS], description: `guest RAM backing: ${BACKINGS.join(", ")}` },
          balloon: {
            type: "object",
            additionalProperties: false,
            required: ["size", "block"],
            properties: { size: size("balloonable memory"), block: size("balloon block") },
          },
        },
      },
    },
    vgpus: {
      type: "array",
      items: {
        type: "object",
        additionalProperties: false,
        required: ["name", "vm", "vendor", "type"],
        properties: {
          name: NAME,
          vm: { ...NAME, description: "the name of an entry of vms" },
          vendor: { ...PACKAGE, description: "the package of an entry of vendors" },
          type: { type: "string", description: "a vGPU type of the vendor" },
        },
      },
    },
    scenario: {
      type: "object",
      additionalProperties: false,
      required: ["name"],
      properties: {
        name: { type: "string", description: "a scenario name (vgpu-iommu list shows them)" },
        params: { type: "object", description: "the scenario's parameters" },
      },
    },
  },
} as const;

/** A stack file after schema validation (sizes not yet converted). */
export interface StackFile {
  readonly name?: string;
  readonly description?: string;
  readonly seed?: number;
  readonly host?: { readonly memory?: string | number; readonly fragmentation?: number };
  readonly processes?: readonly { readonly name: string; readonly memlock?: string | number; readonly capabilities?: readonly (typeof CAPABILITIES)[number][] }[];
  readonly hypervisor: { readonly package: string; readonly settings?: Record<string, unknown> };
  readonly iommu?: { readonly backend?: (typeof IOMMU_BACKENDS)[number]; readonly params?: { readonly dmaEntryLimit?: number; readonly disableHugepages?: boolean; readonly allowUnsafeInterrupts?: boolean } };
  readonly vendors: readonly { readonly package: string; readonly export?: string; readonly settings?: Record<string, unknown> }[];
  readonly plugins?: readonly string[];
  readonly vms: readonly {
    readonly name: string;
    readonly process?: string;
    readonly memory: string | number;
    readonly backing?: (typeof BACKINGS)[number];
    readonly balloon?: { readonly size: string | number; readonly block: string | number };
  }[];
  readonly vgpus: readonly { readonly name: string; readonly vm: string; readonly vendor: string; readonly type: string }[];
  readonly scenario: { readonly name: string; readonly params?: Record<string, unknown> };
}
