import type { EventEmitter } from "node:events";
import pg from "pg";
import { BatchWriter } from "../bridge/batch-writer.ts";
import type { Config } from "../bridge/config.ts";
import { type Database, openDatabase } from "../bridge/database.ts";
import type { Logger } from "../bridge/logger.ts";
import { bridgedTopics } from "../bridge/mappings.ts";
import { localReports, Metrics, type Reports } from "../bridge/metrics.ts";
import { migrate } from "../bridge/migrate.ts";
import { Partitions } from "../bridge/partitions.ts";
import { startSource } from "../bridge/source.ts";
import { type Access, createAccess } from "../broker/auth/access.ts";
import { Authenticator } from "../broker/auth/authenticator.ts";
import { IdentityDirectory } from "../broker/auth/identity-directory.ts";
import { watchIdentities } from "../broker/auth/revocation.ts";
import { createIngestHooks } from "../broker/ingest-hook.ts";
import { type MqttLimits, type MqttServer, startMqttServer } from "../broker/mqtt-server.ts";
import { connectSharedState } from "../broker/shared-state.ts";
import { type HttpServer, startHttpServer } from "../http/server.ts";
import { IdentityStore } from "../storage/identities.ts";

export interface Service {
  /** Unset while the embedded broker is off (EMBEDDED_BROKER=off). */
  mqttPort: number | undefined;
  httpPort: number;
  database: Database;
  writer: BatchWriter;
  mqtt: MqttServer | undefined;
  access: Access;
  /** Clients without credentials are accepted (see `anonymousAllowed`). */
  anonymous: boolean;
  /** Stops accepting, commits and acknowledges what was received, then closes everything. */
  close(): Promise<void>;
}

const STATS_INTERVAL_MS = 10_000;

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The limits every MQTT listener applies, from the configuration. */
export function mqttLimits(config: Config): MqttLimits {
  return {
    maxPacketBytes: config.mqttMaxPacketBytes,
    connectTimeoutMs: config.mqttConnectTimeoutMs,
    maxConnections: config.mqttMaxConnections,
    maxPerAddress: config.mqttMaxConnectionsPerAddress,
    ratePerAddress: config.mqttConnectRatePerAddress,
    maxKeepaliveS: config.mqttMaxKeepaliveS,
  };
}

/**
 * As Mosquitto 2 does: without ALLOW_ANONYMOUS, clients without credentials
 * are accepted only while nothing listens beyond loopback.
 */
export function anonymousAllowed(
  config: Pick<Config, "allowAnonymous" | "mqttHost" | "httpHost">,
): boolean {
  return config.allowAnonymous ?? (isLoopback(config.mqttHost) && isLoopback(config.httpHost));
}

