/**
 * Bridge mode: devices publish to a Mosquitto of the bench's own, and a
 * subscriber takes the bridged topics from it at QoS 1 in a persistent
 * session. The same publishers (mqtt.js, QoS 1) drive every scenario:
 *
 * - ceiling: an mqtt.js subscriber acknowledging each message at once (the
 *   rate the broker delivers);
 * - naive: an mqtt.js subscriber storing each message by its own
 *   `INSERT … ON CONFLICT DO NOTHING` before it acknowledges it;
 * - ours: the service with SOURCE_URL pointing at that Mosquitto, plus the
 *   environment of the variant (share group, connections, protocol).
 *
 * The ceiling and naive subscribers run as a child process too (this file,
 * with BENCH_SUBSCRIBER set), so that no subscriber shares a core with the
 * publishers. Every scenario gets a fresh Mosquitto and, where something is
 * stored, a fresh database.
 */
import { spawnSync } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import mqtt from "mqtt";
import pg from "pg";
import { pino } from "pino";
import { migrate } from "../bridge/migrate.ts";
import { dayOf, Partitions } from "../bridge/partitions.ts";
import { parseTelemetry } from "../bridge/telemetry-message.ts";
import { createDatabase, dropDatabase } from "../test/helpers/databases.ts";
import { Stream } from "../test/helpers/device.ts";
import { type Mosquitto, startMosquitto } from "../test/helpers/mosquitto.ts";
import { type ServiceProcess, spawnService } from "../test/helpers/service.ts";
import { cpuSeconds } from "./pipeline.ts";
import { insertValues } from "./writer.ts";

export const BRIDGE_SCENARIOS = ["ceiling", "naive", "ours"] as const;
export type BridgeScenario = (typeof BRIDGE_SCENARIOS)[number];

/** Publishers × messages each keeps in flight, as the pipeline bench's gateways. */
export const PUBLISHERS = { devices: 10, inflight: 100 } as const;

const SUBSCRIBER_CLIENT_ID = "bench-subscriber";
const SHARE_GROUP = "bench";
const FILTER = "telemetry/#";
const MAX_PAYLOAD_BYTES = 64 * 1024;
/** A subscriber that stores nothing new for this long has lost messages, or hangs. */
const STALL_MS = 30_000;
/**
 * The finest and the coarsest interval between two looks at the progress:
 * GET /stats costs the service about a millisecond of CPU, so it is asked
 * often only when the last message is due.
 */
const POLL_MS = 10;
const POLL_MAX_MS = 200;

/**
 * Mosquitto's settings in every run. `max_queued_messages 0`: no maximum, so
 * a subscriber slower than the publishers makes the queue grow instead of
 * making Mosquitto drop (its default of 1,000 queued a client drops the rest).
 * `max_inflight_messages`: unacknowledged messages Mosquitto sends to a v4
 * subscriber, and to a v5 one that sends no Receive Maximum (one that does
 * gets exactly that many, whatever this says); 0 is no maximum.
 */
export function mosquittoSettings(inflight: number): string[] {
  return ["max_queued_messages 0", "max_queued_bytes 0", `max_inflight_messages ${inflight}`];
}

/** Mosquitto's version line, or undefined when the `mosquitto` binary is not installed. */
export function mosquittoVersion(): string | undefined {
  const run = spawnSync("mosquitto", ["-h"], { encoding: "utf8" });
  if (run.error) return undefined;
  return `${run.stdout}${run.stderr}`.split("\n")[0]?.trim();
}

export interface BridgeOptions {
  messages: number;
  protocolVersion: 4 | 5;
  /** Mosquitto's max_inflight_messages. */
  inflight: number;
}

export interface BridgeResult {
  scenario: BridgeScenario;
  connections: number;
  /** The environment the service ran with beyond SOURCE_URL (ours). */
  env: Record<string, string>;
  messages: number;
  /** From the first message received to the last one received (ceiling) or committed. */
  seconds: number;
  perSecond: number;
  /** The publishers' rate: from the first publish to Mosquitto's last PUBACK. */
  publishedPerSecond: number;
  /** CPU seconds the subscriber process (the service, for ours) used during the run. */
  cpuSeconds: number;
  /** ceiling: as many messages received as sent; naive, ours: PostgreSQL holds each one exactly once. */
  exactlyOnce: boolean;
}

