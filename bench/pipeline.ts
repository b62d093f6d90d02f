/**
 * End to end: mqtt.js devices publish QoS 1 readings to a broker and wait
 * for each PUBACK. The same load generator drives every scenario:
 *
 * - ceiling: our service with no topic bridged (aedes acknowledges at once);
 * - ours: the service as `npm start` runs it, acknowledging after commit;
 * - ours+workers: the same with WORKERS=2, two processes on the same ports;
 * - ours+auth: the same with ALLOW_ANONYMOUS=false, each device an identity
 *   logging in with its secret, and each publish checked against its ACL;
 * - naive: the same broker, one INSERT … ON CONFLICT per message before the ack;
 * - mosquitto: the machine's Mosquitto on 127.0.0.1:1883, acknowledging at once.
 */
import fs from "node:fs/promises";
import mqtt from "mqtt";
import pg from "pg";
import { migrate } from "../bridge/migrate.ts";
import { percentile } from "../bridge/percentile.ts";
import { IdentityStore } from "../storage/identities.ts";
import { createDatabase, dropDatabase } from "../test/helpers/databases.ts";
import { Stream } from "../test/helpers/device.ts";
import { freePort } from "../test/helpers/free-port.ts";
import { type ServiceProcess, spawnService } from "../test/helpers/service.ts";

export const SCENARIOS = [
  "ceiling",
  "ours",
  "ours+workers",
  "ours+auth",
  "naive",
  "mosquitto",
] as const;
export type Scenario = (typeof SCENARIOS)[number];

export interface Shape {
  label: string;
  devices: number;
  inflight: number;
  /** Messages per second per device; 0 publishes as fast as acknowledgements allow. */
  ratePerDevice?: number;
}

export const SHAPES: Shape[] = [
  { label: "fleet (1,000 devices × 1 in flight)", devices: 1000, inflight: 1 },
  { label: "gateways (10 devices × 100 in flight)", devices: 10, inflight: 100 },
];

export interface ScenarioResult {
  scenario: Scenario;
  shape: string;
  messages: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** CPU seconds the broker's processes used during the load; undefined for Mosquitto. */
  cpuSeconds: number | undefined;
  peakRssMiB: number | undefined;
  /** Whether PostgreSQL holds each message exactly once; undefined where nothing is stored. */
  exactlyOnce: boolean | undefined;
}

const CLOCK_TICKS_PER_SECOND = 100;

/** The process and its descendants (the workers of WORKERS > 1). */
async function processTree(pid: number): Promise<number[]> {
  const children = await fs
    .readFile(`/proc/${pid}/task/${pid}/children`, "utf8")
    .then((text) => text.split(" ").filter(Boolean).map(Number))
    .catch(() => []);
  const below = await Promise.all(children.map((child) => processTree(child)));
  return [pid, ...below.flat()];
}

