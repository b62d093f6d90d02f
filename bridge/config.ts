import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import cron from "node-cron";
import { validateFilter } from "../broker/topic-filter.ts";
import { TrustedProxies } from "../broker/trusted-proxies.ts";
import { MappingError, Mappings } from "./mappings.ts";

/**
 * Every setting the service reads, with its default. Environment variables
 * override these; `loadConfig` validates each one and names the variable
 * when it is wrong.
 */
export interface Config {
  /** Address the MQTT listeners bind to (TCP, TLS, WebSockets). */
  mqttHost: string;
  /** TCP port of the MQTT broker. */
  mqttPort: number;
  /** Port of MQTT over TLS; listens only when TLS_CERT_FILE and TLS_KEY_FILE are set. */
  mqttsPort: number;
  /** Port of MQTT over WebSockets (path /mqtt, WSS with TLS); unset: no WebSocket listener. */
  mqttWsPort: number | undefined;
  /** PEM certificate chain and key of the TLS listeners. */
  tlsCertFile: string | undefined;
  tlsKeyFile: string | undefined;
  /** PEM CA whose client certificates identify clients by their CN. */
  tlsCaFile: string | undefined;
  /**
   * Clients without credentials: true accepts them, false refuses them,
   * unset accepts them only while every listener is bound to loopback.
   */
  allowAnonymous: boolean | undefined;
  /** Largest MQTT packet read; a larger one closes its connection before it is buffered. */
  mqttMaxPacketBytes: number;
  /** Time from a connection's opening to its CONNECT, after which it is closed. */
  mqttConnectTimeoutMs: number;
  /** MQTT connections held at once, over every listener. */
  mqttMaxConnections: number;
  /** MQTT connections held at once from one source address. */
  mqttMaxConnectionsPerAddress: number;
  /** New MQTT connections accepted from one source address per second (a burst of this many × 10). */
  mqttConnectRatePerAddress: number;
  /** Longest keepalive a client may ask for, in seconds; 0 (none) counts as longer. */
  mqttMaxKeepaliveS: number;
  /** Address the HTTP API binds to. */
  httpHost: string;
  /** Port of the HTTP API (/publish, /events, /stats, /health, /metrics). */
  httpPort: number;
  /** Largest HTTP request body accepted; larger ones get 413. */
  httpBodyLimitBytes: number;
  /** MQTT filters whose messages are stored; others are only brokered. */
  bridgeTopics: string[];
  /** How to read devices' own shapes, from MAPPINGS_FILE; their filters are bridged too. */
  mappings: Mappings | undefined;
  /** A broker the service subscribes to for the bridged filters (SOURCE_URL); unset: none. */
  source: SourceConfig | undefined;
  /**
   * Whether the service runs its own broker (the MQTT, MQTTS and WebSocket
   * listeners). Off only with a source: devices then publish to that broker.
   */
  embeddedBroker: boolean;
  /**
   * Longest a device waits for its PUBACK while PostgreSQL is slow or down;
   * then it is disconnected and resends. Capped by the client's keepalive.
   */
  ingestTimeoutMs: number;
  /** Service processes sharing the MQTT and HTTP ports (WORKERS; `auto` is one per core). */
  workers: number;
  /**
   * Redis that the processes share live messages, sessions, subscriptions
   * and retained messages through; unset: each process keeps its own.
   */
  redisUrl: string | undefined;
  /**
   * MQTT over TCP arrives through a load balancer that sends the PROXY
   * protocol header (v1 or v2) first: the device's address is read from it.
   * Needs `trustedProxies`.
   */
  mqttProxyProtocol: boolean;
  /**
   * The load balancers allowed to name a client's address: in a PROXY
   * protocol header, and in an HTTP request's X-Forwarded-For. Empty: none.
   */
  trustedProxies: TrustedProxies;
  /** Use this PostgreSQL server; unset starts the embedded one. */
  databaseUrl: string | undefined;
  /** Where the embedded PostgreSQL keeps its cluster. */
  dataDir: string;
  /** Port of the embedded PostgreSQL (ignored with DATABASE_URL). */
  pgPort: number;
  logLevel: LogLevel;
  /** A batch is written once it holds this many messages… */
  batchMaxRows: number;
  /** …or once its oldest message has waited this long. */
  batchMaxWaitMs: number;
  /** Messages the writer holds before callers have to wait. */
  queueMaxRows: number;
  /** Batches written at once, each on its own connection. */
  batchConcurrency: number;
  /** Keys of committed messages remembered to drop redeliveries without a round trip. */
  dedupWindowKeys: number;
  /** Largest payload accepted; larger ones are dead-lettered. */
  maxPayloadBytes: number;
  /** Daily partitions created ahead of today; events further ahead are dead-lettered. */
  partitionDaysAhead: number;
  /** Days of data kept; older partitions are dropped. Unset keeps everything. */
  retentionDays: number | undefined;
  /** node-cron expression for partition maintenance. */
  partitionSchedule: string;
}

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const defaults = {
  mqttHost: "127.0.0.1",
  mqttPort: 1883,
  mqttsPort: 8883,
  mqttWsPort: undefined,
  tlsCertFile: undefined,
  tlsKeyFile: undefined,
  tlsCaFile: undefined,
  allowAnonymous: undefined,
  mqttMaxPacketBytes: 256 * 1024,
  mqttConnectTimeoutMs: 5000,
  mqttMaxConnections: 20_000,
  mqttMaxConnectionsPerAddress: 5000,
  mqttConnectRatePerAddress: 500,
  mqttMaxKeepaliveS: 3600,
  httpHost: "127.0.0.1",
  httpPort: 8080,
  httpBodyLimitBytes: 1024 * 1024,
  bridgeTopics: ["telemetry/#"],
  mappings: undefined,
  source: undefined,
  embeddedBroker: true,
  ingestTimeoutMs: 30_000,
  workers: 1,
  redisUrl: undefined,
  mqttProxyProtocol: false,
  trustedProxies: new TrustedProxies([]),
  databaseUrl: undefined,
  dataDir: ".data",
  pgPort: 54329,
  logLevel: "info",
  batchMaxRows: 5000,
  batchMaxWaitMs: 2,
  queueMaxRows: 20000,
  batchConcurrency: 2,
  dedupWindowKeys: 1_000_000,
  maxPayloadBytes: 64 * 1024,
  partitionDaysAhead: 3,
  retentionDays: undefined,
  partitionSchedule: "*/15 * * * *",
} satisfies Config;

