import { setTimeout as sleep } from "node:timers/promises";
import type mqtt from "mqtt";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IdentityStore, type Role } from "../../storage/identities.ts";
import {
  closed,
  connackRefusal,
  connectDevice,
  nextMessage,
  publishAcked,
  rawConnect,
  reading,
} from "../helpers/device.ts";
import { runCommand } from "../helpers/run-command.ts";
import { type BrokeredService, startTestService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";
import { count } from "../helpers/writer.ts";

const db = await createTestDatabase("security");
const pool = new pg.Pool({ connectionString: db.url });
const store = new IdentityStore(pool);
let service: BrokeredService;
const secrets = new Map<string, string>();

async function identity(id: string, role: Role = "device"): Promise<string> {
  const secret = (await store.add([id], role)).get(id) as string;
  secrets.set(id, secret);
  return secret;
}

function login(id: string, options: mqtt.IClientOptions = {}) {
  return connectDevice(service.mqttPort, options.clientId ?? id, {
    username: id,
    password: secrets.get(id),
    ...options,
  });
}

/** The CONNACK return code of a refused connection to the plain TCP listener. */
function refusedWith(port: number, options: mqtt.IClientOptions): Promise<number | undefined> {
  return connackRefusal(`mqtt://127.0.0.1:${port}`, options);
}

/** Client ids as aedes registered them. */
function connectedIds(): string[] {
  return Object.keys((service.mqtt.broker as unknown as { clients: object }).clients);
}

/** The SUBACK's return codes: mqtt.js turns a refused filter into an error, which hides the rest. */
async function subackCodes(client: mqtt.MqttClient, filters: string[]): Promise<number[]> {
  const suback = new Promise<number[]>((resolve) =>
    client.on("packetreceive", (packet) => {
      if (packet.cmd === "suback") resolve(packet.granted as number[]);
    }),
  );
  client.subscribe(filters, { qos: 1 }, () => {});
  return suback;
}

/** Polls until `done` holds or a few seconds pass; returns the last value. */
async function until<T>(probe: () => Promise<T>, done: (value: T) => boolean): Promise<T> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const value = await probe();
    if (done(value) || Date.now() > deadline) return value;
    await sleep(50);
  }
}

beforeAll(async () => {
  service = await startTestService(db.url, { ALLOW_ANONYMOUS: "false", BATCH_MAX_WAIT_MS: "5" });
  await Promise.all([
    identity("dev-a"),
    identity("dev-b"),
    identity("reader-1", "reader"),
    identity("admin-1", "admin"),
  ]);
});
afterAll(async () => {
  await service?.close();
  await pool.end();
});

