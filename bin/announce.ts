import type { Config } from "../bridge/config.ts";
import { redactUrl } from "../bridge/database.ts";
import type { Logger } from "../bridge/logger.ts";
import type { Service } from "./service.ts";

/** Where a started service listens, as the "ready" line and the banner tell it. */
export interface Listening {
  /** Unset while the embedded broker is off. */
  mqttPort: number | undefined;
  tlsPort: number | undefined;
  wsPort: number | undefined;
  httpPort: number;
  databaseUrl: string;
  embedded: boolean;
  anonymous: boolean;
}

export function listeningOf(service: Service): Listening {
  return {
    mqttPort: service.mqtt?.port,
    tlsPort: service.mqtt?.tlsPort,
    wsPort: service.mqtt?.wsPort,
    httpPort: service.httpPort,
    databaseUrl: service.database.url,
    embedded: service.database.embedded,
    anonymous: service.anonymous,
  };
}

/** Logs "ready" with every address, and on a terminal prints them with commands to try. */
export function announce(config: Config, listening: Listening, logger: Logger): void {
  const host = (bound: string) =>
    bound === "127.0.0.1" || bound === "localhost" ? "localhost" : bound;
  const { mqttPort, tlsPort, wsPort, anonymous, databaseUrl, embedded } = listening;
  const mqttUrl =
    mqttPort !== undefined ? `mqtt://${host(config.mqttHost)}:${mqttPort}` : undefined;
  const listeners =
    mqttPort !== undefined
      ? [
          `  MQTT       ${mqttUrl}   (stored: ${config.bridgeTopics.join(", ")})`,
          tlsPort !== undefined &&
            `  MQTTS      mqtts://${host(config.mqttHost)}:${tlsPort}${config.tlsCaFile ? "   (client certificates accepted)" : ""}`,
          wsPort !== undefined &&
            `  WebSocket  ${config.tlsCertFile ? "wss" : "ws"}://${host(config.mqttHost)}:${wsPort}/mqtt`,
        ]
      : ["  MQTT       off (EMBEDDED_BROKER=off)"];
  const source = config.source && redactUrl(config.source.url);
  if (source)
    listeners.push(`  Source     ${source}   (subscribed: ${config.bridgeTopics.join(", ")})`);
  const httpUrl = `http://${host(config.httpHost)}:${listening.httpPort}`;
  const openOnPurpose = anonymous && config.allowAnonymous === true;
  const access = !anonymous
    ? "credentials required (npm run devices -- add <id>); anonymous clients are refused"
    : openOnPurpose
      ? "anonymous clients allowed (ALLOW_ANONYMOUS=true): anyone who reaches a port can publish and subscribe"
      : "anonymous clients allowed while every listener is on loopback (MQTT_HOST/HTTP_HOST beyond it require credentials)";
  if (openOnPurpose) {
    logger.warn("ALLOW_ANONYMOUS=true: clients without credentials may publish and subscribe");
  }
  logger.info(
    {
      mqtt: mqttUrl ?? "off",
      mqtts: tlsPort,
      ws: wsPort,
      source,
      http: httpUrl,
      topics: config.bridgeTopics,
      database: redactUrl(databaseUrl),
      embedded,
      anonymous,
      workers: config.workers,
    },
    "ready",
  );
  if (!process.stdout.isTTY) return;
  const example = `{"event_id":"e-1","ts":"${new Date().toISOString()}","temperature":21.5}`;
  const login = anonymous ? "" : " -u <id> -P <secret>";
  console.log(
    [
      "",
      `telemetry-bridge is running${config.workers > 1 ? ` (${config.workers} workers)` : ""}`,
      ...listeners.filter((line): line is string => typeof line === "string"),
      `  HTTP       ${httpUrl}   (/publish /events /stats /health /metrics)`,
      `  PostgreSQL ${databaseUrl}${embedded ? `   (embedded, data in ${config.dataDir})` : ""}`,
      `  Access     ${access}`,
      "",
      ...(mqttPort !== undefined
        ? [
            `  Publish    mosquitto_pub -p ${mqttPort}${login} -q 1 -t telemetry/dev-1/env -m '${example}'`,
            `  Watch      mosquitto_sub -p ${mqttPort}${login} -t 'telemetry/#' -v`,
          ]
        : []),
      `  Query      psql '${databaseUrl}' -c 'SELECT * FROM telemetry ORDER BY time DESC LIMIT 10'`,
      "  Grafana    add a PostgreSQL data source with the URL above",
      "",
    ].join("\n"),
  );
}