/** The environment variables `loadConfig` reads. */
export const CONFIG_VARIABLES = [
  "MQTT_HOST",
  "MQTT_PORT",
  "MQTTS_PORT",
  "MQTT_WS_PORT",
  "TLS_CERT_FILE",
  "TLS_KEY_FILE",
  "TLS_CA_FILE",
  "ALLOW_ANONYMOUS",
  "MQTT_MAX_PACKET_BYTES",
  "MQTT_CONNECT_TIMEOUT_MS",
  "MQTT_MAX_CONNECTIONS",
  "MQTT_MAX_CONNECTIONS_PER_ADDRESS",
  "MQTT_CONNECT_RATE_PER_ADDRESS",
  "MQTT_MAX_KEEPALIVE_S",
  "HTTP_HOST",
  "HTTP_PORT",
  "HTTP_BODY_LIMIT_BYTES",
  "BRIDGE_TOPICS",
  "MAPPINGS_FILE",
  "SOURCE_URL",
  "SOURCE_USERNAME",
  "SOURCE_PASSWORD",
  "SOURCE_CA_FILE",
  "SOURCE_CLIENT_ID",
  "SOURCE_PROTOCOL_VERSION",
  "SOURCE_SHARE_GROUP",
  "SOURCE_CONNECTIONS",
  "EMBEDDED_BROKER",
  "INGEST_TIMEOUT_MS",
  "WORKERS",
  "REDIS_URL",
  "MQTT_PROXY_PROTOCOL",
  "TRUSTED_PROXIES",
  "DATABASE_URL",
  "DATA_DIR",
  "PG_PORT",
  "LOG_LEVEL",
  "BATCH_MAX_ROWS",
  "BATCH_MAX_WAIT_MS",
  "BATCH_CONCURRENCY",
  "QUEUE_MAX_ROWS",
  "DEDUP_WINDOW_KEYS",
  "MAX_PAYLOAD_BYTES",
  "PARTITION_DAYS_AHEAD",
  "RETENTION_DAYS",
  "PARTITION_SCHEDULE",
] as const;

