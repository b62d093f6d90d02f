import mqtt from "mqtt";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { connectOutcome, freePort } from "../helpers/free-port.ts";
import { type Mosquitto, startMosquitto } from "../helpers/mosquitto.ts";
import { type MqttRelay, startMqttRelay } from "../helpers/mqtt-relay.ts";
import { logged, readyLine, type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("source");
const pool = new pg.Pool({ connectionString: db.url });
const running: ServiceProcess[] = [];
let broker: Mosquitto | undefined;
let relay: MqttRelay | undefined;
afterAll(async () => {
  for (const service of running) service.child.kill("SIGKILL");
  await relay?.close();
  await broker?.stop();
  await pool.end();
});

/** The service, subscribed to `url`: resolves once it says so. */
async function bridgeFrom(url: string, env: Record<string, string> = {}): Promise<ServiceProcess> {
  const service = await spawnService({
    DATABASE_URL: db.url,
    MQTT_PORT: "0",
    SOURCE_URL: url,
    SOURCE_CLIENT_ID: "bridge-under-test",
    BATCH_MAX_WAIT_MS: "5",
    ...env,
  });
  running.push(service);
  await logged(service, "subscribed to the source broker");
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

  it("acknowledges in the order the broker delivered, though duplicates are answered before the batch ahead of them commits", async () => {
    broker ??= await startMosquitto(["max_queued_messages 100000"]);
    relay = await startMqttRelay(broker.port);
    const service = await bridgeFrom(relay.url, {
      SOURCE_CLIENT_ID: "bridge-in-order",
      BATCH_MAX_WAIT_MS: "200",
    });
    const device = await mqtt.connectAsync(broker.url, { clientId: "src-order" });
    const reading = (n: number) =>
      JSON.stringify({ event_id: `src-order-${n}`, ts: 1_700_000_000_000 + n, t: n });
    for (let n = 0; n < 20; n++) {
      await device.publishAsync("telemetry/src-order/env", reading(n), { qos: 1 });
    }
    while ((await stored()).copies < 20) await new Promise((resolve) => setTimeout(resolve, 20));
    // New readings wait for their batch; copies of stored ones are known duplicates at once.
    for (let n = 20; n < 60; n++) {
      await device.publishAsync("telemetry/src-order/env", reading(n), { qos: 1 });
      await device.publishAsync("telemetry/src-order/env", reading(n - 20), { qos: 1 });
      if (n % 10 === 0)
        await device.publishAsync("telemetry/src-order/env", "not json", { qos: 1 });
    }
    await device.endAsync();
    const delivered = () =>
      (relay as MqttRelay).toClients
        // QoS 1: the $SYS counter the bridge watches comes at QoS 0, without an id.
        .filter((packet) => packet.cmd === "publish" && packet.messageId !== undefined)
        .map((packet) => packet.messageId);
    const acknowledged = () => (relay as MqttRelay).pubacks().map((packet) => packet.messageId);
    for (let waited = 0; acknowledged().length < 104 && waited < 10_000; waited += 50) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(delivered()).toHaveLength(104);
    expect(acknowledged()).toEqual(delivered());
    expect(relay.parseErrors).toEqual([]);
    service.child.kill("SIGTERM");
    expect(await service.exited).toBe(0);
  });

  it("runs without a broker of its own with EMBEDDED_BROKER=off", async () => {
    broker ??= await startMosquitto(["max_queued_messages 100000"]);
    const unused = await freePort();
    const service = await bridgeFrom(broker.url, {
      SOURCE_CLIENT_ID: "bridge-alone",
      EMBEDDED_BROKER: "off",
      MQTT_PORT: String(unused),
    });
    expect(await connectOutcome(unused)).toBe("ECONNREFUSED");
    const ready = readyLine(service);
    expect(ready.mqtt).toBe("off");
    const health = await fetch(`${ready.http}/health`);
    expect(await health.json()).toEqual({ status: "ok", mqtt: "off", database: "ok" });
    const device = await mqtt.connectAsync(broker.url, { clientId: "src-alone" });
    await device.publishAsync(
      "telemetry/src-alone/env",
      JSON.stringify({ event_id: "src-alone-1", ts: Date.now(), t: 1 }),
      { qos: 1 },
    );
    await device.endAsync();
    const one = async () =>
      (await pool.query("SELECT count(*)::int AS n FROM telemetry WHERE device_id = 'src-alone'"))
        .rows[0].n;
    for (let waited = 0; (await one()) < 1 && waited < 10_000; waited += 50) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(await one()).toBe(1);
    service.child.kill("SIGTERM");
    expect(await service.exited).toBe(0);
  });

  it("warns when Mosquitto says it dropped messages it could not queue", async () => {
    const small = await startMosquitto(["max_queued_messages 5", "sys_interval 1"]);
    try {
      const env = { SOURCE_CLIENT_ID: "bridge-dropping" };
      const away = await bridgeFrom(small.url, env);
      away.child.kill("SIGTERM");
      expect(await away.exited).toBe(0);
      const device = await mqtt.connectAsync(small.url, { clientId: "src-dropped" });
      for (let n = 0; n < 30; n++) {
        await device.publishAsync(
          "telemetry/src-dropped/env",
          JSON.stringify({ event_id: `src-dropped-${n}`, ts: Date.now(), t: n }),
          { qos: 1 },
        );
      }
      await device.endAsync();
      // Mosquitto publishes its $SYS counters every sys_interval.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const back = await bridgeFrom(small.url, env);
      const warning = async () =>
        back.output.find((line) => line.includes("the source broker has dropped messages"));
      for (let waited = 0; !(await warning()) && waited < 10_000; waited += 50) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(JSON.parse((await warning()) ?? "{}")).toMatchObject({ level: 40, dropped: 25 });
      const kept = async () =>
        (
          await pool.query(
            "SELECT count(*)::int AS n FROM telemetry WHERE device_id = 'src-dropped'",
          )
        ).rows[0].n;
      for (let waited = 0; (await kept()) < 5 && waited < 10_000; waited += 50) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(await kept()).toBe(5);
      back.child.kill("SIGTERM");
      expect(await back.exited).toBe(0);
    } finally {
      await small.stop();
    }
  });
});
