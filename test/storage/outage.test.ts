import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, describe, expect, it } from "vitest";
import type { WriteOutcome } from "../../bridge/batch-writer.ts";
import { type Database, startEmbedded } from "../../bridge/database.ts";
import { migrate } from "../../bridge/migrate.ts";
import { startTestServer } from "../helpers/embedded-server.ts";
import { silentLogger } from "../helpers/test-database.ts";
import { count, openWriter, row } from "../helpers/writer.ts";

// This file stops and starts its own server, so it never shares one.
const server = await startTestServer();
let restarted: Database | undefined;
afterAll(async () => {
  await restarted?.stop();
  await server.destroy();
});

describe("PostgreSQL stopped and started mid-load", () => {
  it("loses nothing, duplicates nothing, and acknowledges nothing while it is down", async () => {
    await migrate(server.url);
    const { writer, pool, close } = openWriter(server.url, {
      batchMaxRows: 200,
      queueMaxRows: 400,
      retryInitialMs: 50,
      retryMaxMs: 300,
    });
    const settledAt: number[] = [];
    const outcomes: WriteOutcome[] = [];
    const sent = new Set<string>();
    const t = Date.now();

    // 50 devices, one message in flight each; one in ten is sent twice, as a
    // device does when its acknowledgement is lost.
    const devices = Array.from({ length: 50 }, async (_, d) => {
      for (let n = 0; n < 150; n++) {
        const message = row(`outage-${d}`, n, t + n);
        sent.add(`${message.topic}|${message.eventId}`);
        const copies = n % 10 === 0 ? 2 : 1;
        for (let c = 0; c < copies; c++) {
          const outcome = await writer.write(message);
          settledAt.push(Date.now());
          outcomes.push(outcome);
        }
      }
    });

    await sleep(400);
    const beforeStop = outcomes.length;
    await server.stop();
    const down = Date.now();
    await sleep(2000);
    const settledWhileDown = settledAt.filter((at) => at > down).length;
    const depthWhileDown = writer.queueDepth;
    restarted = await startEmbedded({
      dataDir: server.dataDir,
      port: server.port,
      logger: silentLogger,
    });
    await Promise.all(devices);

    expect(beforeStop).toBeGreaterThan(0);
    expect(settledWhileDown).toBe(0);
    // Each device waits for its one message: the writer holds at most one per device.
    expect(depthWhileDown).toBeLessThanOrEqual(50);
    expect(writer.counters.retries).toBeGreaterThan(0);
    expect(outcomes).toHaveLength(50 * 165);
    expect(outcomes.every((o) => o.status === "stored" || o.status === "duplicate")).toBe(true);
    expect(await count(pool, "SELECT count(*) AS n FROM telemetry")).toBe(sent.size);
    expect(await count(pool, "SELECT count(DISTINCT (topic, event_id)) AS n FROM telemetry")).toBe(
      sent.size,
    );
    await close();
  });
});