/** The broker of SOURCE_URL and how to log in to it. */
export interface SourceConfig {
  url: string;
  username: string | undefined;
  password: string | undefined;
  /** PEM CA that signs the source broker's certificate (mqtts://), when not a public one. */
  caFile: string | undefined;
  /** Fixed, so that the broker keeps the session (and what it holds unacknowledged) across restarts. */
  clientId: string;
  protocolVersion: 4 | 5;
  /**
   * Subscribe as a member of this shared-subscription group
   * (`$share/<group>/<filter>`), so that several connections or processes
   * split the stream; unset: a plain subscription.
   */
  shareGroup: string | undefined;
  /** Connections to open, each a member of the share group under `<clientId>-<n>`. */
  connections: number;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

type Env = Record<string, string | undefined>;

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max} (got "${raw}")`);
  }
  return value;
}

function optionalInteger(env: Env, name: string, min: number, max: number): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return undefined;
  return integer(env, name, 0, min, max);
}

/**
 * `raw` as a URL whose scheme is one of `protocols`; the errors name the
 * variable, show `example`, and say which schemes it takes (`schemes`).
 */
function checkedUrl(
  name: string,
  raw: string,
  protocols: readonly string[],
  schemes: string,
  example: string,
): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`${name} must be a URL like ${example} (got "${raw}")`);
  }
  if (!protocols.includes(url.protocol)) {
    throw new ConfigError(`${name} must start with ${schemes} (got "${url.protocol}//…")`);
  }
  return url;
}

function databaseUrl(env: Env): string | undefined {
  const raw = env.DATABASE_URL;
  if (raw === undefined || raw.trim() === "") return undefined;
  checkedUrl(
    "DATABASE_URL",
    raw,
    ["postgres:", "postgresql:"],
    "postgres://",
    "postgres://user:password@host:5432/dbname",
  );
  return raw;
}

function logLevel(env: Env): LogLevel {
  const raw = env.LOG_LEVEL;
  if (raw === undefined || raw.trim() === "") return defaults.logLevel;
  const level = LOG_LEVELS.find((candidate) => candidate === raw.trim().toLowerCase());
  if (!level)
    throw new ConfigError(`LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")} (got "${raw}")`);
  return level;
}

function topics(env: Env): string[] {
  const raw = env.BRIDGE_TOPICS;
  if (raw === undefined || raw.trim() === "") return defaults.bridgeTopics;
  const filters = raw.split(",").map((filter) => filter.trim());
  for (const filter of filters) {
    const problem = validateFilter(filter);
    if (problem) {
      throw new ConfigError(
        `BRIDGE_TOPICS must be comma-separated MQTT filters such as "telemetry/#": "${filter}" ${problem}`,
      );
    }
  }
  return filters;
}

function mappings(env: Env): Mappings | undefined {
  const file = env.MAPPINGS_FILE?.trim();
  if (!file) return undefined;
  try {
    return Mappings.load(file);
  } catch (error) {
    if (error instanceof MappingError) throw new ConfigError(`MAPPINGS_FILE ${error.message}`);
    throw error;
  }
}

