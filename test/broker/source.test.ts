import mqtt from "mqtt";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { type Mosquitto, startMosquitto } from "../helpers/mosquitto.ts";
import { type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("source");
const pool = new pg.Pool({ connectionString: db.url });
const running: ServiceProcess[] = [];
let broker: Mosquitto | undefined;
afterAll(async () => {
  for (const service of running) service.child.kill("SIGKILL");
  await broker?.stop();
  await pool.end();
});

/** The service, subscribed to `url`: resolves once it says so. */
async function bridgeFrom(url: string): Promise<ServiceProcess> {
  const service = await spawnService({
    DATABASE_URL: db.url,
    MQTT_PORT: "0",
    SOURCE_URL: url,
    SOURCE_CLIENT_ID: "bridge-under-test",
    BATCH_MAX_WAIT_MS: "5",
  });
  running.push(service);
  for (
    let waited = 0;
    !service.output.some((line) => line.includes("subscribed to the source broker"));
    waited += 50
  ) {
    if (waited > 10_000) throw new Error(`not subscribed:\n${service.output.join("\n")}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return service;
}

async function stored(): Promise<{ copies: number; unique: number }> {
  const { rows } = await pool.query<{ copies: number; unique: number }>(
    `SELECT count(*)::int AS copies, count(DISTINCT (topic, event_id))::int AS unique
       FROM telemetry WHERE device_id LIKE 'src-%'`,
  );
  return rows[0] as { copies: number; unique: number };
}

describe("SOURCE_URL: a broker users already run", () => {
  it("stores what devices publish there exactly once, through a SIGKILL of the service mid-stream", async () => {
    broker = await startMosquitto(["max_queued_messages 100000"]);
    const first = await bridgeFrom(broker.url);
    const devices = await Promise.all(
      Array.from({ length: 4 }, (_, d) =>
        mqtt.connectAsync(broker?.url as string, { clientId: `src-${d}`, protocolVersion: 4 }),
      ),
    );
    const total = 4 * 400;
    let sent = 0;
    const publishing = Promise.all(
      devices.map(async (device, d) => {
        for (let n = 0; n < 400; n++) {
          await device.publishAsync(
            `telemetry/src-${d}/env`,
            JSON.stringify({ event_id: `src-${d}-${n}`, ts: Date.now(), t: n }),
            { qos: 1 },
          );
          sent++;
          // Not bridged: acknowledged by the bridge, never stored.
          if (n % 100 === 0) await device.publishAsync(`other/src-${d}`, "x", { qos: 1 });
        }
      }),
    );
    while ((await stored()).copies < 200) await new Promise((resolve) => setTimeout(resolve, 20));
    first.child.kill("SIGKILL");
    await first.exited;
    await publishing;
    expect(sent).toBe(total);
    await Promise.all(devices.map((device) => device.endAsync()));

    const second = await bridgeFrom(broker.url);
    for (let waited = 0; (await stored()).unique < total && waited < 30_000; waited += 100) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(await stored()).toEqual({ copies: total, unique: total });
    second.child.kill("SIGTERM");
    expect(await second.exited).toBe(0);
  });
});
