import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { dayOf, Partitions, partitionName } from "../../bridge/partitions.ts";
import { createTestDatabase, silentLogger } from "../helpers/test-database.ts";
import { count, openWriter, row } from "../helpers/writer.ts";

const db = await createTestDatabase("partitions");
const pool = new pg.Pool({ connectionString: db.url });
afterAll(() => pool.end());

const DAY = 86_400_000;
const now = Date.UTC(2026, 5, 15, 12);
const today = dayOf(now);

describe("partition names", () => {
  it("are the UTC day of the timestamp", () => {
    expect(partitionName(dayOf(Date.UTC(2026, 0, 31, 23, 59, 59, 999)))).toBe(
      "telemetry_p20260131",
    );
    expect(partitionName(dayOf(Date.UTC(2026, 1, 1)))).toBe("telemetry_p20260201");
    expect(partitionName(dayOf(Date.UTC(1969, 11, 31, 23)))).toBe("telemetry_p19691231");
  });
});

describe("Partitions", () => {
  it("judges timestamps against retention and the days ahead", () => {
    const partitions = new Partitions(pool, { daysAhead: 2, retentionDays: 7 }, silentLogger);
    expect(partitions.judge(now, now)).toEqual({ ok: true });
    expect(partitions.judge(now + 2 * DAY, now)).toEqual({ ok: true });
    expect(partitions.judge(now + 3 * DAY, now)).toEqual({ ok: false, reason: "ts_in_future" });
    expect(partitions.judge(now - 7 * DAY, now)).toEqual({ ok: true });
    expect(partitions.judge(now - 8 * DAY, now)).toEqual({
      ok: false,
      reason: "ts_before_retention",
    });
    const forever = new Partitions(pool, { daysAhead: 2, retentionDays: undefined }, silentLogger);
    expect(forever.judge(0, now)).toEqual({ ok: true });
  });

  it("creates today and the days ahead, drops past retention, and is idempotent", async () => {
    const partitions = new Partitions(pool, { daysAhead: 2, retentionDays: 3 }, silentLogger);
    await partitions.ensure([today - 10, today - 4, today - 3]);
    const first = await partitions.maintain(now);
    expect(first.created).toEqual([today, today + 1, today + 2]);
    expect(first.dropped).toEqual([today - 10, today - 4]);
    expect(await partitions.list()).toEqual([today - 3, today, today + 1, today + 2]);
    expect(await partitions.maintain(now)).toEqual({ created: [], dropped: [] });
    // The next day: one more ahead, one more past retention.
    expect(await partitions.maintain(now + DAY)).toEqual({
      created: [today + 3],
      dropped: [today - 3],
    });
  });

  it("routes each row to its day, including partitions created concurrently", async () => {
    const a = new Partitions(pool, { daysAhead: 0, retentionDays: undefined }, silentLogger);
    const b = new Partitions(pool, { daysAhead: 0, retentionDays: undefined }, silentLogger);
    const days = [today + 40, today + 41, today + 42];
    await Promise.all([a.ensure(days), b.ensure(days), a.ensure(days)]);
    expect((await a.list()).filter((day) => days.includes(day))).toEqual(days);
  });
});

describe("late and early messages through the writer", () => {
  it("creates a missing day on demand and dead-letters what lies outside the kept range", async () => {
    const writer = openWriter(db.url);
    const lateDay = Date.now() - 20 * DAY;
    const outcomes = await Promise.all([
      writer.writer.write(row("late", 1, lateDay)),
      writer.writer.write(row("late", 2, Date.now() + 30 * DAY)),
    ]);
    expect(outcomes).toEqual([
      { status: "stored" },
      { status: "rejected", reason: "ts_in_future", detail: expect.stringContaining("outside") },
    ]);
    expect(await writer.partitions.list()).toContain(dayOf(lateDay));
    expect(
      await count(
        pool,
        `SELECT count(*) AS n FROM ${partitionName(dayOf(lateDay))} WHERE device_id = 'late'`,
      ),
    ).toBe(1);
    expect(
      await count(
        pool,
        "SELECT count(*) AS n FROM telemetry_rejected WHERE topic = 'telemetry/late/env'",
      ),
    ).toBe(1);
    await writer.close();
  });

  it("recreates a partition dropped behind the writer's back instead of failing the batch", async () => {
    const writer = openWriter(db.url);
    const when = Date.now() - 50 * DAY;
    expect(await writer.writer.write(row("dropped", 1, when))).toEqual({ status: "stored" });
    await pool.query(`DROP TABLE ${partitionName(dayOf(when))}`);
    expect(await writer.writer.write(row("dropped", 2, when))).toEqual({ status: "stored" });
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'dropped'"),
    ).toBe(1);
    await writer.close();
  });
});