/** CPU seconds used so far by the process and its descendants. */
export async function cpuSeconds(pid: number): Promise<number> {
  let total = 0;
  for (const member of await processTree(pid)) {
    const stat = await fs.readFile(`/proc/${member}/stat`, "utf8").catch(() => "");
    if (stat === "") continue;
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    total += (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  }
  return total;
}

/** The memory figure summed over the process and its descendants, in MiB. */
async function memoryMiB(pid: number, field: "VmHWM" | "VmRSS"): Promise<number> {
  let total = 0;
  for (const member of await processTree(pid)) {
    const status = await fs.readFile(`/proc/${member}/status`, "utf8").catch(() => "");
    total += Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  }
  return total / 1024;
}

export interface Broker {
  url: string;
  process: ServiceProcess | undefined;
  databaseUrl: string | undefined;
  /** Each device's secret, where devices must log in (ours+auth). */
  secrets: Map<string, string> | undefined;
  stop(): Promise<void>;
}

/** Starts a scenario's broker; for ours+auth, `deviceIds` become device identities first. */
export async function startBroker(
  serverUrl: string,
  scenario: Scenario,
  deviceIds: readonly string[],
): Promise<Broker> {
  if (scenario === "mosquitto") {
    return {
      url: "mqtt://127.0.0.1:1883",
      process: undefined,
      databaseUrl: undefined,
      secrets: undefined,
      stop: async () => {},
    };
  }
  const database = await createDatabase(serverUrl, `telemetry_${scenario.replace("+", "_")}`);
  const port = await freePort();
  const env: Record<string, string> = {
    DATABASE_URL: database.url,
    MQTT_PORT: String(port),
    LOG_LEVEL: "info",
  };
  let secrets: Map<string, string> | undefined;
  if (scenario === "ceiling") env.BRIDGE_TOPICS = "nothing-is-bridged/#";
  if (scenario === "ours+workers") env.WORKERS = "2";
  if (scenario === "naive" || scenario === "ours+auth") await migrate(database.url);
  if (scenario === "ours+auth") {
    env.ALLOW_ANONYMOUS = "false";
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    secrets = await new IdentityStore(client).add(deviceIds, "device").finally(() => client.end());
  }
  const child = await spawnService(
    env,
    scenario === "naive" ? "bench/naive-service.ts" : "bin/start.ts",
  );
  return {
    url: `mqtt://127.0.0.1:${port}`,
    process: child,
    databaseUrl: scenario === "ceiling" ? undefined : database.url,
    secrets,
    stop: async () => {
      child.child.kill("SIGTERM");
      await child.exited;
      await dropDatabase(serverUrl, database.name);
    },
  };
}

/** One generator device; it logs in as its identity where the broker has identities. */
export function connectDevice(
  broker: Broker,
  id: string,
  options: mqtt.IClientOptions = {},
): Promise<mqtt.MqttClient> {
  return mqtt.connectAsync(broker.url, {
    clientId: id,
    username: broker.secrets ? id : undefined,
    password: broker.secrets?.get(id),
    protocolVersion: 4,
    reconnectPeriod: 0,
    ...options,
  });
}

/** Whether the broker at 127.0.0.1:1883 answers MQTT. */
export async function mosquittoAnswers(): Promise<boolean> {
  try {
    const client = await mqtt.connectAsync("mqtt://127.0.0.1:1883", {
      reconnectPeriod: 0,
      connectTimeout: 2000,
    });
    await client.endAsync();
    return true;
  } catch {
    return false;
  }
}

/** Runs `messages` through one scenario in one shape; `onSample` sees the broker's RSS every 10 s. */
export async function benchScenario(
  serverUrl: string,
  scenario: Scenario,
  shape: Shape,
  messages: number,
  onSample?: (rssMiB: number, elapsedS: number) => void,
): Promise<ScenarioResult> {
  const tag = Math.random().toString(36).slice(2, 7);
  const ids = Array.from({ length: shape.devices }, (_, d) => `bench-${tag}-${d}`);
  const broker = await startBroker(serverUrl, scenario, ids);
  const pid = broker.process?.child.pid;
  try {
    const devices = await Promise.all(ids.map((id) => connectDevice(broker, id)));
    const perDevice = Math.ceil(messages / shape.devices);
    const intervalMs = shape.ratePerDevice ? 1000 / shape.ratePerDevice : 0;
    const streams = devices.map(
      (device, d) =>
        new Stream(
          device,
          ids[d] as string,
          perDevice,
          shape.inflight,
          intervalMs,
          (intervalMs * d) / shape.devices,
        ),
    );
    const cpuBefore = pid ? await cpuSeconds(pid) : 0;
    const started = performance.now();
    const sampler =
      pid && onSample
        ? setInterval(
            async () =>
              onSample(await memoryMiB(pid, "VmRSS"), (performance.now() - started) / 1000),
            10_000,
          )
        : undefined;
    await Promise.all(streams.map((stream) => stream.run())).finally(() => clearInterval(sampler));
    const seconds = (performance.now() - started) / 1000;
    const cpuAfter = pid ? await cpuSeconds(pid) : 0;
    const peakRssMiB = pid ? await memoryMiB(pid, "VmHWM") : undefined;
    await Promise.all(devices.map((device) => device.endAsync()));

    const sent = perDevice * shape.devices;
    let exactlyOnce: boolean | undefined;
    if (broker.databaseUrl) {
      const pool = new pg.Pool({ connectionString: broker.databaseUrl });
      const { rows } = await pool.query<{ n: string; ids: string }>(
        "SELECT count(*) AS n, count(DISTINCT (topic, event_id)) AS ids FROM telemetry",
      );
      await pool.end();
      exactlyOnce = Number(rows[0]?.n) === sent && Number(rows[0]?.ids) === sent;
    }
    const latencies = streams.flatMap((stream) => stream.latencies).sort((a, b) => a - b);
    return {
      scenario,
      shape: shape.label,
      messages: sent,
      seconds,
      perSecond: sent / seconds,
      p50Ms: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
      maxMs: latencies.at(-1) ?? 0,
      cpuSeconds: pid ? cpuAfter - cpuBefore : undefined,
      peakRssMiB,
      exactlyOnce,
    };
  } finally {
    await broker.stop();
  }
}