function source(env: Env): SourceConfig | undefined {
  const raw = env.SOURCE_URL?.trim();
  const username = env.SOURCE_USERNAME?.trim() || undefined;
  const password = env.SOURCE_PASSWORD || undefined;
  const caFile = readableFile(env, "SOURCE_CA_FILE");
  const clientId = env.SOURCE_CLIENT_ID?.trim() || "telemetry-bridge";
  const version = env.SOURCE_PROTOCOL_VERSION?.trim() || "4";
  const shareGroup = env.SOURCE_SHARE_GROUP?.trim() || undefined;
  const connections = integer(env, "SOURCE_CONNECTIONS", 1, 1, 64);
  if (!raw) return undefined;
  checkedUrl("SOURCE_URL", raw, ["mqtt:", "mqtts:"], "mqtt:// or mqtts://", "mqtt://broker:1883");
  if (version !== "4" && version !== "5") {
    throw new ConfigError(
      `SOURCE_PROTOCOL_VERSION must be 4 (MQTT 3.1.1) or 5 (got "${env.SOURCE_PROTOCOL_VERSION}")`,
    );
  }
  if (shareGroup !== undefined && !/^[^/+#]+$/.test(shareGroup)) {
    throw new ConfigError(
      `SOURCE_SHARE_GROUP must be a name without "/", "+" or "#" (got "${env.SOURCE_SHARE_GROUP}")`,
    );
  }
  if (connections > 1 && shareGroup === undefined) {
    throw new ConfigError(
      "SOURCE_CONNECTIONS above 1 needs SOURCE_SHARE_GROUP: without a share group every connection would receive every message",
    );
  }
  return {
    url: raw,
    username,
    password,
    caFile,
    clientId,
    protocolVersion: version === "5" ? 5 : 4,
    shareGroup,
    connections,
  };
}

function embeddedBroker(env: Env, source: SourceConfig | undefined): boolean {
  const on = onOff(env, "EMBEDDED_BROKER", defaults.embeddedBroker);
  if (!on && !source) {
    throw new ConfigError(
      "EMBEDDED_BROKER=off needs SOURCE_URL: without either, no MQTT message would reach the service",
    );
  }
  return on;
}

function workers(env: Env): number {
  const raw = env.WORKERS?.trim().toLowerCase();
  if (!raw) return defaults.workers;
  if (raw === "auto") return os.availableParallelism();
  return integer(env, "WORKERS", defaults.workers, 1, 256);
}

function redisUrl(env: Env): string | undefined {
  const raw = env.REDIS_URL?.trim();
  if (!raw) return undefined;
  checkedUrl("REDIS_URL", raw, ["redis:", "rediss:"], "redis:// or rediss://", "redis://host:6379");
  return raw;
}

function trustedProxies(env: Env): TrustedProxies {
  const raw = env.TRUSTED_PROXIES?.trim();
  if (!raw) return defaults.trustedProxies;
  try {
    return new TrustedProxies(
      raw
        .split(",")
        .map((entry) => entry.trim())
        .filter((entry) => entry !== ""),
    );
  } catch (error) {
    throw new ConfigError(
      `TRUSTED_PROXIES must be comma-separated IP addresses or CIDR ranges such as 10.0.0.5 or 10.0.0.0/29: ${(error as Error).message}`,
    );
  }
}

/** MQTT_PROXY_PROTOCOL: on only with the proxies whose headers are believed. */
function proxyProtocol(env: Env, trusted: TrustedProxies): boolean {
  const on = onOff(env, "MQTT_PROXY_PROTOCOL", defaults.mqttProxyProtocol);
  if (on && trusted.empty) {
    throw new ConfigError(
      "MQTT_PROXY_PROTOCOL=on needs TRUSTED_PROXIES: the addresses of the load balancers allowed to name a device's address (such as 10.0.0.5); anyone else could claim any address",
    );
  }
  return on;
}

function onOff(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name]?.trim().toLowerCase();
  if (!raw) return fallback;
  if (raw === "on") return true;
  if (raw === "off") return false;
  throw new ConfigError(`${name} must be on or off (got "${env[name]}")`);
}

function host(env: Env, name: string, fallback: string): string {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  if (!/^[A-Za-z0-9.:_%-]+$/.test(raw)) {
    throw new ConfigError(
      `${name} must be an address to bind to, such as 127.0.0.1, 0.0.0.0 or :: (got "${raw}")`,
    );
  }
  return raw;
}

function readableFile(env: Env, name: string): string | undefined {
  const raw = env[name]?.trim();
  if (!raw) return undefined;
  const file = path.resolve(raw);
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch {
    throw new ConfigError(`${name} must name a readable PEM file (cannot read "${raw}")`);
  }
  return file;
}

function tlsFiles(env: Env) {
  const tlsCertFile = readableFile(env, "TLS_CERT_FILE");
  const tlsKeyFile = readableFile(env, "TLS_KEY_FILE");
  const tlsCaFile = readableFile(env, "TLS_CA_FILE");
  if (Boolean(tlsCertFile) !== Boolean(tlsKeyFile)) {
    throw new ConfigError(
      `${tlsCertFile ? "TLS_KEY_FILE" : "TLS_CERT_FILE"} must be set too: TLS needs both a certificate and its key`,
    );
  }
  if (tlsCaFile && !tlsCertFile) {
    throw new ConfigError(
      "TLS_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE: client certificates are accepted on the TLS listeners",
    );
  }
  return { tlsCertFile, tlsKeyFile, tlsCaFile };
}

function allowAnonymous(env: Env): boolean | undefined {
  const raw = env.ALLOW_ANONYMOUS?.trim().toLowerCase();
  if (!raw) return undefined;
  if (raw === "true") return true;
  if (raw === "false") return false;
  throw new ConfigError(`ALLOW_ANONYMOUS must be true or false (got "${env.ALLOW_ANONYMOUS}")`);
}

function schedule(env: Env): string {
  const raw = env.PARTITION_SCHEDULE;
  if (raw === undefined || raw.trim() === "") return defaults.partitionSchedule;
  if (!cron.validate(raw)) {
    throw new ConfigError(
      `PARTITION_SCHEDULE must be a cron expression such as "*/15 * * * *" (got "${raw}")`,
    );
  }
  return raw;
}

