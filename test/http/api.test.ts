import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Service } from "../../bin/service.ts";
import { startEmbedded } from "../../bridge/database.ts";
import { startTestServer } from "../helpers/embedded-server.ts";
import { startTestService } from "../helpers/service.ts";
import { createTestDatabase, silentLogger } from "../helpers/test-database.ts";

const db = await createTestDatabase("http");
const pool = new pg.Pool({ connectionString: db.url });
let service: Service;
let base: string;

beforeAll(async () => {
  service = await startTestService(db.url, { HTTP_BODY_LIMIT_BYTES: "65536" });
  base = `http://127.0.0.1:${service.httpPort}`;
});
afterAll(async () => {
  await service?.close();
  await pool.end();
});

interface PublishReply {
  received?: number;
  results: { status: string; event_id: unknown }[];
  field?: string;
}

async function post(body: unknown, raw?: string) {
  const response = await fetch(`${base}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: raw ?? JSON.stringify(body),
  });
  return {
    status: response.status,
    headers: response.headers,
    body: (await response.json()) as PublishReply,
  };
}

async function get(path: string) {
  const response = await fetch(`${base}${path}`);
  const text = await response.text();
  return {
    status: response.status,
    text,
    body: response.headers.get("content-type")?.includes("json") ? JSON.parse(text) : undefined,
  };
}

const now = new Date().toISOString();
const event = (id: string, extra: Record<string, unknown> = {}) => ({
  topic: "telemetry/http-dev/env",
  event_id: id,
  timestamp: now,
  source: "gateway-7",
  payload: { temperature: 21.5 },
  ...extra,
});

describe("POST /publish", () => {
  it("stores one event after commit, in the shape devices use", async () => {
    const response = await post(event("h-1"));
    expect(response.status).toBe(200);
    expect(response.body).toEqual({
      received: 1,
      accepted: 1,
      duplicates: 0,
      rejected: 0,
      results: [{ index: 0, event_id: "h-1", status: "accepted" }],
    });
    const { rows } = await pool.query(
      "SELECT device_id, time, payload FROM telemetry WHERE event_id = 'h-1'",
    );
    expect(rows).toEqual([
      {
        device_id: "http-dev",
        time: new Date(now),
        payload: { temperature: 21.5, event_id: "h-1", ts: now, source: "gateway-7" },
      },
    ]);
  });

  it("counts duplicates within a batch and against what is stored", async () => {
    const response = await post({
      events: [event("h-2"), event("h-2"), event("h-1"), event("h-3")],
    });
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({ received: 4, accepted: 2, duplicates: 2, rejected: 0 });
    expect(response.body.results.map((r) => r.status)).toEqual([
      "accepted",
      "duplicate",
      "duplicate",
      "accepted",
    ]);
    const { rows } = await pool.query(
      "SELECT count(*)::int AS n FROM telemetry WHERE device_id = 'http-dev'",
    );
    expect(rows[0].n).toBe(3);
  });

  it("answers 422 naming the field and the reason, dead-letters the bad event and stores the rest", async () => {
    const response = await post({
      events: [
        event("h-4"),
        event("h-5", { event_id: undefined }),
        event("h-6", { timestamp: "2026-01-01T00:00:00" }),
        event("h-7", { topic: "elsewhere/x" }),
        event("h-8", { payload: [1, 2] }),
        "not an object",
      ],
    });
    expect(response.status).toBe(422);
    expect(response.body).toMatchObject({ received: 6, accepted: 1, duplicates: 0, rejected: 5 });
    expect(response.body.results.slice(1)).toEqual([
      expect.objectContaining({
        index: 1,
        status: "rejected",
        reason: "event_id_missing",
        field: "event_id",
      }),
      expect.objectContaining({
        index: 2,
        status: "rejected",
        reason: "ts_invalid",
        field: "timestamp",
      }),
      expect.objectContaining({
        index: 3,
        status: "rejected",
        reason: "topic_invalid",
        field: "topic",
      }),
      expect.objectContaining({
        index: 4,
        status: "rejected",
        reason: "payload_not_object",
        field: "payload",
      }),
      expect.objectContaining({ index: 5, status: "rejected", reason: "payload_not_object" }),
    ]);
    const { rows } = await pool.query(
      "SELECT reason FROM telemetry_rejected WHERE client_id LIKE 'http:%' ORDER BY reason",
    );
    expect(rows.map((row) => row.reason)).toEqual([
      "event_id_missing",
      "payload_not_object",
      "payload_not_object",
      "topic_invalid",
      "ts_invalid",
    ]);
  });

  it("refuses bodies it cannot read", async () => {
    const broken = await post(undefined, "{not json");
    expect(broken.status).toBe(400);
    expect(broken.body).toMatchObject({ field: "body" });
    const notList = await post({ events: "many" });
    expect(notList).toMatchObject({ status: 422, body: { field: "events" } });
    expect((await post({ events: [] })).status).toBe(422);
    expect((await post([1, 2])).body).toMatchObject({ field: "body" });
    const huge = await post(event("h-9", { payload: { blob: "x".repeat(70_000) } }));
    expect(huge).toMatchObject({ status: 413, body: { field: "body" } });
  });
});

describe("GET /events", () => {
  it("returns the newest first, filtered, with a default limit of 10 and a cap", async () => {
    const base = Date.now() - 60_000;
    const events = Array.from({ length: 15 }, (_, i) => ({
      ...event(`q-${i}`, { topic: "telemetry/query-dev/env" }),
      timestamp: new Date(base + i * 1000).toISOString(),
    }));
    expect((await post({ events })).status).toBe(200);
    const latest = await get("/events?device_id=query-dev");
    expect(latest.status).toBe(200);
    expect(latest.body.count).toBe(10);
    expect(latest.body.events.map((e: { event_id: string }) => e.event_id)).toEqual(
      Array.from({ length: 10 }, (_, i) => `q-${14 - i}`),
    );
    const range = await get(
      `/events?topic=telemetry/query-dev/env&since=${new Date(base + 3000).toISOString()}&until=${base + 6000}&limit=100`,
    );
    expect(range.body.events.map((e: { event_id: string }) => e.event_id)).toEqual([
      "q-5",
      "q-4",
      "q-3",
    ]);
    expect((await get("/events?limit=3")).body.count).toBe(3);
    expect(await get("/events?limit=1001")).toMatchObject({
      status: 400,
      body: { field: "limit" },
    });
    expect(await get("/events?since=yesterday")).toMatchObject({
      status: 400,
      body: { field: "since" },
    });
  });

  it("is served by indexes", async () => {
    const client = await pool.connect();
    try {
      // Tiny tables make any plan cheap; forbid the others to see whether the index can serve both
      // the filter and the order.
      await client.query(
        "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off",
      );
      const plans: [index: string, query: string][] = [
        ["telemetry_device_id_time", "WHERE device_id = 'query-dev' ORDER BY time DESC LIMIT 10"],
        // GET /events?topic= names the topic's device too.
        [
          "telemetry_device_id_time",
          `WHERE topic = 'telemetry/query-dev/env' AND device_id = 'query-dev'
            AND time >= now() - interval '1 hour' ORDER BY time DESC LIMIT 10`,
        ],
        ["telemetry_time_topic_event_id", "ORDER BY time DESC LIMIT 10"],
      ];
      for (const [index, query] of plans) {
        const { rows } = await client.query(`EXPLAIN SELECT * FROM telemetry ${query}`);
        const plan = rows.map((row) => row["QUERY PLAN"]).join("\n");
        expect(plan, plan).toMatch(
          // Partitions name their copy of an index after it: telemetry_pYYYYMMDD_<columns>_idx.
          new RegExp(`Index Scan.* using \\S*${index.replace("telemetry_", "")}`),
        );
        expect(plan).not.toMatch(/Seq Scan|Sort/);
      }
    } finally {
      client.release();
    }
  });
});

describe("GET /stats, /health and /metrics", () => {
  it("report what happened", async () => {
    const stats = await get("/stats");
    expect(stats.status).toBe(200);
    expect(stats.body).toMatchObject({
      received: 26,
      unique_processed: 19,
      duplicate_dropped: { total: 2, window: 2, database: 0 },
      rejected: {
        total: 5,
        by_reason: { event_id_missing: 1, ts_invalid: 1, topic_invalid: 1, payload_not_object: 2 },
      },
      topics: 2,
      connected_devices: 0,
    });
    expect(stats.body.uptime_seconds).toBeGreaterThanOrEqual(0);
    expect(stats.body.batches.committed).toBeGreaterThan(0);
    expect(stats.body.batches.rows_per_second_last_minute).toBeGreaterThan(0);
    expect(stats.body.batches.commit_latency_ms.p99).toBeGreaterThan(0);
    expect(stats.body.batches.queue_depth).toBe(0);

    expect(await get("/health")).toMatchObject({ status: 200, body: { status: "ok" } });

    const metrics = await get("/metrics");
    expect(metrics.status).toBe(200);
    for (const line of [
      "telemetry_bridge_received_total 26",
      "telemetry_bridge_stored_total 19",
      'telemetry_bridge_duplicates_total{source="window"} 2',
      'telemetry_bridge_rejected_total{reason="payload_not_object"} 2',
      "telemetry_bridge_connected_clients 0",
      "telemetry_bridge_queue_depth 0",
    ]) {
      expect(metrics.text).toContain(line);
    }
    expect(metrics.text).toMatch(/telemetry_bridge_batch_size_count \d+/);
    expect(metrics.text).toMatch(/telemetry_bridge_commit_seconds_bucket\{le="0.1"\} \d+/);
    // Every message that reached a batch: the two redeliveries were answered from memory.
    expect(metrics.text).toMatch(/telemetry_bridge_publish_to_commit_seconds_count 24/);
    expect(metrics.text).toMatch(/telemetry_bridge_partitions \d+/);

    // One process is worker 1.
    const byWorker = await get("/metrics/workers");
    expect(byWorker.status).toBe(200);
    expect(byWorker.text).toContain('telemetry_bridge_received_total{worker="1"} 26');
    expect(byWorker.text).toContain(
      'telemetry_bridge_duplicates_total{source="window",worker="1"} 2',
    );
  });
});

describe("while PostgreSQL is down", () => {
  it("answers 503 with Retry-After, and /health says why", async () => {
    const server = await startTestServer();
    const own = await startTestService(server.url, { INGEST_TIMEOUT_MS: "1500" });
    const url = `http://127.0.0.1:${own.httpPort}`;
    try {
      await server.stop();
      const first = fetch(`${url}/publish`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(event("down-1")),
      });
      while (!own.writer.unavailable) await sleep(20);
      const refused = await fetch(`${url}/publish`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(event("down-2")),
      });
      expect(refused.status).toBe(503);
      expect(refused.headers.get("retry-after")).toBe("5");
      const waited = await first;
      expect(waited.status).toBe(503);
      const health = await fetch(`${url}/health`);
      expect(health.status).toBe(503);
      expect(await health.json()).toMatchObject({ reason: expect.stringMatching(/PostgreSQL/) });

      const restarted = await startEmbedded({
        dataDir: server.dataDir,
        port: server.port,
        logger: silentLogger,
      });
      try {
        while (own.writer.queueDepth > 0) await sleep(50);
        const again = await fetch(`${url}/publish`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(event("down-1")),
        });
        // The first request's event was committed once PostgreSQL returned.
        expect(await again.json()).toMatchObject({ duplicates: 1 });
      } finally {
        await own.close();
        await restarted.stop();
      }
    } finally {
      await server.destroy();
    }
  });
});
