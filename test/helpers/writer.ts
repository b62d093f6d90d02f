import pg from "pg";
import { BatchWriter, type BatchWriterOptions } from "../../bridge/batch-writer.ts";
import type { Logger } from "../../bridge/logger.ts";
import { Partitions } from "../../bridge/partitions.ts";
import type { TelemetryRow } from "../../bridge/telemetry-message.ts";
import { silentLogger } from "./test-database.ts";

export interface TestWriter {
  writer: BatchWriter;
  pool: pg.Pool;
  partitions: Partitions;
  close(): Promise<void>;
}

export function openWriter(
  url: string,
  options: Partial<BatchWriterOptions> = {},
  logger: Logger = silentLogger,
): TestWriter {
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  pool.on("error", () => {});
  const partitions = new Partitions(pool, { daysAhead: 3, retentionDays: undefined }, logger);
  const writer = new BatchWriter(
    pool,
    partitions,
    {
      batchMaxRows: 500,
      batchMaxWaitMs: 5,
      queueMaxRows: 2000,
      concurrency: 2,
      dedupWindowKeys: 100_000,
      maxPayloadBytes: 64 * 1024,
      ...options,
    },
    logger,
  );
  return {
    writer,
    pool,
    partitions,
    close: async () => {
      await writer.close();
      await pool.end();
    },
  };
}

/** A valid row for device `device`, event `n`, stamped `timeMs`. */
export function row(device: string, n: number, timeMs = Date.now()): TelemetryRow {
  const eventId = `${device}-${n}`;
  return {
    topic: `telemetry/${device}/env`,
    deviceId: device,
    eventId,
    timeMs,
    payload: Buffer.from(
      JSON.stringify({ event_id: eventId, ts: timeMs, temperature: 20 + (n % 10) / 10 }),
    ),
    receivedAtMs: Date.now(),
    clientId: device,
  };
}

export async function count(pool: pg.Pool, sql: string, params: unknown[] = []): Promise<number> {
  const result = await pool.query<{ n: string }>(sql, params);
  return Number(result.rows[0]?.n);
}
