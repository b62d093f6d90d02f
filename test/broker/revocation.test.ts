import type mqtt from "mqtt";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { closed, connackRefusal, connectDevice } from "../helpers/device.ts";
import { runCommand } from "../helpers/run-command.ts";
import {
  type BrokeredService,
  portsOf,
  type ServiceProcess,
  spawnService,
  startTestService,
} from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("revocation");
let inProcess: BrokeredService;
let child: ServiceProcess;
let ports: number[];

/** `npm run devices -- …` against the test database. */
async function devices(...args: string[]) {
  const result = await runCommand(
    process.execPath,
    ["--import", "tsx", "bin/devices.ts", ...args],
    {
      ...process.env,
      DATABASE_URL: db.url,
    },
  );
  expect(result.code, result.stderr).toBe(0);
  return result.stdout.trim().split("\n").at(-1) as string;
}

function connectBoth(id: string, secret: string) {
  return Promise.all(
    ports.map((port) => connectDevice(port, id, { username: id, password: secret })),
  );
}

/** Milliseconds until every client is disconnected by the service. */
async function timeToDisconnect(clients: mqtt.MqttClient[], change: () => Promise<unknown>) {
  const gone = Promise.all(clients.map(closed));
  const started = performance.now();
  await change();
  await gone;
  return performance.now() - started;
}

function refusal(port: number, id: string, secret: string): Promise<number | undefined> {
  return connackRefusal(`mqtt://127.0.0.1:${port}`, {
    clientId: id,
    username: id,
    password: secret,
  });
}

beforeAll(async () => {
  const env = { ALLOW_ANONYMOUS: "false", LOG_LEVEL: "info" };
  inProcess = await startTestService(db.url, env);
  child = await spawnService({ ...env, DATABASE_URL: db.url, MQTT_PORT: "0" });
  ports = [inProcess.mqttPort, portsOf(child).mqtt];
});
afterAll(async () => {
  child?.child.kill("SIGTERM");
  await child?.exited;
  await inProcess?.close();
});

describe("revocation, with two service processes on one database", () => {
  it("disconnects a disabled, rotated or removed identity everywhere within seconds", async () => {
    const secret = await devices("add", "dev-r");
    expect(secret).toMatch(/^[A-Za-z0-9_-]{43}$/);

    const disabled = await timeToDisconnect(await connectBoth("dev-r", secret), () =>
      devices("disable", "dev-r"),
    );
    expect(disabled).toBeLessThan(5000);
    expect(await refusal(ports[1] as number, "dev-r", secret)).toBe(5);

    await devices("enable", "dev-r");
    let rotated = "";
    const rotating = await timeToDisconnect(await connectBoth("dev-r", secret), async () => {
      rotated = await devices("rotate", "dev-r");
    });
    expect(rotating).toBeLessThan(5000);
    expect(await refusal(ports[0] as number, "dev-r", secret)).toBe(4);
    expect(await refusal(ports[1] as number, "dev-r", rotated)).toBeUndefined();

    const ruled = await timeToDisconnect(await connectBoth("dev-r", rotated), () =>
      devices("deny", "dev-r", "publish", "telemetry/%u/private"),
    );
    expect(ruled).toBeLessThan(5000);

    const removed = await timeToDisconnect(await connectBoth("dev-r", rotated), () =>
      devices("remove", "dev-r"),
    );
    expect(removed).toBeLessThan(5000);
    expect(await refusal(ports[1] as number, "dev-r", rotated)).toBe(4);
    console.log(
      `disconnected in ${[disabled, rotating, ruled, removed].map((ms) => Math.round(ms)).join(", ")} ms (disable, rotate, rule, remove; including the command's start)`,
    );
  });

  it("does not publish the will of a revoked connection", async () => {
    const secret = await devices("add", "dev-w");
    const watcher = await devices("add", "watch", "--role", "reader");
    const tap = await connectDevice(ports[0] as number, "watch-tap", {
      username: "watch",
      password: watcher,
    });
    await tap.subscribeAsync("telemetry/#", { qos: 1 });
    const wills: string[] = [];
    tap.on("message", (topic) => wills.push(topic));
    const device = await connectDevice(ports[0] as number, "dev-w", {
      username: "dev-w",
      password: secret,
      will: {
        topic: "telemetry/dev-w/status",
        payload: Buffer.from(JSON.stringify({ event_id: "will-1", ts: Date.now() })),
        qos: 1,
        retain: false,
      },
    });
    await timeToDisconnect([device], () => devices("disable", "dev-w"));
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(wills).toEqual([]);
    await tap.endAsync();
    const pool = new pg.Pool({ connectionString: db.url });
    const stored = await pool.query("SELECT 1 FROM telemetry WHERE event_id = 'will-1'");
    await pool.end();
    expect(stored.rowCount).toBe(0);
  });
});
