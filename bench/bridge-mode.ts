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
 * Each scenario runs under one of two loads:
 *
 * - stream: the subscriber is subscribed before the publishers start and
 *   takes the messages while they publish, so it is bounded by their rate;
 * - backlog: the subscriber subscribes and goes away, the publishers put
 *   every message into its session at Mosquitto, then the subscriber starts
 *   again and drains them, bounded by nothing but itself and Mosquitto.
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
import { logged, type ServiceProcess, spawnService } from "../test/helpers/service.ts";
import { cpuSeconds } from "./pipeline.ts";
import { insertValues } from "./writer.ts";

export const BRIDGE_SCENARIOS = ["ceiling", "naive", "ours"] as const;
export type BridgeScenario = (typeof BRIDGE_SCENARIOS)[number];

export const BRIDGE_LOADS = ["stream", "backlog"] as const;
export type BridgeLoad = (typeof BRIDGE_LOADS)[number];

/** Publishers × messages each keeps in flight, as the pipeline bench's gateways. */
export const PUBLISHERS = { devices: 10, inflight: 100 } as const;

const SUBSCRIBER_CLIENT_ID = "bench-subscriber";
const SHARE_GROUP = "bench";
const FILTER = "telemetry/#";
const MAX_PAYLOAD_BYTES = 64 * 1024;
/** A subscriber that stores nothing new for this long has lost messages, or hangs. */
const STALL_MS = 30_000;
/** How long a subscriber may take to subscribe. */
const SUBSCRIBE_MS = 20_000;
/**
 * The finest and the coarsest interval between two looks at the progress:
 * GET /stats costs the service about a millisecond of CPU, so it is asked
 * often only when the last message is due.
 */
const POLL_MS = 10;
const POLL_MAX_MS = 200;

/**
 * Mosquitto's settings in every run. `max_queued_messages 0`: no maximum, so
 * a subscriber slower than the publishers, or away, makes the queue grow
 * instead of making Mosquitto drop (its default of 1,000 queued a client
 * drops the rest). `max_inflight_messages`: unacknowledged messages Mosquitto
 * sends to a v4 subscriber, and to a v5 one that sends no Receive Maximum
 * (one that does gets exactly that many, whatever this says); 0 is no maximum.
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
  load: BridgeLoad;
  scenario: BridgeScenario;
  connections: number;
  /** The environment the service ran with beyond SOURCE_URL (ours). */
  env: Record<string, string>;
  messages: number;
  /**
   * From the first message received to the last one received (ceiling) or
   * committed; for the backlog, the first message the subscriber received
   * after it started again.
   */
  seconds: number;
  perSecond: number;
  /**
   * The publishers' rate: from the first publish to Mosquitto's last PUBACK
   * (for the backlog, with the subscriber away).
   */
  publishedPerSecond: number;
  /**
   * CPU seconds the subscriber process (the service, for ours) used: from
   * the first publish (stream) or from its start again (backlog) to the last
   * message.
   */
  cpuSeconds: number;
  /** ceiling: as many messages received as sent; naive, ours: PostgreSQL holds each one exactly once. */
  exactlyOnce: boolean;
}

interface Progress {
  /** Messages received (ceiling) or committed so far. */
  count: number;
  /** When the first was, once there is one. */
  firstAtMs: number | undefined;
  /** When the latest was, or when the count was taken. */
  lastAtMs: number;
}

