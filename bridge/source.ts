import fs from "node:fs";
import mqtt from "mqtt";
import type { Receipt } from "./batch-writer.ts";
import type { SourceConfig } from "./config.ts";
import { redactUrl } from "./database.ts";
import type { Logger } from "./logger.ts";
import type { RawMessage } from "./telemetry-message.ts";

/** Where the source's messages go: the receipt is told once a message is committed. */
export interface SourceIngest {
  submit(message: RawMessage, receipt: Receipt): void;
}

export interface Source {
  /** Closes the connection (once, however often called); messages not acknowledged stay with the broker. */
  close(): Promise<void>;
}

/** A session the broker keeps for a day while the service is away (MQTT 5). */
const SESSION_EXPIRY_S = 86_400;
const RECONNECT_MS = 1000;

/**
 * Subscribes to `filters` on an external broker at QoS 1, in a persistent
 * session under a fixed client id, and acknowledges each message only once
 * it is committed (stored, a duplicate or a dead letter). A message the
 * service could not commit is never acknowledged, so the broker keeps it and
 * delivers it again after the service reconnects or restarts.
 *
 * mqtt.js takes the next message of a connection once the last one is
 * handled, so one connection receives one message per commit.
 */
export function startSource(
  config: SourceConfig,
  filters: readonly string[],
  bridged: (topic: string) => boolean,
  ingest: SourceIngest,
  logger: Logger,
): Source {
  const subscriptions = filters.map((filter) =>
    config.shareGroup === undefined ? filter : `$share/${config.shareGroup}/${filter}`,
  );
  const clients = Array.from({ length: config.connections }, (_, n) =>
    connect(
      config,
      config.connections === 1 ? config.clientId : `${config.clientId}-${n + 1}`,
      subscriptions,
      bridged,
      ingest,
      logger,
    ),
  );
  let closing: Promise<void> | undefined;
  return {
    close: () =>
      (closing ??= Promise.all(clients.map((client) => client.endAsync())).then(() => undefined)),
  };
}

function connect(
  config: SourceConfig,
  clientId: string,
  subscriptions: readonly string[],
  bridged: (topic: string) => boolean,
  ingest: SourceIngest,
  logger: Logger,
): mqtt.MqttClient {
  const shown = redactUrl(config.url);
  const client = mqtt.connect(config.url, {
    clientId,
    username: config.username,
    password: config.password,
    ca: config.caFile ? fs.readFileSync(config.caFile) : undefined,
    protocolVersion: config.protocolVersion,
    clean: false,
    properties:
      config.protocolVersion === 5 ? { sessionExpiryInterval: SESSION_EXPIRY_S } : undefined,
    reconnectPeriod: RECONNECT_MS,
    // Subscribed below on every connection instead.
    resubscribe: false,
  });
  client.handleMessage = (packet, done) => {
    const { topic } = packet;
    if (!bridged(topic)) {
      done();
      return;
    }
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    ingest.submit(
      { topic, payload, clientId: null, receivedAtMs: Date.now() },
      {
        settle: () => done(),
        // Not acknowledged: the broker delivers it again on the next connection.
        fail: (error) => done(error as Error),
      },
    );
  };
  client.on("error", (error) =>
    logger.warn({ source: shown, error: error.message }, "source broker"),
  );
  client.on("offline", () =>
    logger.warn({ source: shown }, "source broker unreachable; reconnecting"),
  );
  // Subscribed on every connection: a broker that lost the session (or a
  // first start) has none to deliver on.
  client.on("connect", (connack) => {
    client.subscribe([...subscriptions], { qos: 1 }, (error, granted) => {
      const refused = (granted ?? []).filter((grant) => grant.qos > 1).map((grant) => grant.topic);
      if (error || refused.length > 0) {
        logger.error(
          { source: shown, error: error?.message, refused },
          "the source broker refused the subscriptions: nothing is received from it",
        );
        return;
      }
      logger.info(
        { source: shown, clientId, subscriptions, sessionPresent: connack.sessionPresent },
        "subscribed to the source broker",
      );
    });
  });
  return client;
}
