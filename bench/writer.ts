/**
 * Rows per second into `telemetry`: the BatchWriter (COPY, in batches)
 * beside a plain writer doing multi-row INSERT … ON CONFLICT DO NOTHING, on
 * the same rows, one after the other.
 */

import pg from "pg";
import { pino } from "pino";
import { BatchWriter, COPY_TELEMETRY, copyIn } from "../bridge/batch-writer.ts";
import { encodeRows } from "../bridge/copy-binary.ts";
import { migrate } from "../bridge/migrate.ts";
import { dayOf, Partitions } from "../bridge/partitions.ts";
import type { TelemetryRow } from "../bridge/telemetry-message.ts";
import { createDatabase, dropDatabase } from "../test/helpers/databases.ts";

/** Connections writing at once, the same for both writers. */
const CONCURRENCY = 2;
const logger = pino({ level: "silent" });

function makeRows(count: number): TelemetryRow[] {
  const now = Date.now();
  return Array.from({ length: count }, (_, i) => {
    const device = `dev-${String(i % 1000).padStart(4, "0")}`;
    const eventId = `${device}-${Math.floor(i / 1000)}`;
    const timeMs = now - (count - i) * 10;
    return {
      topic: `telemetry/${device}/env`,
      deviceId: device,
      eventId,
      timeMs,
      payload: Buffer.from(
        JSON.stringify({
          event_id: eventId,
          ts: new Date(timeMs).toISOString(),
          seq: Math.floor(i / 1000),
          temperature: 21.5 + Math.sin(i) * 3,
          humidity: 40 + Math.cos(i) * 10,
          battery: 3.7 - (i % 1000) / 10_000,
        }),
      ),
      receivedAtMs: now,
      clientId: device,
    };
  });
}

/** The values of `INSERT INTO telemetry (time, topic, device_id, event_id, payload, received_at)`. */
export function insertValues(row: TelemetryRow): unknown[] {
  return [
    new Date(row.timeMs),
    row.topic,
    row.deviceId,
    row.eventId,
    row.payload.toString(),
    new Date(row.receivedAtMs),
  ];
}

/**
 * The approach small aggregators take: multi-row INSERT … ON CONFLICT, one
 * transaction per batch, on as many connections as the BatchWriter uses.
 */
async function insertWriter(pool: pg.Pool, rows: TelemetryRow[], batch: number): Promise<number> {
  const perStatement = Math.min(batch, Math.floor(65535 / 6));
  let stored = 0;
  let next = 0;
  const lane = async () => {
    for (let start = next; start < rows.length; start = next) {
      next += batch;
      const inserted = await insertBatch(pool, rows.slice(start, start + batch), perStatement);
      stored += inserted;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, lane));
  return stored;
}

async function insertBatch(
  pool: pg.Pool,
  rows: TelemetryRow[],
  perStatement: number,
): Promise<number> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    let stored = 0;
    for (let from = 0; from < rows.length; from += perStatement) {
      const chunk = rows.slice(from, from + perStatement);
      const params: unknown[] = [];
      const tuples = chunk.map((row, i) => {
        params.push(...insertValues(row));
        const p = i * 6;
        return `($${p + 1}, $${p + 2}, $${p + 3}, $${p + 4}, $${p + 5}, $${p + 6})`;
      });
      const result = await client.query(
        `INSERT INTO telemetry (time, topic, device_id, event_id, payload, received_at)
         VALUES ${tuples.join(", ")} ON CONFLICT DO NOTHING`,
        params,
      );
      stored += result.rowCount ?? 0;
    }
    await client.query("COMMIT");
    return stored;
  } catch (error) {
    await client.query("ROLLBACK");
    throw error;
  } finally {
    client.release();
  }
}

/**
 * PostgreSQL's ceiling for this row shape: the rows COPYed straight from
 * memory, `batch` rows a transaction, with no dedup or bookkeeping, on as
 * many connections as the other writers.
 */
