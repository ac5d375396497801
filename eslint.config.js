// ESLint flat config: @eslint/js and typescript-eslint (type-checked) for the
// TypeScript workspaces, plain Node rules for the JS tooling, and the local
// `layers` rule that keeps core, adapters and plugins apart (DESIGN.md).
import js from "@eslint/js";
import { defineConfig } from "eslint/config";
import globals from "globals";
import tseslint from "typescript-eslint";
import local from "./tools/eslint-rules/index.cjs";

export default defineConfig(
  { ignores: ["**/dist/**", "**/node_modules/**", "coverage/**", "docs/**"] },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
  },
  {
    rules: {
      // `async` is how this codebase implements Promise-returning interfaces
      // (ioctl handlers, vendor callbacks) whose body happens to be synchronous:
      // it also turns a throw into a rejection, which the uapi relies on.
      "@typescript-eslint/require-await": "off",
      // Unused names are errors, except those marked unused with a leading `_`.
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrorsIgnorePattern: "^_" }],
    },
  },
  {
    // Tests: chai's property assertions (`expect(x).to.be.true`), sinon stubs
    // and spies, deliberately ill-typed uapi arguments, and casts that spell
    // out the type a case is about.
    files: ["**/*.test.ts"],
    rules: {
      "@typescript-eslint/no-unused-expressions": "off",
      "@typescript-eslint/unbound-method": "off",
      "@typescript-eslint/no-explicit-any": "warn",
      "@typescript-eslint/no-unsafe-member-access": "off",
      "@typescript-eslint/no-unsafe-assignment": "off",
      "@typescript-eslint/no-unsafe-argument": "off",
      "@typescript-eslint/no-unsafe-call": "off",
      "@typescript-eslint/no-unsafe-return": "off",
      "@typescript-eslint/no-unnecessary-type-assertion": "off",
    },
  },
  {
    files: ["**/*.ts", "**/*.mts", "**/*.cts"],
    plugins: { local },
    rules: {
      "local/layers": ["error", { root: import.meta.dirname }],
    },
  },
  {
    files: ["**/*.js", "**/*.mjs", "**/*.cjs"],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: globals.node },
  },
  {
    files: ["**/*.cjs"],
    languageOptions: { sourceType: "commonjs" },
    rules: { "@typescript-eslint/no-require-imports": "off" },
  },
  {
    files: ["tools/**/*.test.cjs"],
    languageOptions: { globals: globals.mocha },
  },
);
