"use strict";
// local/layers: the layer rules of DESIGN.md, enforced on every import form
// (`import`, `export ... from`, `import("x")`, `require("x")`,
// `import x = require("x")`, `typeof import("x")`).
//
//   - core/ imports no adapter and no plugin.
//   - adapters/* and plugins/* reach @vgpu-iommu/core only through the entry
//     points in core/package.json "exports" (read at lint time), never through
//     dist/, src/ or a relative path into core/.
//   - a vendor plugin never imports a hypervisor adapter, nor the reverse.

const fs = require("node:fs");
const path = require("node:path");

const SCOPE = "@vgpu-iommu/";
const CORE_PACKAGE = `${SCOPE}core`;
const ADAPTER_PREFIX = `${SCOPE}adapter-`;
const PLUGIN_PREFIX = `${SCOPE}plugin-`;

/** Layer of a path relative to the repository root: "core", "adapter", "plugin" or undefined. */
function layerOfRelative(rel) {
  if (rel === "" || rel.startsWith("..") || path.isAbsolute(rel)) return undefined;
  const segments = rel.split(/[\\/]/);
  if (segments[0] === "core") return "core";
  if (segments[0] === "adapters") return "adapter";
  if (segments[0] === "plugins") return "plugin";
  return undefined;
}

/** "@scope/name/sub/path" -> { name: "@scope/name", subpath: "./sub/path" } ("." for the root). */
function splitPackageSpecifier(specifier) {
  const parts = specifier.split("/");
  const nameLength = specifier.startsWith("@") ? 2 : 1;
  const name = parts.slice(0, nameLength).join("/");
  const rest = parts.slice(nameLength).join("/");
  return { name, subpath: rest === "" ? "." : `./${rest}` };
}

/** What an import specifier points at, seen from `filename`. */
function classifyTarget(specifier, filename, root) {
  if (specifier.startsWith(".") || path.isAbsolute(specifier)) {
    const rel = path.relative(root, path.resolve(path.dirname(filename), specifier));
    return { kind: "path", layer: layerOfRelative(rel) };
  }
  const { name, subpath } = splitPackageSpecifier(specifier);
  if (name === CORE_PACKAGE) return { kind: "package", layer: "core", subpath };
  if (name.startsWith(ADAPTER_PREFIX)) return { kind: "package", layer: "adapter", subpath };
  if (name.startsWith(PLUGIN_PREFIX)) return { kind: "package", layer: "plugin", subpath };
  return { kind: "package", layer: undefined, subpath };
}

// ---------------------------------------------------------------- exports map

const exportsCache = new Map(); // package.json path -> { mtimeMs, map }

/** The subpath table of a package.json "exports" field: { exact: Map, patterns: [] }. */
function parseExports(exportsField) {
  const exact = new Map();
  const patterns = [];
  const isSubpathTable =
    exportsField !== null && typeof exportsField === "object" && !Array.isArray(exportsField) && Object.keys(exportsField).some((k) => k.startsWith("."));
  if (!isSubpathTable) {
    // Absent exports: the package root only. A string, array or conditions object: the root only.
    exact.set(".", true);
    return { exact, patterns };
  }
  for (const [key, target] of Object.entries(exportsField)) {
    const allowed = target !== null;
    const star = key.indexOf("*");
    if (star < 0) exact.set(key, allowed);
    else patterns.push({ key, prefix: key.slice(0, star), suffix: key.slice(star + 1), allowed });
  }
  // Node picks the matching pattern with the longest prefix.
  patterns.sort((a, b) => b.prefix.length - a.prefix.length);
  return { exact, patterns };
}

function readCoreExports(root) {
  const file = path.join(root, "core", "package.json");
  let stat;
  try {
    stat = fs.statSync(file);
  } catch {
    return undefined;
  }
  const cached = exportsCache.get(file);
  if (cached !== undefined && cached.mtimeMs === stat.mtimeMs) return cached.map;
  const map = parseExports(JSON.parse(fs.readFileSync(file, "utf8")).exports);
  exportsCache.set(file, { mtimeMs: stat.mtimeMs, map });
  return map;
}

function isExported(map, subpath) {
  if (map.exact.has(subpath)) return map.exact.get(subpath);
  for (const p of map.patterns) {
    if (subpath.length >= p.prefix.length + p.suffix.length && subpath.startsWith(p.prefix) && subpath.endsWith(p.suffix)) return p.allowed;
  }
  return false;
}

function entryPoints(map) {
  const names = [];
  for (const [key, allowed] of map.exact) if (allowed) names.push(key === "." ? CORE_PACKAGE : `${CORE_PACKAGE}${key.slice(1)}`);
  for (const p of map.patterns) if (p.allowed) names.push(`${CORE_PACKAGE}${p.key.slice(1)}`);
  return names.join(", ");
}

