import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { pino } from "pino";
import { afterAll, describe, expect, it } from "vitest";
import type { BatchWriter, WriteOutcome } from "../../bridge/batch-writer.ts";
import { migrate, readMigrations } from "../../bridge/migrate.ts";
import { dayOf, Partitions, partitionName } from "../../bridge/partitions.ts";
import type { TelemetryRow } from "../../bridge/telemetry-message.ts";
import { createTestDatabase, silentLogger } from "../helpers/test-database.ts";
import { count, openWriter, row, type TestWriter } from "../helpers/writer.ts";

// Several service processes on one database are several pools, each with
// its own writer, partitions and migrations run: so are these tests.
const db = await createTestDatabase("concurrency");
const unmigrated = await createTestDatabase("concurrency_migrate", undefined, { migrate: false });
const pool = new pg.Pool({ connectionString: db.url });
afterAll(() => pool.end());

// A deadlock waits deadlock_timeout (1 s by default) before one transaction is chosen to fail.
await pool.query(`ALTER DATABASE ${db.name} SET deadlock_timeout = '100ms'`);

/** A writer on a pool of its own, as another process has; it logs into `lines`. */
function processWriter(lines: string[]): TestWriter {
  const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(line) });
  return openWriter(db.url, { batchMaxRows: 5000, queueMaxRows: 10_000 }, logger);
}

/** Other backends report their statistics within a second of going idle or on exit. */
const STATS_DELAY_MS = 1500;

/** Deadlocks PostgreSQL has broken in this database, as its statistics tell. */
function deadlocks(): Promise<number> {
  return count(
    pool,
    "SELECT deadlocks AS n FROM pg_stat_database WHERE datname = current_database()",
  );
}

interface Round {
  /** What each writer was handed, in the order it was handed them. */
  a: TelemetryRow[];
  b: TelemetryRow[];
  unique: number;
}

/**
 * `size` keys over four devices, two to a millisecond; writer a gets the
 * first three quarters in key order, writer b the last three quarters in
 * reverse: half the keys go to both, in opposite orders.
 */
function round(label: string, size: number, t: number): Round {
  const keys = Array.from({ length: size }, (_, n) =>
    row(`${label}-${n % 4}`, n, t + Math.floor(n / 2)),
  );
  const quarter = size / 4;
  return { a: keys.slice(0, 3 * quarter), b: keys.slice(quarter).reverse(), unique: size };
}

/** Both writers handed their rows in the same tick; every outcome, failures included. */
async function race(
  a: BatchWriter,
  b: BatchWriter,
  rows: { a: TelemetryRow[]; b: TelemetryRow[] },
): Promise<{ a: WriteOutcome[]; b: WriteOutcome[] }> {
  const settled = await Promise.allSettled([
    Promise.all(rows.a.map((r) => a.write(r))),
    Promise.all(rows.b.map((r) => b.write(r))),
  ]);
  const failures = settled.flatMap((s) => (s.status === "rejected" ? [s.reason] : []));
  expect(failures).toEqual([]);
  const [outA, outB] = settled.map((s) => (s.status === "fulfilled" ? s.value : []));
  return { a: outA as WriteOutcome[], b: outB as WriteOutcome[] };
}

/** Each key stored by exactly one writer, a duplicate for the other. */
function expectStoredOnce(rows: Round, outcomes: { a: WriteOutcome[]; b: WriteOutcome[] }) {
  const stored = new Map<string, number>();
  const note = (list: TelemetryRow[], results: WriteOutcome[]) =>
    list.forEach((r, i) => {
      const outcome = results[i] as WriteOutcome;
      expect(outcome.status).not.toBe("rejected");
      if (outcome.status === "stored") stored.set(r.eventId, (stored.get(r.eventId) ?? 0) + 1);
    });
  note(rows.a, outcomes.a);
  note(rows.b, outcomes.b);
  expect(stored.size).toBe(rows.unique);
  expect([...stored.values()].every((n) => n === 1)).toBe(true);
}

const ROUNDS = 20;
const SIZE = 800;

