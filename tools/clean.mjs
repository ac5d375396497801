// tsc -b --clean leaves the outputs of deleted sources behind; remove every dist folder.
import { rmSync, readdirSync, existsSync } from "node:fs";
import { join } from "node:path";

const roots = ["core", "test", ...["adapters", "plugins"].flatMap((d) => (existsSync(d) ? readdirSync(d).map((p) => join(d, p)) : []))];
for (const root of roots) rmSync(join(root, "dist"), { recursive: true, force: true });
