import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { Stream } from "../helpers/device.ts";
import { freePort } from "../helpers/free-port.ts";
import { type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("crash");
const pool = new pg.Pool({ connectionString: db.url });
const running: ServiceProcess[] = [];
afterAll(async () => {
  for (const service of running) service.child.kill("SIGKILL");
  await pool.end();
});

async function storedIds(): Promise<Set<string>> {
  const { rows } = await pool.query<{ event_id: string }>(
    "SELECT event_id FROM telemetry WHERE device_id = 'crash-dev'",
  );
  return new Set(rows.map((row) => row.event_id));
}

describe("the service killed with SIGKILL mid-stream", () => {
  it("has stored every acknowledged message, and after a restart holds each message once", async () => {
    const port = await freePort();
    const env = { DATABASE_URL: db.url, MQTT_PORT: String(port), BATCH_MAX_WAIT_MS: "5" };
    const first = await spawnService(env);
    running.push(first);

    const device = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
      clientId: "crash-dev",
      clean: false,
      protocolVersion: 4,
      reconnectPeriod: 100,
    });
    const stream = new Stream(device, "crash-dev", 3000, 50);
    const done = stream.run();

    while (stream.acked.size < 500) await sleep(5);
    first.child.kill("SIGKILL");
    await first.exited;
    const ackedBeforeKill = [...stream.acked.keys()];
    const stored = await storedIds();
    expect(ackedBeforeKill.filter((id) => !stored.has(id))).toEqual([]);
    expect(stored.size).toBeLessThan(3000);

    const second = await spawnService(env);
    running.push(second);
    await done;
    device.end();

    const { rows } = await pool.query<{ n: string; ids: string }>(
      "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM telemetry WHERE device_id = 'crash-dev'",
    );
    expect(rows[0]).toEqual({ n: "3000", ids: "3000" });
    second.child.kill("SIGTERM");
    expect(await second.exited).toBe(0);
  });
});
