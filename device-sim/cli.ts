import mqtt from "mqtt";
import { deviceIdentity, FleetCounters } from "./device.ts";
import { type FleetRun, runFleet } from "./fleet.ts";
import { helpText, parseOptions, type SimOptions, UsageError } from "./options.ts";
import { identityWarning, startLine } from "./profiles/index.ts";
import { showProgress, showStorageProgress } from "./progress.ts";
import { ConnectionRefused, refusalCode } from "./refusal.ts";
import { formatSummary, summarize } from "./summary.ts";
import { verifyRun } from "./verify.ts";

/**
 * One connection first, as the first device, so an unreachable broker or
 * refused credentials are one clear line rather than a fleet retrying forever.
 */
async function probe(options: SimOptions): Promise<void> {
  const { deviceId, login } = deviceIdentity(options, 0);
  try {
    const client = await mqtt.connectAsync(options.url, {
      clientId: deviceId,
      username: login?.username,
      password: login?.password,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      protocolVersion: 4,
    });
    await client.endAsync();
  } catch (error) {
    const code = refusalCode(error);
    if (code !== undefined) throw new ConnectionRefused(deviceId, code, options);
    throw new UsageError(
      `cannot reach an MQTT broker at ${options.url}: ${(error as Error).message}`,
    );
  }
}

async function main(): Promise<number> {
  let options: SimOptions | undefined;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`${error.message}\nsee npm run sim -- --help`);
    return 2;
  }
  if (!options) {
    console.log(helpText());
    return 0;
  }
  if (options.profile) {
    console.error(startLine(options.profile));
    const { deviceId, login } = deviceIdentity(options, 0);
    const warning = identityWarning(options.profile, deviceId, login);
    if (warning) console.error(warning);
  }
  try {
    await probe(options);
  } catch (error) {
    console.error((error as Error).message);
    return 2;
  }
  const counters = new FleetCounters();
  const stopProgress = showProgress(counters, options.devices);
  let run: FleetRun;
  try {
    run = await runFleet(options, counters).finally(stopProgress);
  } catch (error) {
    if (!(error instanceof ConnectionRefused)) throw error;
    console.error(error.message);
    return 2;
  }
  const summary = summarize(options, run);
  if (options.verifyUrl) {
    summary.verification = await verifyRun(options.verifyUrl, options, run, showStorageProgress());
  }
  console.log(options.json ? JSON.stringify(summary, null, 2) : formatSummary(summary));
  return summary.verification?.pass === false ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : String(error));
    process.exitCode = 1;
  },
);
