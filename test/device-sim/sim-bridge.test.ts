import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { afterAll, describe, expect, it } from "vitest";
import type { Summary } from "../../device-sim/summary.ts";
import { type Mosquitto, startMosquitto } from "../helpers/mosquitto.ts";
import { logged, type ServiceProcess, spawnService } from "../helpers/service.ts";
import type { SimResult } from "../helpers/sim.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("sim_bridge");
const running: ServiceProcess[] = [];
let broker: Mosquitto | undefined;
afterAll(async () => {
  for (const service of running) service.child.kill("SIGKILL");
  await broker?.stop();
});

const FAULTS = ["--dup-rate", "0.05", "--bad-rate", "0.03", "--reconnect-rate", "0.02"];

/** The service in bridge mode, subscribed to the Mosquitto: resolves once it says so. */
async function bridgeFrom(mosquitto: Mosquitto): Promise<ServiceProcess> {
  const service = await spawnService({
    DATABASE_URL: db.url,
    MQTT_PORT: "0",
    SOURCE_URL: mosquitto.url,
    SOURCE_CLIENT_ID: "sim-bridge-under-test",
    BATCH_MAX_WAIT_MS: "5",
  });
  running.push(service);
  await logged(service, "subscribed to the source broker");
  return service;
}

interface RunningSim {
  /** Lines the simulator printed on stderr so far. */
  stderr: string[];
  /** Resolves with the first stderr line matching `pattern`. */
  line(pattern: RegExp): Promise<string>;
  result: Promise<SimResult>;
}

/** `npm run sim -- <args> --json` as a child process, its stderr read as it goes. */
function startSim(args: string[]): RunningSim {
  const child = spawn(process.execPath, [
    "--import",
    "tsx",
    "device-sim/cli.ts",
    ...args,
    "--json",
  ]);
  const stderr: string[] = [];
  const waiting: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  createInterface({ input: child.stderr }).on("line", (line) => {
    stderr.push(line);
    for (const waiter of waiting.filter((entry) => entry.pattern.test(line))) {
      waiting.splice(waiting.indexOf(waiter), 1);
      waiter.resolve(line);
    }
  });
  let stdout = "";
  child.stdout.on("data", (chunk) => {
    stdout += chunk;
  });
  const result = once(child, "close").then(([code]) => {
    let summary: Summary | undefined;
    try {
      summary = JSON.parse(stdout) as Summary;
    } catch {
      summary = undefined;
    }
    return { code: code as number | null, stdout, stderr: stderr.join("\n"), summary };
  });
  return {
    stderr,
    line: (pattern) =>
      new Promise((resolve, reject) => {
        const seen = stderr.find((line) => pattern.test(line));
        if (seen !== undefined) return resolve(seen);
        waiting.push({ pattern, resolve });
        result.then((done) =>
          reject(new Error(`the simulator exited (${done.code}) first:\n${done.stderr}`)),
        );
      }),
    result,
  };
}

/** What a run that passed verification stored: every acknowledged event once, every bad one dead-lettered. */
function expectStoredOnce(summary: Summary | undefined): void {
  expect(summary?.verification).toMatchObject({
    pass: true,
    expected: summary?.uniqueEventsAcknowledged,
    stored: summary?.uniqueEventsAcknowledged,
    missing: 0,
    duplicated: 0,
    problems: [],
  });
  expect(summary?.uniqueEventsAcknowledged).toBe(summary?.uniqueEventsSent);
  expect(summary?.verification?.rejected).toBeGreaterThanOrEqual(summary?.badAcknowledged ?? 1);
}

describe("npm run sim --verify-wait against a broker the service bridges from", () => {
  let service: ServiceProcess | undefined;

  it("passes --verify with every acknowledged event stored once, while the bridge catches up", async () => {
    broker = await startMosquitto(["max_queued_messages 100000"]);
    service = await bridgeFrom(broker);
    const sim = startSim([
      ...["--url", broker.url, "--devices", "20", "--rate", "10", "--duration", "2"],
      ...["--seed", "11", "--run-id", "bridged", "--verify", db.url, "--verify-wait", "30"],
      ...FAULTS,
    ]);
    const { code, stderr, summary } = await sim.result;
    expect(code, stderr).toBe(0);
    expectStoredOnce(summary);
    expect(summary?.duplicatesInjected).toBeGreaterThan(0);
    expect(summary?.badAcknowledged).toBeGreaterThan(0);
    expect(summary?.reconnects).toBeGreaterThan(0);
    expect(summary?.verification?.waitedS).toBeLessThan(30);
  });

  it("stops waiting when nothing is stored: after --verify-wait seconds, or with QoS 0 once nothing more is", async () => {
    service?.child.kill("SIGTERM");
    await service?.exited;
    service = undefined;
    const url = (broker as Mosquitto).url;
    const small = ["--url", url, "--devices", "2", "--count", "3", "--rate", "20"];
    const verify = (seconds: string) => ["--verify", db.url, "--verify-wait", seconds];
    const [acked, qos0] = await Promise.all([
      startSim([...small, "--run-id", "unbridged", ...verify("1.5")]).result,
      startSim([...small, "--qos", "0", "--run-id", "qos0", ...verify("30")]).result,
    ]);
    expect(acked.code, acked.stderr).toBe(1);
    expect(acked.summary?.verification).toMatchObject({
      pass: false,
      expected: 6,
      stored: 0,
      missing: 6,
    });
    expect(acked.summary?.verification?.waitedS).toBeGreaterThanOrEqual(1.5);
    expect(acked.stderr).toMatch(/^verify: 0\/6 events stored, waiting up to [12] s more$/m);
    expect(acked.stderr).toMatch(/^verify: 0\/6 events stored; stopped waiting after [\d.]+ s$/m);
    // A QoS 0 message may be lost, as these are: Mosquitto queues none for a session that is away.
    expect(qos0.code, qos0.stderr).toBe(0);
    expect(qos0.summary?.verification).toMatchObject({ pass: true, expected: 6, missing: 6 });
    expect(qos0.summary?.verification?.waitedS).toBeLessThan(10);
    expect(qos0.stderr).toMatch(
      /^verify: 0\/6 events stored; nothing more stored for 5 s, the rest taken as lost \(QoS 0\)$/m,
    );
  });

  it("waits for a service that comes back after the run, then passes", async () => {
    const sim = startSim([
      ...["--url", (broker as Mosquitto).url, "--devices", "20", "--rate", "5"],
      ...["--duration", "2", "--seed", "12", "--run-id", "away"],
      ...["--verify", db.url, "--verify-wait", "30", ...FAULTS],
    ]);
    const first = await sim.line(/^verify: /);
    expect(first).toMatch(
      /^verify: 0\/\d+ events stored, 0\/\d+ dead letters, waiting up to \d+ s more$/,
    );
    service = await bridgeFrom(broker as Mosquitto);
    const { code, stderr, summary } = await sim.result;
    expect(code, stderr).toBe(0);
    expectStoredOnce(summary);
    const stored = summary?.uniqueEventsAcknowledged.toLocaleString("en-US");
    expect(stderr).toMatch(
      new RegExp(
        `^verify: ${stored}/${stored} events stored, \\d+/\\d+ dead letters, [\\d.]+ s after the run$`,
        "m",
      ),
    );
    expect(summary?.verification?.waitedS).toBeGreaterThan(0);
  });
});
