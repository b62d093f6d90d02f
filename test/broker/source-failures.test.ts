import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { type Database, startEmbedded } from "../../bridge/database.ts";
import { startTestServer } from "../helpers/embedded-server.ts";
import { type Mosquitto, startMosquitto } from "../helpers/mosquitto.ts";
import { type MqttRelay, startMqttRelay } from "../helpers/mqtt-relay.ts";
import { logged, type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase, silentLogger } from "../helpers/test-database.ts";

// The first test stops and starts a PostgreSQL of its own; the second uses the suite's.
const server = await startTestServer();
const shared = await createTestDatabase("source_failures");
let restarted: Database | undefined;
const services: ServiceProcess[] = [];
const relays: MqttRelay[] = [];
const brokers: Mosquitto[] = [];
const pools: pg.Pool[] = [];
afterAll(async () => {
  for (const service of services) service.child.kill("SIGKILL");
  await Promise.all(services.map((service) => service.exited));
  for (const relay of relays) await relay.close();
  for (const broker of brokers) await broker.stop();
  for (const pool of pools) await pool.end();
  await restarted?.stop();
  await server.destroy();
});

/** Mosquitto keeping every message for offline persistent sessions. */
async function mosquitto(): Promise<Mosquitto> {
  const broker = await startMosquitto(["max_queued_messages 100000"]);
  brokers.push(broker);
  return broker;
}

async function relayTo(broker: Mosquitto, protocolVersion: number): Promise<MqttRelay> {
  const relay = await startMqttRelay(broker.port, protocolVersion);
  relays.push(relay);
  return relay;
}

/** The service as a process, subscribed through `relay`: resolves once it says so. */
async function bridge(
  relay: MqttRelay,
  env: Record<string, string>,
  subscribed = true,
): Promise<ServiceProcess> {
  const service = await spawnService({
    MQTT_PORT: "0",
    SOURCE_URL: relay.url,
    BATCH_MAX_WAIT_MS: "5",
    ...env,
  });
  services.push(service);
  if (subscribed) await logged(service, "subscribed to the source broker", 10_000);
  return service;
}

async function stored(pool: pg.Pool, prefix: string): Promise<{ copies: number; unique: number }> {
  const { rows } = await pool.query<{ copies: number; unique: number }>(
    `SELECT count(*)::int AS copies, count(DISTINCT (topic, event_id))::int AS unique
       FROM telemetry WHERE device_id LIKE $1`,
    [`${prefix}-%`],
  );
  return rows[0] as { copies: number; unique: number };
}

function devices(broker: Mosquitto, prefix: string, count: number): Promise<mqtt.MqttClient[]> {
  return Promise.all(
    Array.from({ length: count }, (_, d) =>
      mqtt.connectAsync(broker.url, {
        clientId: `${prefix}-${d}`,
        protocolVersion: 4,
        reconnectPeriod: 0,
      }),
    ),
  );
}

function publish(device: mqtt.MqttClient, name: string, n: number): Promise<unknown> {
  return device.publishAsync(
    `telemetry/${name}/env`,
    JSON.stringify({ event_id: `${name}-${n}`, ts: Date.now(), t: n }),
    { qos: 1 },
  );
}