describe("two writers on separate pools, overlapping keys in opposite orders", () => {
  it("merge through staging without deadlocking, each key stored once", async () => {
    const logs: string[] = [];
    const a = processWriter(logs);
    const b = processWriter(logs);
    const seed = processWriter(logs);
    const before = await deadlocks();
    const t = Date.now() - 3_600_000;
    for (let r = 0; r < ROUNDS; r++) {
      const rows = round(`merge${r}`, SIZE, t + r * 1000);
      // A row already in the table, handed to both first: each batch finds a
      // duplicate, so both writers keep writing through staging.
      const seen = row(`merge${r}-seen`, 0, t + r * 1000);
      expect(await seed.writer.write(seen)).toEqual({ status: "stored" });
      const outcomes = await race(a.writer, b.writer, {
        a: [seen, ...rows.a],
        b: [seen, ...rows.b],
      });
      expect([outcomes.a[0], outcomes.b[0]]).toEqual([
        { status: "duplicate", source: "database" },
        { status: "duplicate", source: "database" },
      ]);
      expectStoredOnce(rows, { a: outcomes.a.slice(1), b: outcomes.b.slice(1) });
    }
    await Promise.all([a.close(), b.close(), seed.close()]);
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id LIKE 'merge%'"),
    ).toBe(ROUNDS * (SIZE + 1));
    await sleep(STATS_DELAY_MS);
    expect((await deadlocks()) - before).toBe(0);
    expect(logs.filter((line) => line.includes("40P01"))).toEqual([]);
    expect(a.writer.counters.retries + b.writer.counters.retries).toBe(0);
  });

  it("copy straight into the table, and a deadlock between them fails nothing", async () => {
    const logs: string[] = [];
    const a = processWriter(logs);
    const b = processWriter(logs);
    const before = await deadlocks();
    const t = Date.now() - 7_200_000;
    for (let r = 0; r < ROUNDS; r++) {
      const rows = round(`copy${r}`, SIZE, t + r * 1000);
      expectStoredOnce(rows, await race(a.writer, b.writer, rows));
    }
    await Promise.all([a.close(), b.close()]);
    expect(
      await count(
        pool,
        "SELECT count(DISTINCT (topic, event_id, time)) AS n FROM telemetry WHERE device_id LIKE 'copy%'",
      ),
    ).toBe(ROUNDS * SIZE);
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id LIKE 'copy%'"),
    ).toBe(ROUNDS * SIZE);
    await sleep(STATS_DELAY_MS);
    const broken = (await deadlocks()) - before;
    const retried = a.writer.counters.retries + b.writer.counters.retries;
    console.log(`plain COPY rounds: ${broken} deadlocks, ${retried} batches retried`);
    // Each deadlock fails one transaction, whose batch goes again.
    expect(retried).toBe(broken);
    expect(logs.filter((line) => line.includes('"level":50'))).toEqual([]);
  });
});

describe("partition maintenance from several connections at once", () => {
  it("creates the same days concurrently without an error, each once", async () => {
    const pools = Array.from(
      { length: 4 },
      () => new pg.Pool({ connectionString: db.url, max: 2 }),
    );
    const day = 86_400_000;
    try {
      for (let r = 0; r < 15; r++) {
        const now = Date.UTC(2031, 0, 1) + r * 10 * day;
        const days = Array.from({ length: 4 }, (_, i) => dayOf(now) + i);
        const each = pools.map(
          (p) => new Partitions(p, { daysAhead: 3, retentionDays: 5 }, silentLogger),
        );
        const created = await Promise.all([
          ...each.map((partitions) => partitions.maintain(now)),
          ...each.map((partitions) => partitions.ensure([...days].reverse())),
        ]);
        // Each day created, and each past retention dropped, by exactly one of them.
        const made = created.flatMap((c) => (Array.isArray(c) ? c : c.created));
        expect(made.sort((x, y) => x - y)).toEqual(days);
        const dropped = created.flatMap((c) => (Array.isArray(c) ? [] : c.dropped));
        expect(new Set(dropped).size).toBe(dropped.length);
        if (r > 0) expect(dropped.length).toBeGreaterThan(0);
        const names = await pool.query<{ name: string }>(
          `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'telemetry'::regclass AND c.relname = ANY($1)`,
          [days.map(partitionName)],
        );
        expect(names.rows.map((n) => n.name).sort()).toEqual(days.map(partitionName));
      }
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
  });
});

describe("migrations run by several processes at once", () => {
  it("all succeed and apply each migration once", async () => {
    const all = (await readMigrations()).map((m) => m.name);
    const results = await Promise.all(Array.from({ length: 6 }, () => migrate(unmigrated.url)));
    expect(results.flat().sort()).toEqual(all);
    expect(results.filter((applied) => applied.length > 0)).toHaveLength(1);
    const recorded = new pg.Pool({ connectionString: unmigrated.url, max: 1 });
    const { rows } = await recorded.query<{ name: string }>("SELECT name FROM schema_migrations");
    await recorded.end();
    expect(rows.map((r) => r.name).sort()).toEqual(all);
  });
});
