import type { Summary } from "../../device-sim/summary.ts";
import { type CommandResult, runCommand } from "./run-command.ts";

export interface SimResult extends CommandResult {
  summary: Summary | undefined;
}

/** `npm run sim -- <args> --json` as a child process. */
export async function runSim(args: string[]): Promise<SimResult> {
  const result = await runCommand(process.execPath, [
    "--import",
    "tsx",
    "device-sim/cli.ts",
    ...args,
    "--json",
  ]);
  let summary: Summary | undefined;
  try {
    summary = JSON.parse(result.stdout) as Summary;
  } catch {
    summary = undefined;
  }
  return { ...result, summary };
}