// ---------------------------------------------------------------- the rule

const RULE = "layer rule (DESIGN.md)";

module.exports = {
  meta: {
    type: "problem",
    docs: { description: "Enforce the core / adapter / plugin layer rules of DESIGN.md" },
    schema: [
      {
        type: "object",
        properties: { root: { type: "string", description: "Repository root (default: ESLint's cwd)" } },
        additionalProperties: false,
      },
    ],
    messages: {
      coreImportsAdapter:
        `'{{specifier}}' breaks the ${RULE} "core imports no adapter": core must not depend on a hypervisor adapter. ` +
        "Define a port (interface + token) in core and let the adapter implement it; the CLI composes them from the stack file.",
      coreImportsPlugin:
        `'{{specifier}}' breaks the ${RULE} "core imports no plugin": core must not depend on a vendor plugin. ` +
        "Define a port (interface + token) in core and let the plugin implement it; the CLI composes them from the stack file.",
      coreDeepImport:
        `'{{specifier}}' breaks the ${RULE} "adapters and plugins import @vgpu-iommu/core only through its exports map": ` +
        `'{{subpath}}' is not an entry point of core/package.json "exports". ` +
        "Import from {{entryPoints}}, or export what you need from core's public surface.",
      coreInternalImport:
        `'{{specifier}}' breaks the ${RULE} "adapters and plugins import @vgpu-iommu/core only through its exports map": ` +
        "core's dist/ and src/ are internal. Import from {{entryPoints}}, or export what you need from core's public surface.",
      coreRelativeImport:
        `'{{specifier}}' breaks the ${RULE} "adapters and plugins import @vgpu-iommu/core only through its exports map": ` +
        "a relative path into core/ bypasses the package boundary. Import from {{entryPoints}} instead.",
      pluginImportsAdapter:
        `'{{specifier}}' breaks the ${RULE} "a vendor plugin never imports a hypervisor adapter": plugins must run unchanged on KVM and on Xen. ` +
        "Depend on the port @vgpu-iommu/core defines and let the stack file pick the adapter.",
      adapterImportsPlugin:
        `'{{specifier}}' breaks the ${RULE} "a hypervisor adapter never imports a vendor plugin": adapters must serve every vendor. ` +
        "Depend on the port @vgpu-iommu/core defines and let the stack file pick the plugin.",
    },
  },

  create(context) {
    const root = path.resolve(context.options[0]?.root ?? context.cwd);
    const filename = context.filename;
    const from = layerOfRelative(path.relative(root, filename));
    if (from === undefined) return {};

    function check(node, specifier) {
      if (typeof specifier !== "string" || specifier === "") return;
      const target = classifyTarget(specifier, filename, root);
      const report = (messageId, data = {}) => context.report({ node, messageId, data: { specifier, ...data } });
      if (from === "core") {
        if (target.layer === "adapter") report("coreImportsAdapter");
        else if (target.layer === "plugin") report("coreImportsPlugin");
        return;
      }
      if (target.layer === "core") {
        const map = readCoreExports(root) ?? parseExports(undefined);
        const data = { entryPoints: entryPoints(map) };
        if (target.kind === "path") report("coreRelativeImport", data);
        else if (/^\.\/(dist|src)(\/|$)/.test(target.subpath)) report("coreInternalImport", data);
        else if (!isExported(map, target.subpath)) report("coreDeepImport", { ...data, subpath: target.subpath });
        return;
      }
      if (from === "plugin" && target.layer === "adapter") report("pluginImportsAdapter");
      else if (from === "adapter" && target.layer === "plugin") report("adapterImportsPlugin");
    }

    /** The string value of a literal or an expression-free template literal. */
    function staticString(node) {
      if (node == null) return undefined;
      if (node.type === "Literal" && typeof node.value === "string") return node.value;
      if (node.type === "TemplateLiteral" && node.expressions.length === 0) return node.quasis[0].value.cooked;
      return undefined;
    }

    function checkSource(node) {
      if (node.source != null) check(node.source, staticString(node.source));
    }

    return {
      ImportDeclaration: checkSource,
      ExportNamedDeclaration: checkSource,
      ExportAllDeclaration: checkSource,
      ImportExpression: checkSource,
      CallExpression(node) {
        if (node.callee.type === "Identifier" && node.callee.name === "require" && node.arguments.length >= 1) {
          check(node.arguments[0], staticString(node.arguments[0]));
        }
      },
      TSExternalModuleReference(node) {
        check(node.expression, staticString(node.expression));
      },
      TSImportType(node) {
        const source = node.source ?? node.argument?.literal;
        check(source, staticString(source));
      },
    };
  },
};