/** Database, migrations, partition job, writer, broker and HTTP API, started in that order. */
export async function startService(
  config: Config,
  logger: Logger,
  reportsOf: (local: Metrics) => Reports = localReports,
): Promise<Service> {
  const { mappings } = config;
  const topics = bridgedTopics(config.bridgeTopics, mappings);
  const database = await openDatabase(config, logger);
  const cleanup: (() => Promise<void> | void)[] = [() => database.stop()];
  const unwind = async () => {
    for (const step of cleanup.reverse()) await step();
  };
  try {
    const applied = await migrate(database.url);
    if (applied.length > 0) logger.info({ applied }, "migrations applied");

    const pool = new pg.Pool({
      connectionString: database.url,
      max: config.batchConcurrency + 2,
      application_name: "telemetry-bridge",
    });
    pool.on("error", (error) =>
      logger.warn({ error: error.message }, "idle PostgreSQL connection lost"),
    );
    cleanup.push(() => pool.end());

    const partitions = new Partitions(
      pool,
      { daysAhead: config.partitionDaysAhead, retentionDays: config.retentionDays },
      logger,
    );
    await partitions.maintain();
    const job = partitions.schedule(config.partitionSchedule);
    cleanup.push(() => job.stop());

    const writer = new BatchWriter(
      pool,
      partitions,
      {
        mappings,
        batchMaxRows: config.batchMaxRows,
        batchMaxWaitMs: config.batchMaxWaitMs,
        queueMaxRows: config.queueMaxRows,
        concurrency: config.batchConcurrency,
        dedupWindowKeys: config.dedupWindowKeys,
        maxPayloadBytes: config.maxPayloadBytes,
      },
      logger,
    );
    cleanup.push(() => writer.close());

    const anonymous = anonymousAllowed(config);
    const store = new IdentityStore(pool);
    const directory = new IdentityDirectory(store);
    const authenticator = new Authenticator(directory);
    const access = createAccess({
      authenticator,
      store,
      directory,
      anonymous,
      topics,
      logger,
    });
    cleanup.push(() => access.close());
    const watcher = watchIdentities(database.url, { access, authenticator, directory, logger });
    cleanup.push(() => watcher.close());
    await watcher.ready;

    const { forwards, ...ingestHooks } = createIngestHooks({
      ingest: writer,
      bridged: topics.bridged,
      timeoutMs: config.ingestTimeoutMs,
      access,
      logger,
    });
    const shared =
      config.embeddedBroker && config.redisUrl
        ? await connectSharedState(
            {
              url: config.redisUrl,
              forwards,
            },
            logger,
          )
        : undefined;
    cleanup.push(() => shared?.close());
    const mqtt = config.embeddedBroker
      ? await startMqttServer(
          {
            host: config.mqttHost,
            port: config.mqttPort,
            trustedProxies: config.trustedProxies,
            proxyProtocol: config.mqttProxyProtocol,
            tls:
              config.tlsCertFile && config.tlsKeyFile
                ? {
                    port: config.mqttsPort,
                    certFile: config.tlsCertFile,
                    keyFile: config.tlsKeyFile,
                    caFile: config.tlsCaFile,
                  }
                : undefined,
            wsPort: config.mqttWsPort,
            limits: mqttLimits(config),
            shared: shared?.broker,
          },
          {
            ...ingestHooks,
            authenticate: access.authenticate,
            authorizeSubscribe: access.authorizeSubscribe,
          },
          logger,
        )
      : undefined;
    cleanup.push(() => {
      shared?.stopReconnecting();
      return mqtt?.close();
    });
    // aedes emits what fails in the background, such as publishing the wills
    // of a process that died, while Redis is unreachable; its types leave it out.
    (mqtt?.broker as EventEmitter | undefined)?.on("error", (error: Error) =>
      logger.warn({ err: error }, "broker background step failed"),
    );
    const metrics = new Metrics({
      writer,
      access,
      mqtt,
      partitions,
      connectedClients: () => mqtt?.broker.connectedClients ?? 0,
    });
    const http: HttpServer = await startHttpServer(config.httpPort, {
      writer,
      reports: reportsOf(metrics),
      pool,
      mqtt,
      topics,
      authenticator,
      anonymous,
      host: config.httpHost,
      trustedProxies: config.trustedProxies,
      bodyLimit: config.httpBodyLimitBytes,
      timeoutMs: config.ingestTimeoutMs,
      logger,
    });

    const source = config.source
      ? startSource(
          config.source,
          topics.filters,
          topics.bridged,
          writer,
          config.queueMaxRows,
          logger,
        )
      : undefined;
    cleanup.push(() => source?.close());

    const stats = reportStats(writer, mqtt, logger);
    let closing: Promise<void> | undefined;
    const close = () => {
      closing ??= (async () => {
        clearInterval(stats);
        await http.close();
        mqtt?.stopAccepting();
        // The source stops reading and waits for what it received.
        const sourceClosed = source?.close();
        // Messages already received are committed and acknowledged; clients
        // that send more meanwhile are disconnected without a PUBACK.
        await writer.close();
        await sourceClosed;
        await new Promise((resolve) => setImmediate(resolve));
        await unwind();
      })();
      return closing;
    };
    return {
      mqttPort: mqtt?.port,
      httpPort: http.port,
      database,
      writer,
      mqtt,
      access,
      anonymous,
      close,
    };
  } catch (error) {
    await unwind().catch((failure: unknown) => logger.error({ err: failure }, "cleanup failed"));
    throw error;
  }
}

function reportStats(
  writer: BatchWriter,
  mqtt: MqttServer | undefined,
  logger: Logger,
): NodeJS.Timeout {
  let last = { ...writer.counters, at: Date.now() };
  const timer = setInterval(() => {
    const now = { ...writer.counters, at: Date.now() };
    const seconds = (now.at - last.at) / 1000;
    const rate = (key: "received" | "stored") => Math.round((now[key] - last[key]) / seconds);
    if (now.received !== last.received || writer.queueDepth > 0) {
      logger.info(
        {
          receivedPerSecond: rate("received"),
          storedPerSecond: rate("stored"),
          duplicates: now.duplicateWindow + now.duplicateDatabase,
          rejected: Object.values(now.rejected).reduce((sum, n) => sum + (n ?? 0), 0),
          queueDepth: writer.queueDepth,
          clients: mqtt?.broker.connectedClients,
        },
        "ingest",
      );
    }
    last = now;
  }, STATS_INTERVAL_MS);
  timer.unref();
  return timer;
}
