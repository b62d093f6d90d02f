import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { type Database, startEmbedded } from "../../bridge/database.ts";
import { Stream } from "../helpers/device.ts";
import { startTestServer } from "../helpers/embedded-server.ts";
import { type BrokeredService, startTestService } from "../helpers/service.ts";
import { silentLogger } from "../helpers/test-database.ts";

// This file stops and starts its own PostgreSQL.
const server = await startTestServer();
let restarted: Database | undefined;
let service: BrokeredService | undefined;
afterAll(async () => {
  await service?.close();
  await restarted?.stop();
  await server.destroy();
});

describe("PostgreSQL stopped while devices stream", () => {
  it("acknowledges nothing while it is down, then resumes by itself with nothing lost or doubled", async () => {
    // A short cap, so devices are also disconnected and resend during the outage.
    service = await startTestService(server.url, {
      INGEST_TIMEOUT_MS: "1500",
      BATCH_MAX_WAIT_MS: "5",
    });
    let timedOut = 0;
    service.mqtt.broker.on("clientError", (_client, error) => {
      if (error.name === "IngestTimeoutError") timedOut++;
    });
    const devices = Array.from({ length: 5 }, (_, d) =>
      mqtt.connect(`mqtt://127.0.0.1:${service?.mqttPort}`, {
        clientId: `outage-${d}`,
        clean: false,
        protocolVersion: 4,
        reconnectPeriod: 100,
      }),
    );
    const streams = devices.map((device, d) => new Stream(device, `outage-${d}`, 600, 10));
    const done = Promise.all(streams.map((stream) => stream.run()));
    const acked = () => streams.reduce((sum, stream) => sum + stream.acked.size, 0);

    while (acked() < 500) await sleep(5);
    await server.stop();
    const down = Date.now();
    await sleep(4000);
    const ackedWhileDown = streams.flatMap((stream) =>
      [...stream.acked.values()].filter((at) => at > down),
    );
    restarted = await startEmbedded({
      dataDir: server.dataDir,
      port: server.port,
      logger: silentLogger,
    });
    await done;
    for (const device of devices) device.end();

    expect(ackedWhileDown).toEqual([]);
    // Each device waited no longer than the cap, then was disconnected and resent.
    expect(timedOut).toBeGreaterThanOrEqual(5);
    expect(service.writer.counters.retries).toBeGreaterThan(0);
    const pool = new pg.Pool({ connectionString: restarted.url });
    const { rows } = await pool.query<{ n: string; ids: string }>(
      "SELECT count(*) AS n, count(DISTINCT (topic, event_id)) AS ids FROM telemetry",
    );
    await pool.end();
    expect(rows[0]).toEqual({ n: "3000", ids: "3000" });
  });
});
