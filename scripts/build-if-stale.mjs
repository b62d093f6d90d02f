// `npm start` runs the compiled service: this builds it first (npm run build)
// when dist/ lacks a source's output or holds one older than the source or
// than the compiler options. Each output depends on its own source only
// (isolatedModules), so comparing the two is enough; it costs a stat a file.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

const BUILD_CONFIG = "tsconfig.build.json";
const COMPILER_CONFIGS = ["tsconfig.json", BUILD_CONFIG];

/** @param {string} file */
function modified(file) {
  return fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs;
}

/** @type {{ include: string[], compilerOptions: { outDir: string } }} */
const { include, compilerOptions } = JSON.parse(fs.readFileSync(BUILD_CONFIG, "utf8"));
const configured = Math.max(...COMPILER_CONFIGS.map((file) => modified(file) ?? 0));

/** The first source whose output is missing or older, if any. */
function staleSource() {
  for (const dir of include) {
    for (const entry of fs.readdirSync(dir, { recursive: true, encoding: "utf8" })) {
      if (!entry.endsWith(".ts") || entry.endsWith(".d.ts")) continue;
      const source = path.join(dir, entry);
      const output = path.join(compilerOptions.outDir, dir, entry.replace(/\.ts$/, ".js"));
      const built = modified(output);
      if (built === undefined || built < Math.max(modified(source) ?? 0, configured)) return source;
    }
  }
  return undefined;
}

const stale = staleSource();
if (stale) {
  console.error(`${compilerOptions.outDir}/ is older than ${stale}: npm run build`);
  const build = spawnSync("npm", ["run", "--silent", "build"], { stdio: "inherit" });
  process.exitCode = build.status ?? 1;
}