/** Reads and validates the configuration; throws a ConfigError naming the first bad variable. */
export function loadConfig(env: Env = process.env): Config {
  const batchMaxRows = integer(env, "BATCH_MAX_ROWS", defaults.batchMaxRows, 1, 100_000);
  const queueMaxRows = integer(env, "QUEUE_MAX_ROWS", defaults.queueMaxRows, 1, 10_000_000);
  if (queueMaxRows < batchMaxRows) {
    throw new ConfigError(
      `QUEUE_MAX_ROWS (${queueMaxRows}) must be at least BATCH_MAX_ROWS (${batchMaxRows})`,
    );
  }
  const sourceConfig = source(env);
  const workerCount = workers(env);
  const proxies = trustedProxies(env);
  if (workerCount > 1 && sourceConfig && sourceConfig.shareGroup === undefined) {
    throw new ConfigError(
      "WORKERS above 1 with SOURCE_URL needs SOURCE_SHARE_GROUP: each worker subscribes under its own client id, and without a share group every worker would receive every message",
    );
  }
  return {
    mqttHost: host(env, "MQTT_HOST", defaults.mqttHost),
    mqttPort: integer(env, "MQTT_PORT", defaults.mqttPort, 0, 65535),
    mqttsPort: integer(env, "MQTTS_PORT", defaults.mqttsPort, 0, 65535),
    mqttWsPort: optionalInteger(env, "MQTT_WS_PORT", 0, 65535),
    ...tlsFiles(env),
    allowAnonymous: allowAnonymous(env),
    mqttMaxPacketBytes: integer(
      env,
      "MQTT_MAX_PACKET_BYTES",
      defaults.mqttMaxPacketBytes,
      1024,
      268_435_460,
    ),
    mqttConnectTimeoutMs: integer(
      env,
      "MQTT_CONNECT_TIMEOUT_MS",
      defaults.mqttConnectTimeoutMs,
      100,
      600_000,
    ),
    mqttMaxConnections: integer(
      env,
      "MQTT_MAX_CONNECTIONS",
      defaults.mqttMaxConnections,
      1,
      10_000_000,
    ),
    mqttMaxConnectionsPerAddress: integer(
      env,
      "MQTT_MAX_CONNECTIONS_PER_ADDRESS",
      defaults.mqttMaxConnectionsPerAddress,
      1,
      10_000_000,
    ),
    mqttConnectRatePerAddress: integer(
      env,
      "MQTT_CONNECT_RATE_PER_ADDRESS",
      defaults.mqttConnectRatePerAddress,
      1,
      1_000_000,
    ),
    mqttMaxKeepaliveS: integer(env, "MQTT_MAX_KEEPALIVE_S", defaults.mqttMaxKeepaliveS, 1, 65535),
    httpHost: host(env, "HTTP_HOST", defaults.httpHost),
    httpPort: integer(env, "HTTP_PORT", defaults.httpPort, 0, 65535),
    httpBodyLimitBytes: integer(
      env,
      "HTTP_BODY_LIMIT_BYTES",
      defaults.httpBodyLimitBytes,
      1024,
      256 * 1024 * 1024,
    ),
    bridgeTopics: topics(env),
    mappings: mappings(env),
    source: sourceConfig,
    embeddedBroker: embeddedBroker(env, sourceConfig),
    ingestTimeoutMs: integer(env, "INGEST_TIMEOUT_MS", defaults.ingestTimeoutMs, 100, 3_600_000),
    workers: workerCount,
    redisUrl: redisUrl(env),
    mqttProxyProtocol: proxyProtocol(env, proxies),
    trustedProxies: proxies,
    databaseUrl: databaseUrl(env),
    dataDir: path.resolve(env.DATA_DIR?.trim() || defaults.dataDir),
    pgPort: integer(env, "PG_PORT", defaults.pgPort, 1, 65535),
    logLevel: logLevel(env),
    batchMaxRows,
    batchMaxWaitMs: integer(env, "BATCH_MAX_WAIT_MS", defaults.batchMaxWaitMs, 0, 60_000),
    queueMaxRows,
    batchConcurrency: integer(env, "BATCH_CONCURRENCY", defaults.batchConcurrency, 1, 16),
    dedupWindowKeys: integer(env, "DEDUP_WINDOW_KEYS", defaults.dedupWindowKeys, 0, 16_000_000),
    maxPayloadBytes: integer(
      env,
      "MAX_PAYLOAD_BYTES",
      defaults.maxPayloadBytes,
      64,
      16 * 1024 * 1024,
    ),
    partitionDaysAhead: integer(env, "PARTITION_DAYS_AHEAD", defaults.partitionDaysAhead, 0, 366),
    retentionDays: optionalInteger(env, "RETENTION_DAYS", 1, 100_000),
    partitionSchedule: schedule(env),
  };
}
