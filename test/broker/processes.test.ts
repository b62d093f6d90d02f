import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readMigrations } from "../../bridge/migrate.ts";
import { IdentityStore } from "../../storage/identities.ts";
import {
  closed,
  connackRefusal,
  connectDevice,
  publishAcked,
  reading,
  Stream,
} from "../helpers/device.ts";
import { runCommand } from "../helpers/run-command.ts";
import { portsOf, type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

// Two service processes started at once on a database nothing has touched:
// each migrates, creates partitions, and takes its own connections.
const db = await createTestDatabase("processes", undefined, { migrate: false });
const pool = new pg.Pool({ connectionString: db.url });
let services: ServiceProcess[] = [];
let ports: number[] = [];

function logged(service: ServiceProcess, msg: string): Record<string, unknown>[] {
  return service.output
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((entry) => entry.msg === msg);
}

beforeAll(async () => {
  const env = {
    DATABASE_URL: db.url,
    MQTT_PORT: "0",
    ALLOW_ANONYMOUS: "false",
    BATCH_MAX_WAIT_MS: "5",
  };
  services = await Promise.all([spawnService(env), spawnService(env)]);
  ports = services.map((service) => portsOf(service).mqtt);
});
afterAll(async () => {
  for (const service of services) service.child.kill("SIGKILL");
  await pool.end();
});

describe("two service processes on one database", () => {
  it("start together on a fresh database: migrations applied once, each partition created once", async () => {
    for (const service of services) {
      expect(service.output.filter((line) => /"level":(50|60)/.test(line))).toEqual([]);
    }
    const applied = services.flatMap((s) => logged(s, "migrations applied"));
    expect(applied).toHaveLength(1);
    const { rows } = await pool.query<{ name: string }>(
      "SELECT name FROM schema_migrations ORDER BY id",
    );
    expect(rows.map((row) => row.name)).toEqual((await readMigrations()).map((m) => m.name));
    const created = services.flatMap((s) =>
      logged(s, "created partitions").flatMap((entry) => entry.partitions as string[]),
    );
    expect(created.length).toBeGreaterThan(0);
    expect(new Set(created).size).toBe(created.length);
  });

  it("cut off a disabled identity on both, and both refuse its reconnect", async () => {
    const id = "dev-both";
    const secret = (await new IdentityStore(pool).add([id], "device")).get(id) as string;
    const credentials = { username: id, password: secret };
    const devices = await Promise.all(ports.map((port) => connectDevice(port, id, credentials)));
    for (const [n, device] of devices.entries()) {
      await publishAcked(device, `telemetry/${id}/env`, reading(id, n));
    }
    const gone = Promise.all(devices.map(closed));
    const result = await runCommand("npm", ["run", "--silent", "devices", "--", "disable", id], {
      ...process.env,
      DATABASE_URL: db.url,
    });
    expect(result.code, result.stderr).toBe(0);
    const disabledAt = performance.now();
    await gone;
    expect(performance.now() - disabledAt).toBeLessThan(5000);
    const refusals = await Promise.all(
      ports.map((port) =>
        connackRefusal(`mqtt://127.0.0.1:${port}`, { clientId: id, ...credentials }),
      ),
    );
    expect(refusals).toEqual([5, 5]);
  });

  it("store each message once when devices fail over from a killed process to the other", async () => {
    const names = Array.from({ length: 4 }, (_, i) => `fleet-${i}`);
    const secrets = await new IdentityStore(pool).add(names, "device");
    const perDevice = 2000;
    const total = names.length * perDevice;
    const [a, b] = services as [ServiceProcess, ServiceProcess];
    const devices = names.map((name) =>
      mqtt.connect({
        // Process a first; a reconnect goes to the next, process b.
        servers: ports.map((port) => ({ host: "127.0.0.1", port })),
        clientId: name,
        username: name,
        password: secrets.get(name),
        clean: false,
        protocolVersion: 4,
        reconnectPeriod: 100,
      }),
    );
    const streams = devices.map(
      (device, i) => new Stream(device, names[i] as string, perDevice, 50),
    );
    const done = Promise.all(streams.map((stream) => stream.run()));
    const acked = () => streams.flatMap((stream) => [...stream.acked.keys()]);

    while (acked().length < total / 4) await sleep(5);
    a.child.kill("SIGKILL");
    await a.exited;
    const ackedBeforeKill = acked();
    const { rows: before } = await pool.query<{ event_id: string }>(
      "SELECT event_id FROM telemetry WHERE device_id LIKE 'fleet-%'",
    );
    const stored = new Set(before.map((row) => row.event_id));
    expect(ackedBeforeKill.filter((eventId) => !stored.has(eventId))).toEqual([]);
    expect(stored.size).toBeLessThan(total);

    await done;
    // PUBACKs lost with the killed process: its devices send those messages
    // again, now to the other process, which finds them in the database.
    const { rows: resent } = await pool.query<{ topic: string; payload: string }>(
      "SELECT topic, payload::text FROM telemetry WHERE event_id = ANY($1)",
      [ackedBeforeKill.filter((_, i) => i % 10 === 0)],
    );
    await Promise.all(
      resent.map(({ topic, payload }) =>
        publishAcked(
          devices[names.indexOf(topic.split("/")[1] as string)] as mqtt.MqttClient,
          topic,
          payload,
        ),
      ),
    );
    await Promise.all(devices.map((device) => device.endAsync()));
    const { rows } = await pool.query<{ copies: string; unique: string }>(
      `SELECT count(*) AS copies, count(DISTINCT (topic, event_id, time)) AS unique
         FROM telemetry WHERE device_id LIKE 'fleet-%'`,
    );
    expect(rows[0]).toEqual({ copies: String(total), unique: String(total) });
    console.log(
      `killed after ${ackedBeforeKill.length} acknowledged, ${stored.size} stored; ${resent.length} of them sent again to the other process`,
    );
    b.child.kill("SIGTERM");
    expect(await b.exited).toBe(0);
  });
});