interface Subscriber {
  pid: number;
  /** Resolves once each of its connections is subscribed. */
  subscribed(): Promise<void>;
  progress(): Promise<Progress>;
  /** SIGTERM, then its exit. */
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

async function terminate(child: ServiceProcess): Promise<void> {
  child.child.kill("SIGTERM");
  await child.exited;
}

/** The subscriber, started: resolves once it says "ready", before it is subscribed. */
async function startSubscriber(
  broker: Mosquitto,
  databaseUrl: string | undefined,
  scenario: BridgeScenario,
  connections: number,
  env: Record<string, string>,
  options: BridgeOptions,
): Promise<Subscriber> {
  if (scenario !== "ours") {
    const child = await spawnService(
      {
        BENCH_SUBSCRIBER: scenario,
        BROKER_URL: broker.url,
        DATABASE_URL: databaseUrl ?? "",
        CONNECTIONS: String(connections),
        PROTOCOL_VERSION: String(options.protocolVersion),
        EXPECTED: String(options.messages),
      },
      "bench/bridge-mode.ts",
    );
    return {
      pid: child.child.pid as number,
      subscribed: () => logged(child, '"msg":"subscribed"', SUBSCRIBE_MS),
      progress: async () => {
        const line = lastJson(child, "count");
        return {
          count: Number(line?.count ?? 0),
          firstAtMs: line?.firstAtMs as number | undefined,
          lastAtMs: Number(line?.lastAtMs ?? 0),
        };
      },
      stop: () => terminate(child),
    };
  }
  const child = await spawnService({
    DATABASE_URL: databaseUrl as string,
    MQTT_PORT: "0",
    SOURCE_URL: broker.url,
    SOURCE_CLIENT_ID: SUBSCRIBER_CLIENT_ID,
    SOURCE_PROTOCOL_VERSION: String(options.protocolVersion),
    ...env,
  });
  const http = String(lastJson(child, "ready")?.http).replace("//localhost:", "//127.0.0.1:");
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 1 });
  let firstAtMs: number | undefined;
  return {
    pid: child.child.pid as number,
    subscribed: () =>
      logged(child, '"msg":"subscribed to the source broker"', SUBSCRIBE_MS, connections),
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
      await terminate(child);
    },
  };
}

/** Watches the subscriber until it has taken `sent` messages, or stalls. */
async function follow(subscriber: Subscriber, sent: number): Promise<Progress> {
  let progress = await subscriber.progress();
  let movedAt = Date.now();
  let wait = POLL_MAX_MS;
  while (progress.count < sent && Date.now() - movedAt < STALL_MS) {
    await sleep(wait);
    const next = await subscriber.progress();
    const perMs = (next.count - progress.count) / Math.max(next.lastAtMs - progress.lastAtMs, 1);
    if (next.count > progress.count) movedAt = Date.now();
    // Half the time the rest should take at the latest rate.
    wait = Math.min(POLL_MAX_MS, Math.max(POLL_MS, (sent - next.count) / perMs / 2));
    progress = next;
  }
  return progress;
}

