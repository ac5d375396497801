"use strict";
// local/layers under ESLint's RuleTester (which registers mocha describe/it).
// Files are named by absolute path under a repository root; the rule reads
// that root's core/package.json "exports" at lint time.

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { RuleTester } = require("eslint");
const tseslint = require("typescript-eslint");
const rule = require("./layers.cjs");

const REPO = path.resolve(__dirname, "..", "..");

const tester = new RuleTester({
  languageOptions: { parser: tseslint.parser, ecmaVersion: "latest", sourceType: "module" },
});

/** A case in `root`: `file` is relative to it. */
const at = (root) => (file, code, errors) => ({
  code,
  filename: path.join(root, file),
  options: [{ root }],
  ...(errors === undefined ? {} : { errors: errors.map((e) => (typeof e === "string" ? { messageId: e } : e)) }),
});

describe("local/layers", () => {
  describe("against this repository's core/package.json", () => {
    const c = at(REPO);
    tester.run("layers", rule, {
      valid: [
        // core: its own modules, node and npm packages, itself.
        c("core/src/vfio/x.ts", 'import { a } from "./uapi.js";'),
        c("core/src/vfio/x.ts", 'import { a } from "../host/host.js";'),
        c("core/src/vfio/x.ts", 'import { EventEmitter } from "eventemitter3"; import fs from "node:fs";'),
        c("core/src/cli/main.ts", 'const m = await import(name);'), // the CLI loads adapters by name, never statically
        // adapters and plugins: core through its exports map.
        c("adapters/kvm/src/kvm.ts", 'import { createHost } from "@vgpu-iommu/core";'),
        c("adapters/kvm/src/kvm.test.ts", 'import { Fixture } from "@vgpu-iommu/core/testing";'),
        c("plugins/gvt/src/gvt.ts", 'export { createHost } from "@vgpu-iommu/core";'),
        c("plugins/gvt/src/gvt.ts", 'export * from "@vgpu-iommu/core";'),
        c("plugins/gvt/src/gvt.ts", 'const core = await import("@vgpu-iommu/core");'),
        c("plugins/gvt/src/gvt.ts", "const core = await import(`@vgpu-iommu/core/testing`);"),
        c("plugins/gvt/src/gvt.cts", 'const core = require("@vgpu-iommu/core");'),
        c("plugins/gvt/src/gvt.ts", 'import pkg = require("@vgpu-iommu/core/package.json");'),
        c("plugins/gvt/src/gvt.ts", 'import type { Host } from "@vgpu-iommu/core";'),
        c("plugins/gvt/src/gvt.ts", 'let h: typeof import("@vgpu-iommu/core").Host;'),
        // adapters and plugins: their own files, other adapters / other plugins.
        c("adapters/xen/src/p2m.ts", 'import { Grant } from "./grant.js";'),
        c("plugins/nvidia/src/vf.ts", 'import { Gpu } from "@vgpu-iommu/plugin-mock-gpu";'),
        c("adapters/xen/src/pv.ts", 'import { Kvm } from "@vgpu-iommu/adapter-kvm";'),
        c("plugins/gvt/src/gvt.ts", 'import { x } from "../../mock-gpu/src/index.js";'),
        // outside the layers: test/ and tools/ are not constrained.
        c("test/src/stack.test.ts", 'import { Kvm } from "@vgpu-iommu/adapter-kvm"; import { Gvt } from "@vgpu-iommu/plugin-gvt";'),
        c("test/src/deep.test.ts", 'import { x } from "../../core/src/vfio/uapi.js";'),
        // non-literal specifiers are not judged.
        c("plugins/gvt/src/gvt.ts", "const m = await import(`@vgpu-iommu/adapter-${name}`);"),
        c("plugins/gvt/src/gvt.ts", "const m = require(name);"),
        c("plugins/gvt/src/gvt.ts", 'const m = other.require("@vgpu-iommu/adapter-kvm");'),
      ],
      invalid: [
        // core imports no adapter and no plugin, in every import form.
        c("core/src/host/host.ts", 'import { Kvm } from "@vgpu-iommu/adapter-kvm";', ["coreImportsAdapter"]),
        c("core/src/host/host.ts", 'import type { Kvm } from "@vgpu-iommu/adapter-kvm/src/kvm.js";', ["coreImportsAdapter"]),
        c("core/src/host/host.ts", 'export { Kvm } from "@vgpu-iommu/adapter-kvm";', ["coreImportsAdapter"]),
        c("core/src/host/host.ts", 'export * from "@vgpu-iommu/plugin-gvt";', ["coreImportsPlugin"]),
        c("core/src/host/host.ts", 'const m = await import("@vgpu-iommu/plugin-nvidia");', ["coreImportsPlugin"]),
        c("core/src/host/host.ts", "const m = await import(`@vgpu-iommu/adapter-xen`);", ["coreImportsAdapter"]),
        c("core/src/host/host.cts", 'const m = require("@vgpu-iommu/plugin-mock-gpu");', ["coreImportsPlugin"]),
        c("core/src/host/host.ts", 'import m = require("@vgpu-iommu/adapter-kvm");', ["coreImportsAdapter"]),
        c("core/src/host/host.ts", 'let k: import("@vgpu-iommu/adapter-kvm").Kvm;', ["coreImportsAdapter"]),
        c("core/src/host/host.ts", 'import { Kvm } from "../../../adapters/kvm/src/kvm.js";', ["coreImportsAdapter"]),
        c("core/src/index.ts", 'import { Gvt } from "../../plugins/gvt/dist/index.js";', ["coreImportsPlugin"]),
        // adapters and plugins: core only through its exports map.
        c("adapters/kvm/src/kvm.ts", 'import { Host } from "@vgpu-iommu/core/dist/host/host.js";', ["coreInternalImport"]),
        c("plugins/gvt/src/gvt.ts", 'import { Host } from "@vgpu-iommu/core/src/host/host.js";', ["coreInternalImport"]),
        c("plugins/gvt/src/gvt.ts", 'export * from "@vgpu-iommu/core/dist";', ["coreInternalImport"]),
        c("plugins/gvt/src/gvt.ts", 'import { Host } from "@vgpu-iommu/core/host";', [
          { messageId: "coreDeepImport", data: { specifier: "@vgpu-iommu/core/host", subpath: "./host", entryPoints: "@vgpu-iommu/core, @vgpu-iommu/core/testing, @vgpu-iommu/core/scenarios, @vgpu-iommu/core/cli, @vgpu-iommu/core/package.json" } },
        ]),
        c("plugins/gvt/src/gvt.ts", 'import { Fixture } from "@vgpu-iommu/core/testing/fixture.js";', ["coreDeepImport"]),
        c("adapters/xen/src/xen.ts", 'const u = await import("@vgpu-iommu/core/vfio/uapi.js");', ["coreDeepImport"]),
        c("adapters/xen/src/xen.cts", 'const u = require("@vgpu-iommu/core/dist/index.js");', ["coreInternalImport"]),
        c("adapters/xen/src/xen.ts", 'import u = require("@vgpu-iommu/core/src/index.js");', ["coreInternalImport"]),
        c("adapters/xen/src/xen.ts", 'let h: import("@vgpu-iommu/core/dist/index.js").Host;', ["coreInternalImport"]),
        c("adapters/kvm/src/kvm.ts", 'import { Host } from "../../../core/src/host/host.js";', ["coreRelativeImport"]),
        c("plugins/gvt/src/gvt.ts", 'export { Host } from "../../../core/dist/index.js";', ["coreRelativeImport"]),
        c("plugins/gvt/src/gvt.ts", 'const m = await import("../../../core");', ["coreRelativeImport"]),
        // a vendor plugin never imports a hypervisor adapter, nor the reverse.
        c("plugins/gvt/src/gvt.ts", 'import { Kvm } from "@vgpu-iommu/adapter-kvm";', ["pluginImportsAdapter"]),
        c("plugins/nvidia/src/vf.ts", 'export * from "@vgpu-iommu/adapter-xen";', ["pluginImportsAdapter"]),
        c("plugins/nvidia/src/vf.ts", 'const x = await import("@vgpu-iommu/adapter-xen/pv-iommu");', ["pluginImportsAdapter"]),
        c("plugins/nvidia/src/vf.cts", 'const x = require("@vgpu-iommu/adapter-kvm");', ["pluginImportsAdapter"]),
        c("plugins/mock-gpu/src/gpu.ts", 'import { Kvm } from "../../../adapters/kvm/src/kvm.js";', ["pluginImportsAdapter"]),
        c("adapters/kvm/src/kvm.ts", 'import { Gvt } from "@vgpu-iommu/plugin-gvt";', ["adapterImportsPlugin"]),
        c("adapters/kvm/src/kvm.ts", 'export { Gpu } from "@vgpu-iommu/plugin-mock-gpu";', ["adapterImportsPlugin"]),
        c("adapters/xen/src/xen.ts", 'const g = await import("@vgpu-iommu/plugin-gvt");', ["adapterImportsPlugin"]),
        c("adapters/xen/src/xen.cts", 'const g = require("@vgpu-iommu/plugin-nvidia");', ["adapterImportsPlugin"]),
        c("adapters/xen/src/xen.ts", 'import { Gpu } from "../../../plugins/mock-gpu/src/gpu.js";', ["adapterImportsPlugin"]),
        // several breaks in one file are each reported.
        c("plugins/gvt/src/gvt.ts", 'import "@vgpu-iommu/adapter-kvm"; import "@vgpu-iommu/core/dist/x.js"; import "@vgpu-iommu/core";', [
          "pluginImportsAdapter",
          "coreInternalImport",
        ]),
      ],
    });

    it("names the rule broken and the fix in its messages", () => {
      for (const [id, text] of Object.entries(rule.meta.messages)) {
        if (!/breaks the layer rule \(DESIGN\.md\) "[^"]+"/.test(text)) throw new Error(`${id} does not name the layer rule it enforces`);
        if (!/Import from|Define a port|Depend on the port/.test(text)) throw new Error(`${id} does not name a fix`);
      }
    });
  });

  describe("reads the exports map of the root's core/package.json", () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "layers-rule-"));
    fs.mkdirSync(path.join(root, "core"));
    fs.writeFileSync(
      path.join(root, "core", "package.json"),
      JSON.stringify({
        name: "@vgpu-iommu/core",
        exports: {
          ".": "./dist/index.js",
          "./ports": { types: "./dist/ports/index.d.ts", default: "./dist/ports/index.js" },
          "./uapi/*": "./dist/vfio/uapi/*.js",
          "./uapi/internal/*": null,
        },
      }),
    );
    after(() => fs.rmSync(root, { recursive: true, force: true }));
    const c = at(root);
    tester.run("layers", rule, {
      valid: [
        c("plugins/gvt/src/gvt.ts", 'import { a } from "@vgpu-iommu/core";'),
        c("plugins/gvt/src/gvt.ts", 'import { a } from "@vgpu-iommu/core/ports";'),
        c("adapters/kvm/src/kvm.ts", 'import { a } from "@vgpu-iommu/core/uapi/type1";'),
        c("adapters/kvm/src/kvm.ts", 'import { a } from "@vgpu-iommu/core/uapi/type1/dirty";'),
      ],
      invalid: [
        // "./testing" is exported by this repository's core, not by this one.
        c("plugins/gvt/src/gvt.ts", 'import { a } from "@vgpu-iommu/core/testing";', [
          { messageId: "coreDeepImport", data: { specifier: "@vgpu-iommu/core/testing", subpath: "./testing", entryPoints: "@vgpu-iommu/core, @vgpu-iommu/core/ports, @vgpu-iommu/core/uapi/*" } },
        ]),
        c("plugins/gvt/src/gvt.ts", 'import { a } from "@vgpu-iommu/core/package.json";', ["coreDeepImport"]),
        // a null target blocks the subpaths its pattern matches.
        c("adapters/kvm/src/kvm.ts", 'import { a } from "@vgpu-iommu/core/uapi/internal/x";', ["coreDeepImport"]),
        // dist/ stays internal even if the map ever exported it.
        c("adapters/kvm/src/kvm.ts", 'import { a } from "@vgpu-iommu/core/dist/ports/index.js";', ["coreInternalImport"]),
      ],
    });
  });

  describe("when core/package.json has no exports field", () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "layers-rule-"));
    fs.mkdirSync(path.join(root, "core"));
    fs.writeFileSync(path.join(root, "core", "package.json"), JSON.stringify({ name: "@vgpu-iommu/core", main: "./dist/index.js" }));
    after(() => fs.rmSync(root, { recursive: true, force: true }));
    const c = at(root);
    tester.run("layers", rule, {
      valid: [c("plugins/gvt/src/gvt.ts", 'import { a } from "@vgpu-iommu/core";')],
      invalid: [
        c("plugins/gvt/src/gvt.ts", 'import { a } from "@vgpu-iommu/core/ports";', [
          { messageId: "coreDeepImport", data: { specifier: "@vgpu-iommu/core/ports", subpath: "./ports", entryPoints: "@vgpu-iommu/core" } },
        ]),
      ],
    });
  });
});