interface Subscriber {
  process: ServiceProcess;
  databaseUrl: string | undefined;
  /** Messages received (ceiling) or committed so far, and when the first and latest were. */
  progress(): Promise<{ count: number; firstAtMs: number | undefined; lastAtMs: number }>;
  stop(): Promise<void>;
}

/** Connections a variant opens: SOURCE_CONNECTIONS, else one. */
export function connectionsOf(env: Record<string, string>): number {
  return Number(env.SOURCE_CONNECTIONS ?? 1);
}

async function freshDatabase(serverUrl: string, scenario: BridgeScenario) {
  const database = await createDatabase(serverUrl, `bridge_${scenario}`);
  await migrate(database.url);
  return database;
}

function lastJson(child: ServiceProcess, msg: string): Record<string, unknown> | undefined {
  for (let i = child.output.length - 1; i >= 0; i--) {
    const line = child.output[i] as string;
    if (!line.includes(`"msg":"${msg}"`)) continue;
    try {
      return JSON.parse(line) as Record<string, unknown>;
    } catch {}
  }
  return undefined;
}

async function startSubscriber(
  serverUrl: string,
  broker: Mosquitto,
  scenario: BridgeScenario,
  connections: number,
  env: Record<string, string>,
  options: BridgeOptions,
): Promise<Subscriber> {
  const database = scenario === "ceiling" ? undefined : await freshDatabase(serverUrl, scenario);
  const stopWith = (child: ServiceProcess) => async () => {
    child.child.kill("SIGTERM");
    await child.exited;
    if (database) await dropDatabase(serverUrl, database.name);
  };
  if (scenario !== "ours") {
    const child = await spawnService(
      {
        BENCH_SUBSCRIBER: scenario,
        BROKER_URL: broker.url,
        DATABASE_URL: database?.url ?? "",
        CONNECTIONS: String(connections),
        PROTOCOL_VERSION: String(options.protocolVersion),
        EXPECTED: String(options.messages),
      },
      "bench/bridge-mode.ts",
    );
    return {
      process: child,
      databaseUrl: database?.url,
      progress: async () => {
        const line = lastJson(child, "count");
        return {
          count: Number(line?.count ?? 0),
          firstAtMs: line?.firstAtMs as number | undefined,
          lastAtMs: Number(line?.lastAtMs ?? 0),
        };
      },
      stop: stopWith(child),
    };
  }
  const child = await spawnService({
    DATABASE_URL: database?.url as string,
    MQTT_PORT: "0",
    SOURCE_URL: broker.url,
    SOURCE_CLIENT_ID: SUBSCRIBER_CLIENT_ID,
    SOURCE_PROTOCOL_VERSION: String(options.protocolVersion),
    ...env,
  });
  const stop = stopWith(child);
  try {
    for (let waited = 0; ; waited += 50) {
      const subscribed = child.output.filter((line) =>
        line.includes("subscribed to the source broker"),
      ).length;
      if (subscribed >= connections) break;
      if (waited > 20_000)
        throw new Error(`the service did not subscribe:\n${child.output.join("\n")}`);
      await sleep(50);
    }
  } catch (error) {
    await stop();
    throw error;
  }
  const http = String(lastJson(child, "ready")?.http).replace("//localhost:", "//127.0.0.1:");
  const pool = new pg.Pool({ connectionString: database?.url, max: 1 });
  let firstAtMs: number | undefined;
  return {
    process: child,
    databaseUrl: database?.url,
    progress: async () => {
      const response = await fetch(`${http}/stats`);
      const stats = (await response.json()) as { unique_processed: number };
      const lastAtMs = Date.now();
      if (firstAtMs === undefined && stats.unique_processed > 0) {
        const { rows } = await pool.query<{ ms: number }>(
          "SELECT (extract(epoch FROM min(received_at)) * 1000)::float8 AS ms FROM telemetry",
        );
        firstAtMs = rows[0]?.ms;
      }
      return { count: stats.unique_processed, firstAtMs, lastAtMs };
    },
    stop: async () => {
      await pool.end();
      await stop();
    },
  };
}

async function exactlyOnceInDatabase(databaseUrl: string, sent: number): Promise<boolean> {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 1 });
  try {
    const { rows } = await pool.query<{ n: string; ids: string }>(
      "SELECT count(*) AS n, count(DISTINCT (topic, event_id)) AS ids FROM telemetry",
    );
    return Number(rows[0]?.n) === sent && Number(rows[0]?.ids) === sent;
  } finally {
    await pool.end();
  }
}