describe("authentication", () => {
  it("refuses anonymous and wrong-secret CONNECTs with the CONNACK codes of MQTT 3.1.1", async () => {
    expect(await refusedWith(service.mqttPort, { clientId: "nobody" })).toBe(5);
    expect(
      await refusedWith(service.mqttPort, {
        clientId: "dev-a",
        username: "dev-a",
        password: "guess",
      }),
    ).toBe(4);
    expect(
      await refusedWith(service.mqttPort, { clientId: "ghost", username: "ghost", password: "x" }),
    ).toBe(4);
    expect(await refusedWith(service.mqttPort, { clientId: "dev-a", username: "dev-a" })).toBe(4);
    const metrics = await (await fetch(`http://127.0.0.1:${service.httpPort}/metrics`)).text();
    expect(metrics).toMatch(/^telemetry_bridge_auth_failures_total\{reason="anonymous"\} 1$/m);
    expect(metrics).toMatch(
      /^telemetry_bridge_auth_failures_total\{reason="bad_credentials"\} 3$/m,
    );
    const device = await login("dev-a");
    expect(device.connected).toBe(true);
    await device.endAsync();
  });

  it("lets mosquitto_pub in with -u/-P, and not with a wrong -P", async () => {
    const payload = reading("dev-b", 1);
    const args = ["-h", "127.0.0.1", "-p", String(service.mqttPort), "-q", "1", "-i", "dev-b"];
    const ok = await runCommand("mosquitto_pub", [
      ...args,
      ...[
        "-u",
        "dev-b",
        "-P",
        secrets.get("dev-b") as string,
        "-t",
        "telemetry/dev-b/env",
        "-m",
        payload,
      ],
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    const bad = await runCommand("mosquitto_pub", [
      ...args,
      ...["-u", "dev-b", "-P", "wrong", "-t", "telemetry/dev-b/env", "-m", reading("dev-b", 2)],
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/not authori[sz]ed|bad user name or password/i);
    expect(await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'dev-b'")).toBe(
      1,
    );
  });

  it("binds a device's client id to its identity: no one takes over another's connection", async () => {
    const victim = await login("dev-a");
    // dev-b, with its own valid secret, claims dev-a's client id.
    expect(
      await refusedWith(service.mqttPort, {
        clientId: "dev-a",
        username: "dev-b",
        password: secrets.get("dev-b"),
      }),
    ).toBe(2);
    // A reader's client id is kept apart under its own id, whatever it asks for.
    const reader = await login("reader-1", { clientId: "dev-a" });
    await sleep(200);
    expect(victim.connected).toBe(true);
    expect(connectedIds()).toContain("reader-1:dev-a");
    // An empty client id becomes the device's id.
    await victim.endAsync();
    const bare = await login("dev-a", { clientId: "" });
    expect(connectedIds()).toContain("dev-a");
    await Promise.all([reader.endAsync(), bare.endAsync()]);
  });

  it("checks the will's topic at CONNECT", async () => {
    const will = {
      topic: "telemetry/dev-b/status",
      payload: Buffer.from("x"),
      qos: 1 as const,
      retain: false,
    };
    expect(
      await refusedWith(service.mqttPort, {
        clientId: "dev-a",
        username: "dev-a",
        password: secrets.get("dev-a"),
        will,
      }),
    ).toBe(5);
    const own = await login("dev-a", { will: { ...will, topic: "telemetry/dev-a/status" } });
    await own.endAsync();
  });
});

describe("authorization", () => {
  it("stores a device's own readings as its own, and not a spoofed one, which is recorded and not forwarded", async () => {
    const tap = await login("reader-1", { clientId: "tap" });
    await tap.subscribeAsync("telemetry/#", { qos: 1 });
    const seen: string[] = [];
    tap.on("message", (topic) => seen.push(topic));
    const attacker = await login("dev-a");
    await publishAcked(attacker, "telemetry/dev-a/env", reading("dev-a", 100));
    // The spoof is acknowledged, so a QoS 1 device does not resend it forever.
    await publishAcked(attacker, "telemetry/victim/env", reading("victim", 1));
    await publishAcked(attacker, "commands/dev-b/reboot", "now");
    await publishAcked(attacker, "telemetry/dev-a/env", reading("dev-a", 101));
    await sleep(300);
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'victim'"),
    ).toBe(0);
    const { rows } = await pool.query(
      "SELECT device_id, event_id FROM telemetry WHERE event_id IN ('dev-a-100', 'dev-a-101') ORDER BY event_id",
    );
    expect(rows).toEqual([
      { device_id: "dev-a", event_id: "dev-a-100" },
      { device_id: "dev-a", event_id: "dev-a-101" },
    ]);
    const rejected = await pool.query(
      "SELECT topic, client_id FROM telemetry_rejected WHERE reason = 'not_authorized' AND client_id = 'dev-a' ORDER BY id",
    );
    expect(rejected.rows).toEqual([
      { topic: "telemetry/victim/env", client_id: "dev-a" },
      { topic: "commands/dev-b/reboot", client_id: "dev-a" },
    ]);
    expect(seen).toEqual(["telemetry/dev-a/env", "telemetry/dev-a/env"]);
    const metrics = await (await fetch(`http://127.0.0.1:${service.httpPort}/metrics`)).text();
    expect(metrics).toMatch(/telemetry_bridge_rejected_total\{reason="not_authorized"\} 2/);
    await Promise.all([tap.endAsync(), attacker.endAsync()]);
  });

  it("grants each role its subscriptions and refuses the rest with SUBACK 0x80", async () => {
    const granted = async (id: string, filters: string[], clientId = id) => {
      const client = await login(id, { clientId });
      const codes = await subackCodes(client, filters);
      await client.endAsync();
      return codes;
    };
    expect(
      await granted("dev-a", ["commands/dev-a/#", "commands/dev-b/#", "telemetry/#", "#"]),
    ).toEqual([1, 128, 128, 128]);
    expect(
      await granted(
        "reader-1",
        ["telemetry/#", "telemetry/+/env", "#", "commands/dev-a/#", "$SYS/#"],
        "r",
      ),
    ).toEqual([1, 1, 128, 128, 128]);
    expect(await granted("admin-1", ["#", "commands/dev-a/#", "$SYS/#"], "a")).toEqual([1, 1, 1]);
    const metrics = await (await fetch(`http://127.0.0.1:${service.httpPort}/metrics`)).text();
    expect(metrics).toMatch(/^telemetry_bridge_subscriptions_denied_total 6$/m);
  });

  it("lets a reader publish nothing, and an admin publish for any device", async () => {
    const reader = await login("reader-1", { clientId: "pub" });
    await publishAcked(reader, "telemetry/dev-b/env", reading("dev-b", 500));
    const admin = await login("admin-1", { clientId: "replay" });
    await publishAcked(admin, "telemetry/dev-b/env", reading("dev-b", 501));
    await Promise.all([reader.endAsync(), admin.endAsync()]);
    const { rows } = await pool.query(
      "SELECT event_id FROM telemetry WHERE event_id IN ('dev-b-500', 'dev-b-501')",
    );
    expect(rows).toEqual([{ event_id: "dev-b-501" }]);
    expect(
      await count(
        pool,
        "SELECT count(*) AS n FROM telemetry_rejected WHERE client_id = 'reader-1:pub'",
      ),
    ).toBe(1);
  });

  it("applies extra rules: deny before allow, placeholders filled with the identity", async () => {
    await identity("dev-c");
    await store.addRule("dev-c", { permission: "allow", action: "publish", pattern: "status/%u" });
    await store.addRule("dev-c", {
      permission: "allow",
      action: "subscribe",
      pattern: "firmware/#",
    });
    await store.addRule("dev-c", {
      permission: "deny",
      action: "subscribe",
      pattern: "firmware/beta/#",
    });
    await store.addRule("dev-c", {
      permission: "deny",
      action: "publish",
      pattern: "telemetry/%u/secret",
    });
    const device = await login("dev-c");
    expect(
      await subackCodes(device, ["firmware/stable/#", "firmware/#", "firmware/beta/x"]),
    ).toEqual([1, 128, 128]);
    const watcher = await login("admin-1", { clientId: "status-watch" });
    await watcher.subscribeAsync("status/#", { qos: 1 });
    const status = nextMessage(watcher);
    await publishAcked(device, "status/dev-c", "online");
    expect((await status).topic).toBe("status/dev-c");
    await publishAcked(device, "status/dev-a", "spoof");
    await publishAcked(device, "telemetry/dev-c/secret", reading("dev-c", 1));
    await publishAcked(device, "telemetry/dev-c/env", reading("dev-c", 2));
    await Promise.all([device.endAsync(), watcher.endAsync()]);
    const { rows } = await pool.query(
      "SELECT topic FROM telemetry_rejected WHERE client_id = 'dev-c' ORDER BY id",
    );
    expect(rows).toEqual([{ topic: "status/dev-a" }, { topic: "telemetry/dev-c/secret" }]);
    expect(await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'dev-c'")).toBe(
      1,
    );
  });

  it("disconnects a client that keeps publishing where it may not", async () => {
    const device = await login("dev-b");
    const gone = closed(device);
    for (let n = 0; n < 20; n++)
      device.publish(`telemetry/other-${n}/env`, reading("x", n), { qos: 1 });
    await gone;
    device.end(true);
    // The ten before the limit were acknowledged as committed dead letters; the rest were not.
    const recorded = await until(
      () =>
        count(
          pool,
          "SELECT count(*) AS n FROM telemetry_rejected WHERE client_id = 'dev-b' AND topic LIKE 'telemetry/other-%'",
        ),
      (n) => n >= 10,
    );
    expect(recorded).toBe(10);
  });
});

/** The CONNACK code a login from `localAddress` gets. */
async function loginFrom(localAddress: string, id: string, secret: string) {
  const { code, socket } = await rawConnect({
    port: service.mqttPort,
    localAddress,
    clientId: id,
    username: id,
    password: secret,
  });
  socket.destroy();
  return code;
}

describe("failed-login throttling", () => {
  it("refuses a guesser without slowing other devices, and keeps a cached device's way in", async () => {
    await Promise.all([identity("dev-t"), identity("dev-u"), identity("dev-v")]);
    // dev-t logs in once: its secret is now cached.
    await (await login("dev-t")).endAsync();
    const started = performance.now();
    const guesses: (number | undefined)[] = [];
    for (let n = 0; n < 40; n++) {
      guesses.push(await loginFrom("127.0.0.2", "dev-t", `guess-${n}`));
    }
    const guessing = performance.now() - started;
    expect(guesses.slice(0, 10).every((code) => code === 4)).toBe(true);
    // Past the limit the guesser is refused without a hash being computed.
    expect(guesses.slice(10).every((code) => code === 5)).toBe(true);
    expect(guessing).toBeLessThan(10_000);
    // Another address and another device are not affected, nor is dev-t with its real secret.
    const before = performance.now();
    expect(await loginFrom("127.0.0.3", "dev-u", secrets.get("dev-u") as string)).toBe(0);
    expect(await loginFrom("127.0.0.3", "dev-t", secrets.get("dev-t") as string)).toBe(0);
    expect(performance.now() - before).toBeLessThan(1000);
    // The guessing address is still refused, even with a real secret that was never verified.
    expect(await loginFrom("127.0.0.2", "dev-v", secrets.get("dev-v") as string)).toBe(5);
  });
});

describe("closed by default", () => {
  it("refuses anonymous clients on a service that listens beyond loopback, unless ALLOW_ANONYMOUS=true", async () => {
    const open = await startTestService(db.url, { MQTT_HOST: "0.0.0.0" });
    try {
      expect(open.anonymous).toBe(false);
      expect(await refusedWith(open.mqttPort, { clientId: "anon" })).toBe(5);
    } finally {
      await open.close();
    }
    const deliberate = await startTestService(db.url, {
      MQTT_HOST: "0.0.0.0",
      ALLOW_ANONYMOUS: "true",
    });
    try {
      const client = await connectDevice(deliberate.mqttPort, "anon");
      await publishAcked(client, "telemetry/anon/env", reading("anon", 1));
      // Even then, an anonymous client may not use an identity's client id.
      expect(await refusedWith(deliberate.mqttPort, { clientId: "dev-a" })).toBe(2);
      await client.endAsync();
    } finally {
      await deliberate.close();
    }
    const loopback = await startTestService(db.url);
    try {
      expect(loopback.anonymous).toBe(true);
      const client = await connectDevice(loopback.mqttPort, "anon-local");
      await client.endAsync();
    } finally {
      await loopback.close();
    }
  });
});

describe("the broker's own guard", () => {
  it("still disconnects an admin publishing to $SYS/", async () => {
    const admin = await login("admin-1", { clientId: "sys" });
    const gone = closed(admin);
    admin.publish("$SYS/broker/fake", "x", { qos: 1 });
    await gone;
    admin.end(true);
  });
});
