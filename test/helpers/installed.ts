import { spawnSync } from "node:child_process";

/** Whether `command` is on the PATH; when it is not, says which tests are skipped. */
export function installed(command: string, tests: string): boolean {
  const found = spawnSync("sh", ["-c", 'command -v "$0"', command]).status === 0;
  if (!found) console.warn(`${command} is not installed: skipping ${tests} (.ci/run installs it)`);
  return found;
}
