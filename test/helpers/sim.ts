import { spawn } from "node:child_process";
import { once } from "node:events";
import type { Summary } from "../../device-sim/summary.ts";

export interface SimResult {
  code: number | null;
  summary: Summary | undefined;
  stdout: string;
  stderr: string;
}

/** `npm run sim -- <args> --json` as a child process. */
export async function runSim(args: string[]): Promise<SimResult> {
  const child = spawn(process.execPath, [
    "--import",
    "tsx",
    "device-sim/cli.ts",
    ...args,
    "--json",
  ]);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => {
    stdout += chunk;
  });
  child.stderr.on("data", (chunk) => {
    stderr += chunk;
  });
  const [code] = await once(child, "close");
  let summary: Summary | undefined;
  try {
    summary = JSON.parse(stdout) as Summary;
  } catch {
    summary = undefined;
  }
  return { code: code as number | null, summary, stdout, stderr };
}
