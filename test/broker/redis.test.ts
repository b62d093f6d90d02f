import { once } from "node:events";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import mqttPacket from "mqtt-packet";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { closed, type Device, reading } from "../helpers/device.ts";
import { freePort } from "../helpers/free-port.ts";
import { installed } from "../helpers/installed.ts";
import { type RedisServer, startRedis } from "../helpers/redis.ts";
import { logged, portsOf, type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("redis");
const pool = new pg.Pool({ connectionString: db.url });
let redis: RedisServer;
const running: ServiceProcess[] = [];
const clients: Device[] = [];

/** A service process on the shared Redis, and the MQTT port its "ready" line names. */
async function spawn(): Promise<{ service: ServiceProcess; port: number }> {
  const service = await spawnService({
    DATABASE_URL: db.url,
    MQTT_PORT: "0",
    REDIS_URL: redis.url,
    BATCH_MAX_WAIT_MS: "5",
  });
  running.push(service);
  return { service, port: portsOf(service).mqtt };
}

async function stop(service: ServiceProcess): Promise<number | null> {
  service.child.kill("SIGTERM");
  return service.exited;
}

/** Resolves with the CONNACK; fails on a refusal or a timeout. */
function connected(client: Device): Promise<mqtt.IConnackPacket> {
  return new Promise((resolve, reject) => {
    client.once("connect", resolve);
    client.once("error", reject);
  });
}

async function connect(
  port: number,
  clientId: string,
  options: mqtt.IClientOptions = {},
): Promise<Device> {
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
    clientId,
    protocolVersion: 4,
    ...options,
  });
  clients.push(client);
  await connected(client);
  return client;
}

/**
 * Connects a persistent session again, collecting from the first packet on
 * (queued messages follow the CONNACK at once): whether the broker had the
 * session, and an inbox.
 */
async function resume(port: number, clientId: string) {
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
    clientId,
    clean: false,
    protocolVersion: 4,
  });
  clients.push(client);
  const messages = inbox(client);
  const connack = await connected(client);
  return { client, sessionPresent: connack.sessionPresent, ...messages };
}

/**
 * The event ids of `messages`, each once: QoS 1 is at least once, and a
 * message queued for a session while it was away may come live as well
 * while the session is being restored.
 */
function distinct(messages: { payload: string }[]): string[] {
  return [...new Set(messages.map((message) => JSON.parse(message.payload).event_id as string))];
}

async function untilDistinct(messages: { payload: string }[], count: number): Promise<void> {
  for (let waited = 0; distinct(messages).length < count && waited < 10_000; waited += 20) {
    await sleep(20);
  }
}

/** Collects what `client` receives; `until(n)` waits for the n-th message. */
function inbox(client: Device) {
  const received: { topic: string; payload: string; retain: boolean }[] = [];
  client.on("message", (topic, payload, packet) =>
    received.push({ topic, payload: payload.toString(), retain: packet.retain }),
  );
  const until = async (count: number, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    while (received.length < count && Date.now() < deadline) await sleep(20);
    return received;
  };
  return { received, until };
}

async function eventIds(device: string): Promise<string[]> {
  const { rows } = await pool.query<{ event_id: string }>(
    "SELECT event_id FROM telemetry WHERE device_id = $1",
    [device],
  );
  return rows.map((row) => row.event_id).sort();
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    promise,
    sleep(ms).then(() => Promise.reject(new Error(`${what}: not within ${ms} ms`))),
  ]);
}

let a: { service: ServiceProcess; port: number };
let b: { service: ServiceProcess; port: number };

beforeAll(async () => {
  redis = await startRedis();
  [a, b] = await Promise.all([spawn(), spawn()]);
});

afterAll(async () => {
  for (const client of clients) client.end(true);
  for (const service of running) service.child.kill("SIGKILL");
  await redis?.close();
  await pool.end();
});