async function copyWriter(pool: pg.Pool, rows: TelemetryRow[], batch: number): Promise<number> {
  let next = 0;
  const lane = async () => {
    for (let start = next; start < rows.length; start = next) {
      next += batch;
      const client = await pool.connect();
      try {
        await copyIn(client, COPY_TELEMETRY, encodeRows(rows.slice(start, start + batch)));
      } finally {
        client.release();
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, lane));
  return rows.length;
}

async function batchWriter(pool: pg.Pool, rows: TelemetryRow[], batch: number): Promise<number> {
  const partitions = new Partitions(pool, { daysAhead: 3, retentionDays: undefined }, logger);
  const writer = new BatchWriter(
    pool,
    partitions,
    {
      batchMaxRows: batch,
      batchMaxWaitMs: 10,
      queueMaxRows: batch * 4,
      concurrency: CONCURRENCY,
      dedupWindowKeys: 1_000_000,
      maxPayloadBytes: 64 * 1024,
    },
    logger,
  );
  const outcomes = await Promise.all(rows.map((row) => writer.write(row)));
  await writer.close();
  return outcomes.filter((outcome) => outcome.status === "stored").length;
}

export interface Result {
  writer: string;
  round: string;
  rows: number;
  stored: number;
  seconds: number;
  rowsPerSecond: number;
}

async function measure(
  url: string,
  name: string,
  round: string,
  rows: TelemetryRow[],
  run: (pool: pg.Pool, rows: TelemetryRow[]) => Promise<number>,
): Promise<Result> {
  const pool = new pg.Pool({ connectionString: url, max: 3 });
  pool.on("error", () => {});
  const started = performance.now();
  const stored = await run(pool, rows);
  const seconds = (performance.now() - started) / 1000;
  const { rows: check } = await pool.query<{ n: string; keys: string }>(
    "SELECT count(*) AS n, count(DISTINCT (topic, event_id)) AS keys FROM telemetry",
  );
  await pool.end();
  if (Number(check[0]?.n) !== rows.length || Number(check[0]?.keys) !== rows.length) {
    throw new Error(
      `${name} left ${check[0]?.n} rows (${check[0]?.keys} keys) for ${rows.length} sent`,
    );
  }
  return {
    writer: name,
    round,
    rows: rows.length,
    stored,
    seconds,
    rowsPerSecond: rows.length / seconds,
  };
}

/** An empty, migrated database whose partitions already hold every row's day. */
async function freshDatabase(
  serverUrl: string,
  rows: TelemetryRow[],
): Promise<{ name: string; url: string }> {
  const database = await createDatabase(serverUrl, "telemetry_bench");
  await migrate(database.url);
  const pool = new pg.Pool({ connectionString: database.url, max: 1 });
  await new Partitions(pool, { daysAhead: 0, retentionDays: undefined }, logger).ensure(
    rows.map((row) => dayOf(row.timeMs)),
  );
  await pool.end();
  return database;
}

export const WRITERS = [
  "BatchWriter (COPY)",
  "multi-row INSERT … ON CONFLICT",
  "COPY from memory (database limit)",
] as const;
export const ROUNDS = ["new rows", "all repeats"] as const;

/** Each writer stores `rowCount` new rows into an empty table, then the same rows again. */
export async function benchWriters(
  serverUrl: string,
  rowCount: number,
  batch: number,
  progress: (line: string) => void,
): Promise<{ payloadBytes: number; results: Result[] }> {
  const rows = makeRows(rowCount);
  const results: Result[] = [];
  const runs = [batchWriter, insertWriter, copyWriter];
  for (const [i, name] of WRITERS.entries()) {
    const run = runs[i] as typeof batchWriter;
    const database = await freshDatabase(serverUrl, rows);
    // A plain COPY cannot take rows that are already there.
    for (const round of run === copyWriter ? ROUNDS.slice(0, 1) : ROUNDS) {
      progress(`${name}: ${round}, ${rowCount} rows…`);
      results.push(
        await measure(database.url, name, round, rows, (pool, r) => run(pool, r, batch)),
      );
    }
    await dropDatabase(serverUrl, database.name);
  }
  const payloadBytes = Math.round(rows.reduce((n, r) => n + r.payload.length, 0) / rowCount);
  return { payloadBytes, results };
}
