import { spawn } from "node:child_process";
import { once } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { closed, connectDevice, nextMessage, publishAcked, reading } from "../helpers/device.ts";
import { runCommand } from "../helpers/run-command.ts";
import { type BrokeredService, startTestService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";
import { count } from "../helpers/writer.ts";

const db = await createTestDatabase("bridge");
const pool = new pg.Pool({ connectionString: db.url });
let service: BrokeredService;

beforeAll(async () => {
  service = await startTestService(db.url, { BATCH_MAX_WAIT_MS: "20" });
});
afterAll(async () => {
  await service?.close();
  await pool.end();
});

async function until<T>(
  probe: () => Promise<T>,
  done: (value: T) => boolean,
  ms = 10_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (done(value) || Date.now() > deadline) return value;
    await sleep(50);
  }
}

describe("the bridge, end to end over MQTT", () => {
  it("stores exactly the unique messages of several devices, and dead-letters malformed ones", async () => {
    const devices = await Promise.all(
      Array.from({ length: 10 }, (_, d) =>
        connectDevice(service.mqttPort, `fleet-${d}`, { clean: false }),
      ),
    );
    await Promise.all(
      devices.map(async (device, d) => {
        const name = `fleet-${d}`;
        const topic = `telemetry/${name}/env`;
        const ts = Date.now();
        const sends: Promise<void>[] = [];
        for (let n = 0; n < 200; n++) {
          sends.push(publishAcked(device, topic, reading(name, n, ts + n)));
          // An application-level resend of an acknowledged or in-flight event.
          if (n % 10 === 0) sends.push(publishAcked(device, topic, reading(name, n, ts + n)));
        }
        // Sent twice, as a device resends what it cannot get stored: recorded once.
        sends.push(publishAcked(device, topic, "not json"));
        sends.push(publishAcked(device, topic, "not json"));
        sends.push(publishAcked(device, topic, JSON.stringify({ ts })));
        sends.push(
          publishAcked(
            device,
            topic,
            `{"event_id":"d","ts":${ts},"v":${"[".repeat(99)}${"]".repeat(99)}}`,
          ),
        );
        sends.push(publishAcked(device, topic, JSON.stringify({ event_id: "x", ts: "soon" })));
        await Promise.all(sends);
      }),
    );
    await Promise.all(devices.map((device) => device.endAsync()));

    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id LIKE 'fleet-%'"),
    ).toBe(2000);
    expect(
      await count(
        pool,
        "SELECT count(DISTINCT (topic, event_id)) AS n FROM telemetry WHERE device_id LIKE 'fleet-%'",
      ),
    ).toBe(2000);
    const { rows } = await pool.query(
      `SELECT reason, count(*)::int AS n, sum(occurrences)::int AS occurrences
         FROM telemetry_rejected WHERE client_id LIKE 'fleet-%' GROUP BY reason ORDER BY reason`,
    );
    expect(rows).toEqual([
      { reason: "event_id_missing", n: 10, occurrences: 10 },
      { reason: "payload_not_json", n: 10, occurrences: 20 },
      { reason: "payload_too_deep", n: 10, occurrences: 10 },
      { reason: "ts_invalid", n: 10, occurrences: 10 },
    ]);
  });

  it("acknowledges a message only once its row is committed", async () => {
    const device = await connectDevice(service.mqttPort, "acker");
    for (let n = 0; n < 20; n++) {
      await publishAcked(device, "telemetry/acker/env", reading("acker", n));
      // The PUBACK has arrived: the row must already be visible to anyone.
      expect(
        await count(pool, "SELECT count(*) AS n FROM telemetry WHERE event_id = $1", [
          `acker-${n}`,
        ]),
      ).toBe(1);
    }
    await device.endAsync();
  });

  it("delivers the stream to a mosquitto_sub tap, each message once", async () => {
    const tap = spawn("mosquitto_sub", [
      ...["-h", "127.0.0.1", "-p", String(service.mqttPort), "-q", "1", "-v"],
      ...["-t", "telemetry/tapped/#", "-C", "21"],
    ]);
    let out = "";
    tap.stdout.on("data", (chunk) => {
      out += chunk;
    });
    await once(service.mqtt.broker, "subscribe");
    const device = await connectDevice(service.mqttPort, "tapped");
    const ts = Date.now();
    for (let n = 0; n < 20; n++)
      await publishAcked(device, "telemetry/tapped/env", reading("tapped", n, ts));
    for (let n = 0; n < 5; n++)
      await publishAcked(device, "telemetry/tapped/env", reading("tapped", n, ts));
    await publishAcked(device, "telemetry/tapped/env", reading("tapped", 99, ts));
    const [code] = await once(tap, "close");
    await device.endAsync();
    expect(code).toBe(0);
    const messages = out
      .split("\n")
      .filter((line) => line.startsWith("telemetry/tapped/env "))
      .map((line) => JSON.parse(line.slice("telemetry/tapped/env ".length)).event_id);
    expect(messages).toEqual([...Array.from({ length: 20 }, (_, n) => `tapped-${n}`), "tapped-99"]);
  });

  it("stores what mosquitto_pub sends with QoS 1", async () => {
    const payload = JSON.stringify({ event_id: "mosq-1", ts: new Date().toISOString(), v: 1 });
    const result = await runCommand("mosquitto_pub", [
      ...["-h", "127.0.0.1", "-p", String(service.mqttPort), "-q", "1"],
      ...["-t", "telemetry/mosq/env", "-m", payload, "-i", "mosq-pub"],
    ]);
    expect(result.code, result.stderr).toBe(0);
    const { rows } = await pool.query(
      "SELECT device_id, payload FROM telemetry WHERE event_id = 'mosq-1'",
    );
    expect(rows).toEqual([{ device_id: "mosq", payload: JSON.parse(payload) }]);
  });

  it("brokers topics outside BRIDGE_TOPICS without storing them", async () => {
    const listener = await connectDevice(service.mqttPort, "other-listener");
    await listener.subscribeAsync("other/#", { qos: 1 });
    const received = nextMessage(listener);
    const device = await connectDevice(service.mqttPort, "other-device");
    await publishAcked(device, "other/dev/env", reading("other", 1));
    const { topic } = await received;
    expect(topic).toBe("other/dev/env");
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE topic LIKE 'other/%'"),
    ).toBe(0);
    await Promise.all([listener.endAsync(), device.endAsync()]);
  });

  it("stores QoS 0 messages and will messages too", async () => {
    const device = await connectDevice(service.mqttPort, "willing", {
      will: {
        topic: "telemetry/willing/status",
        payload: Buffer.from(reading("willing", 2)),
        qos: 1,
        retain: false,
      },
    });
    await device.publishAsync("telemetry/willing/env", reading("willing", 1), { qos: 0 });
    // Callbacks are released in arrival order: this PUBACK means the QoS 0 one was handled.
    await publishAcked(device, "telemetry/willing/env", reading("willing", 3));
    device.stream.destroy();
    const stored = await until(
      async () =>
        (
          await pool.query(
            "SELECT event_id FROM telemetry WHERE device_id = 'willing' ORDER BY event_id",
          )
        ).rows,
      (rows) => rows.length === 3,
    );
    expect(stored).toEqual([
      { event_id: "willing-1" },
      { event_id: "willing-2" },
      { event_id: "willing-3" },
    ]);
    device.end(true);
  });

  it("disconnects a client that publishes to $SYS/", async () => {
    const device = await connectDevice(service.mqttPort, "sys-writer");
    const disconnected = closed(device);
    device.publish("$SYS/broker/fake", "x", { qos: 1 });
    await disconnected;
    device.end(true);
  });
});