/** One scenario: a fresh Mosquitto, its subscriber subscribed, then the publishers' load. */
export async function benchBridgeScenario(
  serverUrl: string,
  scenario: BridgeScenario,
  env: Record<string, string>,
  options: BridgeOptions,
): Promise<BridgeResult> {
  const connections = connectionsOf(env);
  const broker = await startMosquitto(mosquittoSettings(options.inflight));
  try {
    const subscriber = await startSubscriber(
      serverUrl,
      broker,
      scenario,
      connections,
      env,
      options,
    );
    const pid = subscriber.process.child.pid as number;
    try {
      const tag = Math.random().toString(36).slice(2, 7);
      const ids = Array.from({ length: PUBLISHERS.devices }, (_, d) => `bridge-${tag}-${d}`);
      const devices = await Promise.all(
        ids.map((clientId) =>
          mqtt.connectAsync(broker.url, { clientId, protocolVersion: 4, reconnectPeriod: 0 }),
        ),
      );
      const perDevice = Math.ceil(options.messages / PUBLISHERS.devices);
      const sent = perDevice * PUBLISHERS.devices;
      const cpuBefore = await cpuSeconds(pid);
      const started = Date.now();
      const published = Promise.all(
        devices.map((device, d) =>
          new Stream(device, ids[d] as string, perDevice, PUBLISHERS.inflight).run(),
        ),
      ).then(() => Date.now());

      let progress = await subscriber.progress();
      let movedAt = Date.now();
      let wait = POLL_MAX_MS;
      while (progress.count < sent && Date.now() - movedAt < STALL_MS) {
        await sleep(wait);
        const next = await subscriber.progress();
        const perMs =
          (next.count - progress.count) / Math.max(next.lastAtMs - progress.lastAtMs, 1);
        if (next.count > progress.count) movedAt = Date.now();
        // Half the time the rest should take at the latest rate.
        wait = Math.min(POLL_MAX_MS, Math.max(POLL_MS, (sent - next.count) / perMs / 2));
        progress = next;
      }
      const cpu = (await cpuSeconds(pid)) - cpuBefore;
      const publishedAt = await published;
      await Promise.all(devices.map((device) => device.endAsync()));

      const firstAtMs = progress.firstAtMs ?? started;
      const seconds = Math.max(progress.lastAtMs - firstAtMs, 1) / 1000;
      const exactlyOnce =
        progress.count === sent &&
        (subscriber.databaseUrl === undefined ||
          (await exactlyOnceInDatabase(subscriber.databaseUrl, sent)));
      return {
        scenario,
        connections,
        env,
        messages: sent,
        seconds,
        perSecond: progress.count / seconds,
        publishedPerSecond: (sent * 1000) / Math.max(publishedAt - started, 1),
        cpuSeconds: cpu,
        exactlyOnce,
      };
    } finally {
      await subscriber.stop();
    }
  } finally {
    await broker.stop();
  }
}

export interface BridgeReport {
  mosquitto: { version: string; settings: string[] };
  protocolVersion: 4 | 5;
  publishers: typeof PUBLISHERS;
  results: BridgeResult[];
  ratios: {
    connections: number;
    env: Record<string, string>;
    oursPerCeiling: number;
    oursPerNaive: number;
  }[];
}

/** ceiling, naive, then ours once per variant (the environment it adds to SOURCE_URL). */
export async function benchBridgeMode(
  serverUrl: string,
  variants: Record<string, string>[],
  options: BridgeOptions,
  progress: (line: string) => void,
): Promise<BridgeReport | string> {
  const version = mosquittoVersion();
  if (version === undefined)
    return "the mosquitto binary is not installed (apt-get install mosquitto)";
  const runs: [BridgeScenario, Record<string, string>][] = [
    ["ceiling", {}],
    ["naive", {}],
    ...variants.map((env): [BridgeScenario, Record<string, string>] => ["ours", env]),
  ];
  const results: BridgeResult[] = [];
  for (const [scenario, env] of runs) {
    progress(
      `bridge mode, ${scenario}${Object.keys(env).length > 0 ? ` ${JSON.stringify(env)}` : ""}: ${options.messages} messages…`,
    );
    results.push(await benchBridgeScenario(serverUrl, scenario, env, options));
  }
  const of = (scenario: BridgeScenario) =>
    results.find((r) => r.scenario === scenario)?.perSecond ?? Number.NaN;
  return {
    mosquitto: { version, settings: mosquittoSettings(options.inflight) },
    protocolVersion: options.protocolVersion,
    publishers: PUBLISHERS,
    results,
    ratios: results
      .filter((r) => r.scenario === "ours")
      .map((r) => ({
        connections: r.connections,
        env: r.env,
        oursPerCeiling: r.perSecond / of("ceiling"),
        oursPerNaive: r.perSecond / of("naive"),
      })),
  };
}