describe("SOURCE_URL: failures around a broker users already run", () => {
  it("sends Mosquitto no PUBACK while PostgreSQL is stopped for 30 s, resumes by itself, and stores every message once", async () => {
    const broker = await mosquitto();
    const relay = await relayTo(broker, 4);
    const service = await bridge(relay, {
      DATABASE_URL: server.url,
      SOURCE_CLIENT_ID: "outage-bridge",
    });

    // Four devices each publishing every 200 ms, before, during and after the outage.
    const fleet = await devices(broker, "outage", 4);
    let publishing = true;
    let sent = 0;
    const streams = Promise.all(
      fleet.map(async (device, d) => {
        const start = Date.now();
        for (let n = 0; publishing; n++) {
          await publish(device, `outage-${d}`, n);
          sent++;
          await sleep(Math.max(0, start + (n + 1) * 200 - Date.now()));
        }
      }),
    );

    while (relay.pubacks().length < 50) await sleep(10);
    await server.stop();
    const down = Date.now();
    const sentBeforeDown = sent;
    await sleep(30_000);
    const sentWhileDown = sent - sentBeforeDown;
    const restarting = Date.now();
    restarted = await startEmbedded({
      dataDir: server.dataDir,
      port: server.port,
      logger: silentLogger,
    });
    await sleep(1000);
    publishing = false;
    await streams;
    await Promise.all(fleet.map((device) => device.endAsync()));
    const total = sent;

    const pool = new pg.Pool({ connectionString: restarted.url });
    pools.push(pool);
    for (
      let waited = 0;
      ((await stored(pool, "outage")).unique < total || relay.pubacks().length < total) &&
      waited < 30_000;
      waited += 100
    ) {
      await sleep(100);
    }

    // Commits that finished just before the server went down may still be acknowledged.
    const grace = 500;
    const ackedWhileDown = relay
      .pubacks()
      .filter((packet) => packet.at > down + grace && packet.at < restarting);
    expect(sentWhileDown).toBeGreaterThan(500);
    expect(service.output.some((line) => line.includes("PostgreSQL unavailable; retrying"))).toBe(
      true,
    );
    expect(ackedWhileDown).toEqual([]);
    expect(relay.pubacks().filter((packet) => packet.at < down).length).toBeGreaterThanOrEqual(50);
    expect(relay.pubacks().filter((packet) => packet.at >= restarting).length).toBeGreaterThan(
      sentWhileDown,
    );
    expect(relay.pubacks().length).toBeGreaterThanOrEqual(total);
    expect(relay.parseErrors).toEqual([]);
    expect(await stored(pool, "outage")).toEqual({ copies: total, unique: total });
    service.child.kill("SIGTERM");
    expect(await service.exited).toBe(0);
  }, 80_000);

  it("stores every message once with two MQTT 5 bridge processes in one share group, one SIGKILLed mid-stream and restarted", async () => {
    const broker = await mosquitto();
    const pool = new pg.Pool({ connectionString: shared.url });
    pools.push(pool);
    const env = (clientId: string) => ({
      DATABASE_URL: shared.url,
      SOURCE_PROTOCOL_VERSION: "5",
      SOURCE_SHARE_GROUP: "bridges",
      SOURCE_CLIENT_ID: clientId,
    });
    const relayA = await relayTo(broker, 5);
    const relayB = await relayTo(broker, 5);
    const [first, b] = await Promise.all([
      bridge(relayA, env("share-bridge-a")),
      bridge(relayB, env("share-bridge-b")),
    ]);

    const fleet = await devices(broker, "share", 4);
    const total = 4 * 500;
    let sent = 0;
    const publishing = Promise.all(
      fleet.map(async (device, d) => {
        for (let n = 0; n < 500; n++) {
          await publish(device, `share-${d}`, n);
          sent++;
        }
      }),
    );
    while ((await stored(pool, "share")).copies < 300) await sleep(20);
    first.child.kill("SIGKILL");
    await first.exited;
    const ackedByFirst = relayA.pubacks().length;
    await publishing;
    expect(sent).toBe(total);
    await Promise.all(fleet.map((device) => device.endAsync()));

    // Not waiting for its SUBACK: over MQTT 5 without a receive maximum, Mosquitto sends the
    // session's whole backlog ahead of it, and the service takes one message per commit.
    const second = await bridge(relayA, env("share-bridge-a"), false);
    for (
      let waited = 0;
      (await stored(pool, "share")).unique < total && waited < 30_000;
      waited += 100
    ) {
      await sleep(100);
    }
    await logged(second, "subscribed to the source broker", 10_000);
    // The acknowledgements of the last commits follow them by a moment.
    await sleep(500);

    expect(await stored(pool, "share")).toEqual({ copies: total, unique: total });
    const subscribed = second.output
      .filter((line) => line.includes("subscribed to the source broker"))
      .map((line) => JSON.parse(line) as { sessionPresent: boolean });
    expect(subscribed[0]?.sessionPresent).toBe(true);
    // Each PUBACK follows a commit: both members, and the restarted one, committed messages.
    const byConnection = (relay: MqttRelay, connection: number) =>
      relay.pubacks().filter((packet) => packet.connection === connection).length;
    expect(ackedByFirst).toBeGreaterThan(0);
    expect(byConnection(relayA, 0)).toBe(ackedByFirst);
    expect(byConnection(relayA, 1)).toBeGreaterThan(0);
    expect(relayB.pubacks().length).toBeGreaterThan(0);
    expect(relayA.pubacks().length + relayB.pubacks().length).toBeGreaterThanOrEqual(total);
    expect([...relayA.parseErrors, ...relayB.parseErrors]).toEqual([]);
    for (const service of [b, second]) {
      service.child.kill("SIGTERM");
      expect(await service.exited).toBe(0);
    }
  });
});
