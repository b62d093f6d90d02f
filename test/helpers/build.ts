import { existsSync, readFileSync } from "node:fs";
import path from "node:path";

const config = JSON.parse(readFileSync("tsconfig.build.json", "utf8")) as {
  include: string[];
  compilerOptions: { outDir: string };
};

/** Where `npm run build` writes the compiled service. */
export const OUT_DIR = config.compilerOptions.outDir;

/** The folders `npm run build` compiles. */
export const BUILT_FOLDERS = config.include;

/** The source `npm run build` compiles to `entry` (bin/start.ts for dist/bin/start.js), if any. */
export function sourceOf(entry: string): string | undefined {
  const relative = path.relative(OUT_DIR, entry);
  const source = relative.replace(/\.js$/, ".ts");
  if (source === relative || !BUILT_FOLDERS.includes(relative.split(path.sep)[0] as string)) {
    return undefined;
  }
  return existsSync(source) ? source : undefined;
}
