import { createHash, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { DEAD_LETTER_PAYLOAD_BYTES, type WriteOutcome } from "../../bridge/batch-writer.ts";
import { createTestDatabase } from "../helpers/test-database.ts";
import { count, openWriter, row } from "../helpers/writer.ts";

const db = await createTestDatabase("writer");

function tally(outcomes: WriteOutcome[]): Record<string, number> {
  const result: Record<string, number> = {};
  for (const outcome of outcomes) {
    const label =
      outcome.status === "duplicate"
        ? `duplicate_${outcome.source}`
        : outcome.status === "rejected"
          ? `rejected_${outcome.reason}`
          : outcome.status;
    result[label] = (result[label] ?? 0) + 1;
  }
  return result;
}

describe("BatchWriter", () => {
  it("stores one row per (topic, event_id, ts) with duplicates inside one batch", async () => {
    const { writer, pool, close } = openWriter(db.url, {
      batchMaxRows: 10_000,
      batchMaxWaitMs: 50,
    });
    const t = Date.now();
    const rows = Array.from({ length: 1000 }, (_, i) => row("inbatch", i, t));
    const outcomes = await Promise.all(
      [...rows, ...rows, ...rows.slice(0, 100)].map((r) => writer.write(r)),
    );
    expect(tally(outcomes)).toEqual({ stored: 1000, duplicate_window: 1100 });
    expect(writer.counters.batches).toBe(1);
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'inbatch'"),
    ).toBe(1000);
    await close();
  });

  it("drops redeliveries from the window across batches, and from the database after a restart", async () => {
    const first = openWriter(db.url);
    const t = Date.now();
    const rows = Array.from({ length: 3000 }, (_, i) => row("restart", i, t - i));
    expect(tally(await Promise.all(rows.slice(0, 2000).map((r) => first.writer.write(r))))).toEqual(
      {
        stored: 2000,
      },
    );
    expect(tally(await Promise.all(rows.slice(0, 500).map((r) => first.writer.write(r))))).toEqual({
      duplicate_window: 500,
    });
    await first.close();

    // A new writer has an empty window: the unique index finds the repeats.
    const second = openWriter(db.url);
    const outcomes = await Promise.all(rows.map((r) => second.writer.write(r)));
    expect(tally(outcomes)).toEqual({ stored: 1000, duplicate_database: 2000 });
    expect(outcomes.slice(2000).every((o) => o.status === "stored")).toBe(true);
    const stats = await second.pool.query<{ n: string; distinct_keys: string }>(
      `SELECT count(*) AS n, count(DISTINCT (topic, event_id)) AS distinct_keys
         FROM telemetry WHERE device_id = 'restart'`,
    );
    expect(stats.rows[0]).toEqual({ n: "3000", distinct_keys: "3000" });
    await second.close();
  });

  it("stores every column and keeps the payload as sent", async () => {
    const { writer, pool, close } = openWriter(db.url);
    const timeMs = Date.UTC(2026, 0, 2, 3, 4, 5, 678);
    const payload =
      '{"event_id":"cols-1","ts":"2026-01-02T03:04:05.678Z","note":"tab\\there\\\\ \\n","n":[1,2]}';
    const received = Date.now();
    await writer.write({
      topic: "telemetry/cols/a/b",
      deviceId: "cols",
      eventId: "cols-1",
      timeMs,
      payload: Buffer.from(payload.replace('"n"', '\n\t"n"')),
      receivedAtMs: received,
      clientId: "c1",
    });
    const { rows } = await pool.query(
      "SELECT time, topic, device_id, event_id, payload, received_at FROM telemetry WHERE device_id = 'cols'",
    );
    expect(rows).toEqual([
      {
        time: new Date(timeMs),
        topic: "telemetry/cols/a/b",
        device_id: "cols",
        event_id: "cols-1",
        payload: {
          event_id: "cols-1",
          ts: "2026-01-02T03:04:05.678Z",
          note: "tab\there\\ \n",
          n: [1, 2],
        },
        received_at: new Date(received),
      },
    ]);
    await close();
  });

  it("dead-letters only the row PostgreSQL refuses; the rest of its batch commits", async () => {
    const { writer, pool, close } = openWriter(db.url, {
      batchMaxRows: 10_000,
      batchMaxWaitMs: 50,
    });
    const rows = Array.from({ length: 1000 }, (_, i) => row("poison", i));
    // jsonb refuses \u0000 and a lone surrogate; written directly, nothing screens them first.
    const nul = rows[300];
    const surrogate = rows[700];
    const deep = rows[900];
    if (!nul || !surrogate || !deep) throw new Error("unreachable");
    nul.payload = Buffer.from(nul.payload.toString().replace("}", ',"bad":"\\u0000"}'));
    surrogate.payload = Buffer.from(surrogate.payload.toString().replace("}", ',"bad":"\\ud800"}'));
    // Past the server's stack: 54001, a fault of the row and not of the batch.
    deep.payload = Buffer.from(
      deep.payload.toString().replace("}", `,"bad":${"[".repeat(100_000)}${"]".repeat(100_000)}}`),
    );
    const outcomes = await Promise.all(rows.map((r) => writer.write(r)));
    expect(tally(outcomes)).toEqual({ stored: 997, rejected_database_refused: 3 });
    expect(outcomes[900]).toMatchObject({ detail: expect.stringMatching(/^54001 /) });
    expect(outcomes[300]).toMatchObject({
      status: "rejected",
      detail: expect.stringMatching(/^22P05 /),
    });
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'poison'"),
    ).toBe(997);
    const { rows: letters } = await pool.query(
      "SELECT topic, client_id, reason, payload FROM telemetry_rejected WHERE topic = 'telemetry/poison/env' ORDER BY id",
    );
    expect(letters).toHaveLength(3);
    expect(letters.map((l) => l.payload)).toEqual(
      expect.arrayContaining([nul.payload, surrogate.payload]),
    );
    expect(letters.every((l) => l.reason === "database_refused" && l.client_id === "poison")).toBe(
      true,
    );
    await close();
  });

  it("finds a refused row by halving when PostgreSQL cannot say which one it was", async () => {
    const { writer, pool, close } = openWriter(db.url, {
      batchMaxRows: 10_000,
      batchMaxWaitMs: 50,
      dedupWindowKeys: 0,
    });
    const t = Date.now();
    // One repeat sends the batch through the staging table, where an index
    // entry too large for a btree fails the INSERT … SELECT without a line number.
    await writer.write(row("halving", 0, t));
    const huge = row("halving", 1, t);
    huge.topic = `telemetry/halving/${randomBytes(3000).toString("base64")}`;
    const batch = [
      row("halving", 0, t),
      ...Array.from({ length: 400 }, (_, i) => row("halving", i + 2, t)),
    ];
    batch.splice(123, 0, huge);
    const outcomes = await Promise.all(batch.map((r) => writer.write(r)));
    expect(tally(outcomes)).toEqual({
      stored: 400,
      duplicate_database: 1,
      rejected_database_refused: 1,
    });
    expect(outcomes[123]).toMatchObject({
      status: "rejected",
      detail: expect.stringMatching(/^54000 /),
    });
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'halving'"),
    ).toBe(401);
    await close();
  });

  it("dead-letters malformed messages with their reason, in the same commit as valid ones", async () => {
    const { writer, pool, close } = openWriter(db.url);
    const base = { clientId: "mal", receivedAtMs: Date.now() };
    const outcomes = await Promise.all([
      writer.ingest({ ...base, topic: "telemetry/mal/x", payload: Buffer.from("{oops") }),
      writer.ingest({ ...base, topic: "telemetry/mal/x", payload: Buffer.from('{"ts":1}') }),
      writer.ingest({ ...base, topic: "telemetry/mal/x", payload: Buffer.from([0xc3, 0x28]) }),
      writer.ingest({
        ...base,
        topic: "telemetry/mal/x",
        payload: Buffer.from(`{"event_id":"ok","ts":${Date.now()}}`),
      }),
    ]);
    expect(outcomes.map((o) => (o.status === "rejected" ? o.reason : o.status))).toEqual([
      "payload_not_json",
      "event_id_missing",
      "payload_not_utf8",
      "stored",
    ]);
    const { rows } = await pool.query(
      "SELECT reason, payload FROM telemetry_rejected WHERE client_id = 'mal' ORDER BY reason",
    );
    expect(rows.map((r) => r.reason)).toEqual([
      "event_id_missing",
      "payload_not_json",
      "payload_not_utf8",
    ]);
    expect(rows[2].payload).toEqual(Buffer.from([0xc3, 0x28]));
    expect(writer.counters.rejected).toMatchObject({
      payload_not_json: 1,
      event_id_missing: 1,
      payload_not_utf8: 1,
    });
    await close();
  });

  it("keeps a prefix of a dead letter's payload, with its size and SHA-256", async () => {
    const { writer, pool, close } = openWriter(db.url, { maxPayloadBytes: 1024 * 1024 });
    const payload = randomBytes(300 * 1024);
    const outcome = await writer.ingest({
      topic: "telemetry/big-letter/x",
      payload,
      clientId: "big-letter",
      receivedAtMs: Date.now(),
    });
    expect(outcome).toMatchObject({ status: "rejected", reason: "payload_not_utf8" });
    const { rows } = await pool.query(
      `SELECT payload, payload_bytes, payload_sha256, occurrences FROM telemetry_rejected
        WHERE client_id = 'big-letter'`,
    );
    expect(rows).toHaveLength(1);
    expect(rows[0].payload).toEqual(payload.subarray(0, DEAD_LETTER_PAYLOAD_BYTES));
    expect(rows[0].payload_bytes).toBe(payload.length);
    expect(rows[0].payload_sha256).toEqual(createHash("sha256").update(payload).digest());
    expect(rows[0].occurrences).toBe(1);
    await close();
  });

  it("records a resent malformed message once, counting its occurrences", async () => {
    const { writer, pool, close } = openWriter(db.url, { batchMaxWaitMs: 50 });
    const t0 = Date.now();
    const letter = (n: number, payload = "{oops") => ({
      topic: "telemetry/resend/x",
      payload: Buffer.from(payload),
      clientId: "resend",
      receivedAtMs: t0 + n,
    });
    // Three copies in one batch, two more in later batches, and one other letter.
    const first = await Promise.all([
      writer.ingest(letter(0)),
      writer.ingest(letter(1)),
      writer.ingest(letter(2)),
      writer.ingest(letter(3, "{other")),
    ]);
    expect(first.every((o) => o.status === "rejected")).toBe(true);
    await writer.ingest(letter(4));
    await writer.ingest(letter(5));
    // Two writers at once (two processes) record the same letters without deadlock.
    const other = openWriter(db.url, { batchMaxWaitMs: 50 });
    const copies = [writer, other.writer].flatMap((w) =>
      Array.from({ length: 50 }, (_, n) => w.ingest(letter(100 + n, `{copy-${n % 10}`))),
    );
    await Promise.all(copies);
    await other.close();
    const { rows } = await pool.query(
      `SELECT convert_from(payload, 'UTF8') AS payload, occurrences,
              extract(epoch FROM received_at) * 1000 AS first_ms,
              extract(epoch FROM last_received_at) * 1000 AS last_ms
         FROM telemetry_rejected WHERE client_id = 'resend' ORDER BY payload`,
    );
    expect(rows.map((r) => [r.payload, r.occurrences])).toEqual([
      ...Array.from({ length: 10 }, (_, n) => [`{copy-${n}`, 10]),
      ["{oops", 5],
      ["{other", 1],
    ]);
    expect(Number(rows[10].first_ms)).toBe(t0);
    expect(Number(rows[10].last_ms)).toBe(t0 + 5);
    expect(writer.counters.rejected).toEqual({ payload_not_json: 56 });
    await close();
  });

  it("holds callers past the queue bound and still writes every message", async () => {
    const { writer, pool, close } = openWriter(db.url, {
      batchMaxRows: 100,
      batchMaxWaitMs: 1000,
      queueMaxRows: 100,
    });
    const pending = Array.from({ length: 450 }, (_, i) => writer.write(row("bounded", i)));
    expect(writer.saturated).toBe(true);
    expect(writer.queueDepth).toBe(450);
    const outcomes = await Promise.all(pending);
    expect(tally(outcomes)).toEqual({ stored: 450 });
    expect(writer.saturated).toBe(false);
    expect(writer.counters.batches).toBe(5);
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'bounded'"),
    ).toBe(450);
    await close();
  });

  it("refuses new messages once closed, after committing those it holds", async () => {
    const { writer, pool, close } = openWriter(db.url, { batchMaxWaitMs: 60_000 });
    const held = writer.write(row("closing", 1));
    await close();
    expect(await held).toEqual({ status: "stored" });
    await expect(writer.write(row("closing", 2))).rejects.toThrow(/closed/);
    expect(pool.totalCount).toBe(0);
  });
});
