/**
 * The approach small aggregators start with, for comparison: the same
 * broker and ingest hook, but each message is stored by its own
 * `INSERT … ON CONFLICT DO NOTHING` before it is acknowledged.
 * Reads DATABASE_URL (migrated) and MQTT_PORT.
 */
import pg from "pg";
import { pino } from "pino";
import { mqttLimits } from "../bin/service.ts";
import type { WriteOutcome } from "../bridge/batch-writer.ts";
import { loadConfig } from "../bridge/config.ts";
import { dayOf, Partitions } from "../bridge/partitions.ts";
import { parseTelemetry, type RawMessage } from "../bridge/telemetry-message.ts";
import { createIngestHooks } from "../broker/ingest-hook.ts";
import { startMqttServer } from "../broker/mqtt-server.ts";
import { topicMatcher } from "../broker/topic-filter.ts";
import { insertValues } from "./writer.ts";

const logger = pino({ level: "info" });
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
const partitions = new Partitions(pool, { daysAhead: 3, retentionDays: undefined }, logger);
await partitions.maintain();

async function ingest(message: RawMessage): Promise<WriteOutcome> {
  const parsed = parseTelemetry(message, 64 * 1024);
  if (!parsed.ok) return { status: "rejected", reason: parsed.reason, detail: parsed.detail };
  const row = parsed.row;
  await partitions.ensure([dayOf(row.timeMs)]);
  const result = await pool.query(
    `INSERT INTO telemetry (time, topic, device_id, event_id, payload, received_at)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
    insertValues(row),
  );
  return result.rowCount === 1 ? { status: "stored" } : { status: "duplicate", source: "database" };
}

const hooks = createIngestHooks({
  ingest: {
    submit: (message, receipt) => {
      ingest(message).then(
        (outcome) => receipt.settle(outcome),
        (error) => receipt.fail(error),
      );
    },
    // Like malformed messages above, letters are answered without being stored.
    submitLetter: (letter, receipt) =>
      receipt.settle({ status: "rejected", reason: letter.reason, detail: letter.detail }),
  },
  bridged: topicMatcher(["telemetry/#"]),
  timeoutMs: 30_000,
  logger,
});
const mqtt = await startMqttServer(
  {
    host: "127.0.0.1",
    port: Number(process.env.MQTT_PORT ?? 1883),
    limits: mqttLimits(loadConfig({})),
  },
  hooks,
  logger,
);
logger.info({ port: mqtt.port }, "ready");
process.on("SIGTERM", async () => {
  await mqtt.close();
  await pool.end();
  process.exit(0);
});