/** The variant of ours with `connections` connections: one plain subscription, or a share group. */
export function sharedVariant(connections: number): Record<string, string> {
  return connections === 1
    ? {}
    : { SOURCE_SHARE_GROUP: SHARE_GROUP, SOURCE_CONNECTIONS: String(connections) };
}

/**
 * The ceiling or naive subscriber (BENCH_SUBSCRIBER), in a process of its
 * own: says "ready" once every connection is subscribed, then a "count" line
 * at most every 10 ms while messages arrive.
 */
async function runSubscriber(scenario: BridgeScenario): Promise<void> {
  const env = process.env;
  const connections = Number(env.CONNECTIONS ?? 1);
  const protocolVersion = Number(env.PROTOCOL_VERSION ?? 4) as 4 | 5;
  const expected = Number(env.EXPECTED);
  const filter = connections === 1 ? FILTER : `$share/${SHARE_GROUP}/${FILTER}`;
  const logger = pino({ level: "warn" });
  const pool =
    scenario === "naive"
      ? new pg.Pool({ connectionString: env.DATABASE_URL, max: connections })
      : undefined;
  const partitions = pool
    ? new Partitions(pool, { daysAhead: 3, retentionDays: undefined }, logger)
    : undefined;
  await partitions?.maintain();

  let count = 0;
  let firstAtMs: number | undefined;
  let lastAtMs = 0;
  let reported = 0;
  const report = () => {
    if (reported === count) return;
    reported = count;
    console.log(JSON.stringify({ msg: "count", count, firstAtMs, lastAtMs }));
  };
  const timer = setInterval(report, POLL_MS);
  const counted = () => {
    const now = Date.now();
    firstAtMs ??= now;
    lastAtMs = now;
    count++;
    if (count === expected) report();
  };
  async function store(topic: string, payload: Buffer): Promise<void> {
    const parsed = parseTelemetry(
      { topic, payload, clientId: null, receivedAtMs: Date.now() },
      MAX_PAYLOAD_BYTES,
    );
    if (!parsed.ok) throw new Error(`${topic}: ${parsed.reason}`);
    await partitions?.ensure([dayOf(parsed.row.timeMs)]);
    await pool?.query(
      `INSERT INTO telemetry (time, topic, device_id, event_id, payload, received_at)
       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
      insertValues(parsed.row),
    );
  }

  const clients = await Promise.all(
    Array.from({ length: connections }, async (_, n) => {
      const client = await mqtt.connectAsync(env.BROKER_URL as string, {
        clientId: connections === 1 ? SUBSCRIBER_CLIENT_ID : `${SUBSCRIBER_CLIENT_ID}-${n + 1}`,
        protocolVersion,
        clean: false,
        properties: protocolVersion === 5 ? { sessionExpiryInterval: 3600 } : undefined,
        reconnectPeriod: 0,
      });
      if (scenario === "naive") {
        client.handleMessage = (packet, done) => {
          const payload = Buffer.isBuffer(packet.payload)
            ? packet.payload
            : Buffer.from(packet.payload);
          store(packet.topic, payload).then(
            () => {
              counted();
              done();
            },
            (error: Error) => {
              console.error(error.message);
              done(error);
            },
          );
        };
      } else {
        client.on("message", counted);
      }
      await client.subscribeAsync(filter, { qos: 1 });
      return client;
    }),
  );
  console.log(JSON.stringify({ msg: "ready", connections, filter }));
  process.on("SIGTERM", async () => {
    clearInterval(timer);
    report();
    await Promise.all(clients.map((client) => client.endAsync()));
    await pool?.end();
    process.exit(0);
  });
}

const subscriber = process.env.BENCH_SUBSCRIBER as BridgeScenario | undefined;
if (subscriber && import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  await runSubscriber(subscriber);
}