/** The publishers, connected; `run` publishes every message and resolves with their rate. */
async function connectPublishers(broker: Mosquitto, messages: number) {
  const tag = Math.random().toString(36).slice(2, 7);
  const ids = Array.from({ length: PUBLISHERS.devices }, (_, d) => `bridge-${tag}-${d}`);
  const devices = await Promise.all(
    ids.map((clientId) =>
      mqtt.connectAsync(broker.url, { clientId, protocolVersion: 4, reconnectPeriod: 0 }),
    ),
  );
  const perDevice = Math.ceil(messages / PUBLISHERS.devices);
  const sent = perDevice * PUBLISHERS.devices;
  return {
    sent,
    run: async (): Promise<number> => {
      const started = Date.now();
      await Promise.all(
        devices.map((device, d) =>
          new Stream(device, ids[d] as string, perDevice, PUBLISHERS.inflight).run(),
        ),
      );
      return (sent * 1000) / Math.max(Date.now() - started, 1);
    },
    end: () => Promise.all(devices.map((device) => device.endAsync())),
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

/** One scenario under one load, with a fresh Mosquitto. */
export async function benchBridgeScenario(
  serverUrl: string,
  scenario: BridgeScenario,
  load: BridgeLoad,
  env: Record<string, string>,
  options: BridgeOptions,
): Promise<BridgeResult> {
  const connections = connectionsOf(env);
  const broker = await startMosquitto(mosquittoSettings(options.inflight));
  const database = scenario === "ceiling" ? undefined : await freshDatabase(serverUrl, scenario);
  const start = () => startSubscriber(broker, database?.url, scenario, connections, env, options);
  try {
    const publishers = await connectPublishers(broker, options.messages);
    let subscriber: Subscriber | undefined;
    try {
      let published: Promise<number> | undefined;
      if (load === "backlog") {
        const session = await start();
        await session.subscribed().finally(() => session.stop());
        published = publishers.run();
        await published;
      }
      subscriber = await start();
      if (load === "stream") await subscriber.subscribed();
      const cpuBefore = await cpuSeconds(subscriber.pid);
      const started = Date.now();
      published ??= publishers.run();
      const progress = await follow(subscriber, publishers.sent);
      const cpu = (await cpuSeconds(subscriber.pid)) - cpuBefore;
      const publishedPerSecond = await published;

      const seconds = Math.max(progress.lastAtMs - (progress.firstAtMs ?? started), 1) / 1000;
      const exactlyOnce =
        progress.count === publishers.sent &&
        (database === undefined || (await exactlyOnceInDatabase(database.url, publishers.sent)));
      return {
        load,
        scenario,
        connections,
        env,
        messages: publishers.sent,
        seconds,
        perSecond: progress.count / seconds,
        publishedPerSecond,
        cpuSeconds: cpu,
        exactlyOnce,
      };
    } finally {
      await subscriber?.stop();
      await publishers.end();
    }
  } finally {
    if (database) await dropDatabase(serverUrl, database.name);
    await broker.stop();
  }
}

export interface BridgeReport {
  mosquitto: { version: string; settings: string[] };
  protocolVersion: 4 | 5;
  publishers: typeof PUBLISHERS;
  results: BridgeResult[];
  ratios: {
    load: BridgeLoad;
    connections: number;
    env: Record<string, string>;
    oursPerCeiling: number;
    oursPerNaive: number;
  }[];
}

/** For each load: ceiling, naive, then ours once per variant (the environment it adds to SOURCE_URL). */
export async function benchBridgeMode(
  serverUrl: string,
  loads: readonly BridgeLoad[],
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
  for (const load of loads) {
    for (const [scenario, env] of runs) {
      progress(
        `bridge mode, ${load}, ${scenario}${Object.keys(env).length > 0 ? ` ${JSON.stringify(env)}` : ""}: ${options.messages} messages…`,
      );
      results.push(await benchBridgeScenario(serverUrl, scenario, load, env, options));
    }
  }
  const of = (load: BridgeLoad, scenario: BridgeScenario) =>
    results.find((r) => r.load === load && r.scenario === scenario)?.perSecond ?? Number.NaN;
  return {
    mosquitto: { version, settings: mosquittoSettings(options.inflight) },
    protocolVersion: options.protocolVersion,
    publishers: PUBLISHERS,
    results,
    ratios: results
      .filter((r) => r.scenario === "ours")
      .map((r) => ({
        load: r.load,
        connections: r.connections,
        env: r.env,
        oursPerCeiling: r.perSecond / of(r.load, "ceiling"),
        oursPerNaive: r.perSecond / of(r.load, "naive"),
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
 * own: says "ready" once every connection is connected (a session it
 * resumes delivers from then on), "subscribed" once every connection is
 * subscribed, then a "count" line at most every 10 ms while messages arrive.
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
      const client = mqtt.connect(env.BROKER_URL as string, {
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
      await new Promise((resolve, reject) => {
        client.once("connect", resolve);
        client.once("error", reject);
      });
      return client;
    }),
  );
  process.on("SIGTERM", async () => {
    clearInterval(timer);
    report();
    await Promise.all(clients.map((client) => client.endAsync()));
    await pool?.end();
    process.exit(0);
  });
  console.log(JSON.stringify({ msg: "ready", connections, filter }));
  await Promise.all(clients.map((client) => client.subscribeAsync(filter, { qos: 1 })));
  console.log(JSON.stringify({ msg: "subscribed" }));
}

const subscriber = process.env.BENCH_SUBSCRIBER as BridgeScenario | undefined;
if (subscriber && import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  await runSubscriber(subscriber);
}
