import { ConfigError, loadConfig } from "../bridge/config.ts";
import { redactUrl } from "../bridge/database.ts";
import { createLogger } from "../bridge/logger.ts";
import { type Service, startService } from "./service.ts";

/**
 * One signal often arrives twice within milliseconds: npm forwards the SIGINT
 * or SIGTERM it receives, and the terminal (Ctrl-C) or `timeout` sends the
 * same to the whole process group. A repeat this soon after the first is
 * taken as the same signal; a later one forces the exit.
 */
const REPEAT_WINDOW_MS = 1000;

/** `npm start`: everything on one machine, until SIGINT or SIGTERM. */
async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`invalid configuration: ${error.message}`);
    process.exit(2);
  }
  const logger = createLogger(config.logLevel);
  const starting = startService(config, logger);
  let service: Service | undefined;

  let firstSignalAt: number | undefined;
  const shutdown = (signal: NodeJS.Signals) => {
    const now = performance.now();
    if (firstSignalAt !== undefined) {
      if (now - firstSignalAt < REPEAT_WINDOW_MS) {
        logger.info({ signal }, "same signal again within 1 s: still shutting down");
        return;
      }
      logger.warn({ signal }, "second signal: exiting without waiting");
      process.exit(1);
    }
    firstSignalAt = now;
    logger.info({ signal }, "shutting down: committing what was received (signal again to force)");
    // A signal during start-up waits for it, so that what it started (the
    // embedded PostgreSQL above all) is stopped too.
    starting
      .then((started) => started.close())
      .then(
        () => {
          logger.info("stopped");
          process.exit(0);
        },
        (error: unknown) => {
          logger.error({ err: error }, "shutdown failed");
          process.exit(1);
        },
      );
  };
  process.on("SIGINT", shutdown);
  process.on("SIGTERM", shutdown);
  // As for Mosquitto, SIGHUP re-reads the TLS certificates (their files are also watched).
  process.on("SIGHUP", () => service?.mqtt?.reloadCertificates());

  service = await starting;
  const host = (bound: string) =>
    bound === "127.0.0.1" || bound === "localhost" ? "localhost" : bound;
  const { mqtt } = service;
  const mqttUrl = mqtt && `mqtt://${host(config.mqttHost)}:${mqtt.port}`;
  const listeners = mqtt
    ? [
        `  MQTT       ${mqttUrl}   (stored: ${config.bridgeTopics.join(", ")})`,
        mqtt.tlsPort !== undefined &&
          `  MQTTS      mqtts://${host(config.mqttHost)}:${mqtt.tlsPort}${config.tlsCaFile ? "   (client certificates accepted)" : ""}`,
        mqtt.wsPort !== undefined &&
          `  WebSocket  ${config.tlsCertFile ? "wss" : "ws"}://${host(config.mqttHost)}:${mqtt.wsPort}/mqtt`,
      ]
    : ["  MQTT       off (EMBEDDED_BROKER=off)"];
  const source = config.source && redactUrl(config.source.url);
  if (source)
    listeners.push(`  Source     ${source}   (subscribed: ${config.bridgeTopics.join(", ")})`);
  const httpUrl = `http://${host(config.httpHost)}:${service.httpPort}`;
  const openOnPurpose = service.anonymous && config.allowAnonymous === true;
  const access = !service.anonymous
    ? "credentials required (npm run devices -- add <id>); anonymous clients are refused"
    : openOnPurpose
      ? "anonymous clients allowed (ALLOW_ANONYMOUS=true): anyone who reaches a port can publish and subscribe"
      : "anonymous clients allowed while every listener is on loopback (MQTT_HOST/HTTP_HOST beyond it require credentials)";
  if (openOnPurpose) {
    logger.warn("ALLOW_ANONYMOUS=true: clients without credentials may publish and subscribe");
  }
  const databaseUrl = service.database.url;
  logger.info(
    {
      mqtt: mqttUrl ?? "off",
      mqtts: mqtt?.tlsPort,
      ws: mqtt?.wsPort,
      source,
      http: httpUrl,
      topics: config.bridgeTopics,
      database: redactUrl(databaseUrl),
      embedded: service.database.embedded,
      anonymous: service.anonymous,
    },
    "ready",
  );
  if (process.stdout.isTTY) {
    const example = `{"event_id":"e-1","ts":"${new Date().toISOString()}","temperature":21.5}`;
    const login = service.anonymous ? "" : " -u <id> -P <secret>";
    console.log(
      [
        "",
        "telemetry-bridge is running",
        ...listeners.filter((line): line is string => typeof line === "string"),
        `  HTTP       ${httpUrl}   (/publish /events /stats /health /metrics)`,
        `  PostgreSQL ${databaseUrl}${service.database.embedded ? `   (embedded, data in ${config.dataDir})` : ""}`,
        `  Access     ${access}`,
        "",
        ...(mqtt
          ? [
              `  Publish    mosquitto_pub -p ${mqtt.port}${login} -q 1 -t telemetry/dev-1/env -m '${example}'`,
              `  Watch      mosquitto_sub -p ${mqtt.port}${login} -t 'telemetry/#' -v`,
            ]
          : []),
        `  Query      psql '${databaseUrl}' -c 'SELECT * FROM telemetry ORDER BY time DESC LIMIT 10'`,
        "  Grafana    add a PostgreSQL data source with the URL above",
        "",
      ].join("\n"),
    );
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : String(error));
  process.exit(1);
});