describe.skipIf(!installed("redis-server", "the Redis tests"))(
  "two service processes sharing one Redis (REDIS_URL)",
  () => {
    it("delivers to a live tap on one process what devices publish on the other, each message stored and forwarded once", async () => {
      const tap = await connect(b.port, "tap-live");
      await tap.subscribeAsync("telemetry/#", { qos: 0 });
      const tapped = inbox(tap);

      const onA = await connect(a.port, "dev-live");
      for (let n = 1; n <= 10; n++) {
        await onA.publishAsync(
          "telemetry/dev-live/env",
          reading("dev-live", n, 1_700_000_000_000),
          {
            qos: 1,
          },
        );
      }
      await onA.endAsync();
      // The same device on the other process: 6–10 again (its retries), then 11–15.
      const onB = await connect(b.port, "dev-live");
      for (let n = 6; n <= 15; n++) {
        await onB.publishAsync(
          "telemetry/dev-live/env",
          reading("dev-live", n, 1_700_000_000_000),
          {
            qos: 1,
          },
        );
      }

      const expected = Array.from({ length: 15 }, (_, i) => `dev-live-${i + 1}`).sort();
      await tapped.until(15);
      // Time for a redelivery to be forwarded, were it to be.
      await sleep(300);
      const forwarded = tapped.received.map((message) => JSON.parse(message.payload).event_id);
      expect(forwarded.sort()).toEqual(expected);
      expect(await eventIds("dev-live")).toEqual(expected);
    });

    it("closes a client's first connection when its client id connects on the other process", async () => {
      // Without reconnecting, or the two would take the id from each other in turn.
      const once = { reconnectPeriod: 0 };
      const first = await connect(a.port, "dev-takeover", once);
      const firstClosed = closed(first);
      const second = await connect(b.port, "dev-takeover", once);
      await within(firstClosed, 5000, "the first connection closed");
      expect(first.connected).toBe(false);
      await sleep(300);
      expect(second.connected).toBe(true);
    });

    it("keeps persistent sessions, their queued QoS 1 messages and retained messages across a restart and from process to process", async () => {
      const publisher = await connect(b.port, "pub-session");
      await publisher.publishAsync("status/dev-session", "online", { qos: 1, retain: true });

      const subscriber = await connect(a.port, "sub-session", { clean: false });
      await subscriber.subscribeAsync("telemetry/dev-session/#", { qos: 1 });
      await subscriber.endAsync();

      expect(await stop(a.service)).toBe(0);
      a = await spawn();

      // Away: queued for it in Redis, published on B.
      for (let n = 1; n <= 3; n++) {
        await publisher.publishAsync("telemetry/dev-session/env", reading("dev-session", n), {
          qos: 1,
        });
      }
      // Back on B, the process it had not used: the session and its queue are there.
      const onB = await resume(b.port, "sub-session");
      expect(onB.sessionPresent).toBe(true);
      await untilDistinct(onB.received, 3);
      await onB.client.endAsync();

      // Away again: published on the restarted A.
      const publisherOnA = await connect(a.port, "pub-session-2");
      for (let n = 4; n <= 5; n++) {
        await publisherOnA.publishAsync("telemetry/dev-session/env", reading("dev-session", n), {
          qos: 1,
        });
      }
      const onA = await resume(a.port, "sub-session");
      expect(onA.sessionPresent).toBe(true);
      await untilDistinct(onA.received, 2);
      // Its subscription, made on the process that was restarted, still holds.
      await publisher.publishAsync("telemetry/dev-session/env", reading("dev-session", 6), {
        qos: 1,
      });
      await untilDistinct(onA.received, 3);

      // Every one, though not always in the order sent (see the README).
      expect(distinct(onB.received).sort()).toEqual([
        "dev-session-1",
        "dev-session-2",
        "dev-session-3",
      ]);
      expect(distinct(onA.received).sort()).toEqual([
        "dev-session-4",
        "dev-session-5",
        "dev-session-6",
      ]);

      // The retained message, published on B before A restarted, from both.
      for (const port of [a.port, b.port]) {
        const reader = await connect(port, `retained-reader-${port}`);
        const retained = inbox(reader);
        await reader.subscribeAsync("status/#", { qos: 1 });
        expect(await retained.until(1)).toEqual([
          { topic: "status/dev-session", payload: "online", retain: true },
        ]);
      }
    });

    it("sends a resumed session its CONNACK before any message, while messages for it stream in", async () => {
      const topic = "telemetry/dev-order/env";
      const subscriber = await connect(b.port, "resume-order", { clean: false });
      await subscriber.subscribeAsync("telemetry/dev-order/#", { qos: 1 });
      await subscriber.endAsync();

      // Ten publishers' worth of messages in flight on the other process.
      const publisher = await connect(a.port, "pub-order");
      let streaming = true;
      let sent = 0;
      const stream = Promise.all(
        Array.from({ length: 10 }, async () => {
          while (streaming)
            await publisher.publishAsync(topic, reading("dev-order", sent++), { qos: 1 });
        }),
      );

      /** The first packet the broker sends a resumed session, by its command. */
      const firstPacket = async (): Promise<string> => {
        const socket = net.connect(b.port, "127.0.0.1");
        socket.on("error", () => {});
        const parser = mqttPacket.parser({ protocolVersion: 4 });
        const first = new Promise<string>((resolve) => {
          parser.once("packet", (packet) => resolve(packet.cmd));
          socket.on("data", (data) => parser.parse(data));
          socket.once("close", () => resolve("closed"));
        });
        socket.write(
          mqttPacket.generate({
            cmd: "connect",
            protocolId: "MQTT",
            protocolVersion: 4,
            clean: false,
            clientId: "resume-order",
            keepalive: 30,
          }),
        );
        const cmd = await within(first, 5000, "a first packet");
        socket.end(mqttPacket.generate({ cmd: "disconnect" }));
        await once(socket, "close");
        return cmd;
      };
      const firsts: string[] = [];
      for (let n = 0; n < 20; n++) firsts.push(await firstPacket());
      streaming = false;
      await stream;
      expect(sent).toBeGreaterThan(100);
      expect(firsts).toEqual(firsts.map(() => "connack"));
    });

    it("publishes the will of a device whose process was SIGKILLed, from the other process, within 35 s", async () => {
      const watcher = await connect(b.port, "will-watcher");
      const wills = inbox(watcher);
      await watcher.subscribeAsync("status/dev-will", { qos: 1 });
      const device = await connect(a.port, "dev-will", {
        will: { topic: "status/dev-will", payload: Buffer.from("offline"), qos: 1, retain: false },
      });
      a.service.child.kill("SIGKILL");
      await a.service.exited;
      const killedAt = Date.now();
      device.end(true);
      const [will] = await wills.until(1, 45_000);
      expect(will).toEqual({ topic: "status/dev-will", payload: "offline", retain: false });
      expect(Date.now() - killedAt).toBeLessThan(36_000);
      a = await spawn();
    }, 90_000);

    it("fails to start with one line naming REDIS_URL when Redis cannot be reached", async () => {
      const nowhere = `redis://127.0.0.1:${await freePort()}`;
      const failure = await spawnService({
        DATABASE_URL: db.url,
        MQTT_PORT: "0",
        REDIS_URL: nowhere,
      }).then(
        () => "started",
        (error: Error) => error.message,
      );
      expect(failure).toMatch(/^service exited \(1\) before ready:\n/);
      expect(failure.split("\n")).toContain(
        `cannot reach Redis at ${nowhere} (REDIS_URL): connect ECONNREFUSED ${nowhere.slice("redis://".length)}. Start that server or correct REDIS_URL; unset it to keep the broker's state in each process.`,
      );
    });

    it("stores and acknowledges while Redis is away, logs the loss, reconnects by itself, and shuts down cleanly even without it", async () => {
      const tap = await connect(b.port, "tap-outage");
      await tap.subscribeAsync("telemetry/#", { qos: 0 });
      const tapped = inbox(tap);
      const device = await connect(a.port, "dev-outage");

      await redis.stop();
      await logged(a.service, "Redis connection lost", 15_000);
      await logged(b.service, "Redis connection lost", 15_000);
      // Stored and acknowledged: the PUBACK does not wait for Redis.
      await device.publishAsync("telemetry/dev-outage/env", reading("dev-outage", 1), { qos: 1 });
      expect(await eventIds("dev-outage")).toEqual(["dev-outage-1"]);

      await redis.start();
      await logged(a.service, "Redis connection restored", 15_000);
      await logged(b.service, "Redis connection restored", 15_000);
      await device.publishAsync("telemetry/dev-outage/env", reading("dev-outage", 2), { qos: 1 });
      // dev-outage-1 may come first or not at all: the publishing process sends
      // it once it is back, and the tap's process may not have resubscribed yet.
      const forwarded = () =>
        tapped.received.map((message) => JSON.parse(message.payload).event_id);
      const deadline = Date.now() + 10_000;
      while (!forwarded().includes("dev-outage-2") && Date.now() < deadline) await sleep(20);
      expect(forwarded()).toContain("dev-outage-2");

      await redis.stop();
      await logged(a.service, "Redis connection lost", 15_000, 2);
      expect(await within(Promise.all([stop(a.service), stop(b.service)]), 15_000, "exit")).toEqual(
        [0, 0],
      );
    });
  },
);
