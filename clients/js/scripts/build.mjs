// npm run build: dist/ from src/ with tsc (ES modules + .d.ts), then the
// single-file browser bundle with esbuild. Same input, same bytes: no
// timestamps, no absolute paths, fixed tool versions from package-lock.json.
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { bundleOptions } from "./bundle-options.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
process.chdir(root);
rmSync("dist", { recursive: true, force: true });

const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
execFileSync(process.execPath, [tsc, "-p", "tsconfig.json"], { stdio: "inherit" });

await esbuild.build({
  ...bundleOptions,
  entryPoints: ["src/index.ts"],
  outfile: "dist/releasecontrol-host.min.js",
  logLevel: "warning",
});
