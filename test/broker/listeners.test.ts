import { once } from "node:events";
import fs from "node:fs/promises";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { mqttLimits } from "../../bin/service.ts";
import { loadConfig } from "../../bridge/config.ts";
import {
  type MqttServer,
  PortInUseError,
  peerCertificateId,
  remoteAddress,
  startMqttServer,
} from "../../broker/mqtt-server.ts";
import {
  createCertificateAuthority,
  issueCertificate,
  type KeyPair,
} from "../helpers/certificates.ts";
import { runCommand } from "../helpers/run-command.ts";
import { type BrokeredService, startTestService } from "../helpers/service.ts";
import { createTestDatabase, silentLogger } from "../helpers/test-database.ts";

const db = await createTestDatabase("listeners");
const pool = new pg.Pool({ connectionString: db.url });
const dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-tls-"));
const ca = await createCertificateAuthority(dir, "ca");
const otherCa = await createCertificateAuthority(dir, "other-ca");
const server = await issueCertificate(ca, dir, "server", "localhost", "server");
const client = await issueCertificate(ca, dir, "client", "dev-tls", "client");
const strangerClient = await issueCertificate(otherCa, dir, "stranger", "dev-tls", "client");
const caPem = await fs.readFile(ca.certFile);
const otherCaPem = await fs.readFile(otherCa.certFile);

afterAll(async () => {
  await pool.end();
  await fs.rm(dir, { recursive: true, force: true });
});

function tlsEnv(pair: KeyPair): Record<string, string> {
  return {
    MQTTS_PORT: "0",
    MQTT_WS_PORT: "0",
    TLS_CERT_FILE: pair.certFile,
    TLS_KEY_FILE: pair.keyFile,
    TLS_CA_FILE: ca.certFile,
  };
}

/** Connects once: rejects on an error or a close before CONNACK instead of retrying. */
function connect(
  url: string,
  clientId: string,
  options: mqtt.IClientOptions = {},
): Promise<mqtt.MqttClient> {
  return mqtt.connectAsync(
    url,
    { clientId, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...options },
    false,
  );
}

function event(eventId: string): string {
  return JSON.stringify({ event_id: eventId, ts: new Date().toISOString(), temperature: 21.5 });
}

async function storedDevice(eventId: string): Promise<string | undefined> {
  const { rows } = await pool.query<{ device_id: string }>(
    "SELECT device_id FROM telemetry WHERE event_id = $1",
    [eventId],
  );
  return rows[0]?.device_id;
}

function mosquittoPub(port: number, clientId: string, eventId: string, tlsArgs: string[]) {
  return runCommand("mosquitto_pub", [
    ...["-h", "127.0.0.1", "-p", String(port), "-i", clientId, "-q", "1", ...tlsArgs],
    ...["-t", `telemetry/${clientId}/env`, "-m", event(eventId)],
  ]);
}

/** Retries `attempt` until it succeeds or `ms` have passed. */
async function eventually<T>(attempt: () => Promise<T>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

describe("MQTT over TLS and WebSockets", () => {
  let service: BrokeredService;
  beforeAll(async () => {
    service = await startTestService(db.url, { BATCH_MAX_WAIT_MS: "5", ...tlsEnv(server) });
  });
  afterAll(() => service?.close());

  it("listens on its own ports next to plain TCP", () => {
    expect(service.mqtt.tlsPort).toBeGreaterThan(0);
    expect(service.mqtt.wsPort).toBeGreaterThan(0);
    expect(new Set([service.mqttPort, service.mqtt.tlsPort, service.mqtt.wsPort]).size).toBe(3);
  });

  it("stores what mosquitto_pub sends over TLS to a client that trusts the CA", async () => {
    const result = await mosquittoPub(service.mqtt.tlsPort ?? 0, "mosq-tls", "tls-1", [
      "--cafile",
      ca.certFile,
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(await storedDevice("tls-1")).toBe("mosq-tls");
  });

  it("stores what mqtt.js sends over mqtts://", async () => {
    const device = await connect(`mqtts://127.0.0.1:${service.mqtt.tlsPort}`, "mqttjs-tls", {
      ca: caPem,
    });
    await device.publishAsync("telemetry/mqttjs-tls/env", event("tls-2"), { qos: 1 });
    await device.endAsync();
    expect(await storedDevice("tls-2")).toBe("mqttjs-tls");
  });

  it("is refused by clients that do not trust its CA", async () => {
    const result = await mosquittoPub(service.mqtt.tlsPort ?? 0, "mosq-distrust", "tls-3", [
      "--cafile",
      otherCa.certFile,
    ]);
    expect(result.code).not.toBe(0);
    await expect(
      connect(`mqtts://127.0.0.1:${service.mqtt.tlsPort}`, "mqttjs-distrust"),
    ).rejects.toThrow(/certificate/);
    expect(await storedDevice("tls-3")).toBeUndefined();
  });

  it("does not speak plain MQTT on the TLS port", async () => {
    await expect(
      connect(`mqtt://127.0.0.1:${service.mqtt.tlsPort}`, "plain-on-tls"),
    ).rejects.toThrow();
  });

  it("stores what mqtt.js sends over wss:// on /mqtt", async () => {
    const device = await connect(`wss://127.0.0.1:${service.mqtt.wsPort}/mqtt`, "mqttjs-wss", {
      ca: caPem,
    });
    await device.publishAsync("telemetry/mqttjs-wss/env", event("wss-1"), { qos: 1 });
    await device.endAsync();
    expect(await storedDevice("wss-1")).toBe("mqttjs-wss");
  });

  it("takes WebSockets on /mqtt only, with the mqtt subprotocol", async () => {
    const url = (pathname: string) => `wss://127.0.0.1:${service.mqtt.wsPort}${pathname}`;
    const refused = new WebSocket(url("/other"), "mqtt", { ca: caPem });
    const [error] = await once(refused, "error");
    expect((error as Error).message).toMatch(/404/);

    const accepted = new WebSocket(url("/mqtt"), ["mqtt"], { ca: caPem });
    await once(accepted, "open");
    expect(accepted.protocol).toBe("mqtt");
    accepted.terminate();

    const status = (pathname: string) =>
      new Promise<number | undefined>((resolve, reject) => {
        https
          .get(`https://127.0.0.1:${service.mqtt.wsPort}${pathname}`, { ca: caPem }, (response) => {
            response.resume();
            resolve(response.statusCode);
          })
          .on("error", reject);
      });
    expect(await status("/mqtt")).toBe(426);
    expect(await status("/")).toBe(404);
  });

  it("names the variable of a TLS or WebSocket port already in use", async () => {
    const failure = await startTestService(db.url, {
      ...tlsEnv(server),
      MQTTS_PORT: String(service.mqtt.tlsPort),
    }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(PortInUseError);
    expect((failure as Error).message).toMatch(/set MQTTS_PORT to a free port/);
    await expect(
      startTestService(db.url, { ...tlsEnv(server), MQTT_WS_PORT: String(service.mqtt.wsPort) }),
    ).rejects.toThrow(/set MQTT_WS_PORT to a free port/);
  });

  it("stops accepting on every listener, and keeps the clients connected", async () => {
    const overWss = await connect(`wss://127.0.0.1:${service.mqtt.wsPort}/mqtt`, "stays-wss", {
      ca: caPem,
    });
    const overTls = await connect(`mqtts://127.0.0.1:${service.mqtt.tlsPort}`, "stays-tls", {
      ca: caPem,
    });
    service.mqtt.stopAccepting();
    expect(service.mqtt.listening).toBe(false);
    for (const url of [
      `mqtt://127.0.0.1:${service.mqttPort}`,
      `mqtts://127.0.0.1:${service.mqtt.tlsPort}`,
      `wss://127.0.0.1:${service.mqtt.wsPort}/mqtt`,
    ]) {
      await expect(connect(url, "late", { ca: caPem })).rejects.toThrow(/ECONNREFUSED/);
    }
    await overWss.publishAsync("telemetry/stays-wss/env", event("stays-1"), { qos: 1 });
    await overTls.publishAsync("telemetry/stays-tls/env", event("stays-2"), { qos: 1 });
    expect(await storedDevice("stays-1")).toBe("stays-wss");
    expect(await storedDevice("stays-2")).toBe("stays-tls");
    await Promise.all([overWss.endAsync(), overTls.endAsync()]);
  });
});

describe("MQTT over WebSockets without TLS", () => {
  let service: BrokeredService;
  beforeAll(async () => {
    service = await startTestService(db.url, { BATCH_MAX_WAIT_MS: "5", MQTT_WS_PORT: "0" });
  });
  afterAll(() => service?.close());

  it("stores what mqtt.js sends over ws:// on /mqtt", async () => {
    expect(service.mqtt.tlsPort).toBeUndefined();
    const device = await connect(`ws://127.0.0.1:${service.mqtt.wsPort}/mqtt`, "mqttjs-ws");
    await device.publishAsync("telemetry/mqttjs-ws/env", event("ws-1"), { qos: 1 });
    await device.endAsync();
    expect(await storedDevice("ws-1")).toBe("mqttjs-ws");
  });
});

describe("certificate reload", () => {
  const live = { certFile: path.join(dir, "live.pem"), keyFile: path.join(dir, "live-key.pem") };
  const tlsUrl = () => `mqtts://127.0.0.1:${service.mqtt.tlsPort}`;
  const wssUrl = () => `wss://127.0.0.1:${service.mqtt.wsPort}/mqtt`;
  let service: BrokeredService;
  let renewed: KeyPair;
  beforeAll(async () => {
    await fs.copyFile(server.certFile, live.certFile);
    await fs.copyFile(server.keyFile, live.keyFile);
    renewed = await issueCertificate(otherCa, dir, "renewed", "localhost", "server");
    service = await startTestService(db.url, tlsEnv(live));
  });
  afterAll(() => service?.close());

  /** Writes `pair` elsewhere and renames it over the live files, as certbot and editors do. */
  async function replaceLive(pair: KeyPair) {
    for (const [from, to] of [
      [pair.keyFile, live.keyFile],
      [pair.certFile, live.certFile],
    ] as const) {
      await fs.copyFile(from, `${to}.new`);
      await fs.rename(`${to}.new`, to);
    }
  }

  it("picks up replaced certificate files by itself, on TLS and WSS", async () => {
    const before = await connect(tlsUrl(), "before-reload", { ca: caPem });
    await before.endAsync();

    await replaceLive(renewed);
    for (const [url, clientId] of [
      [tlsUrl(), "after-reload-tls"],
      [wssUrl(), "after-reload-wss"],
    ] as const) {
      const device = await eventually(() => connect(url, clientId, { ca: otherCaPem }));
      await device.endAsync();
      await expect(connect(url, `${clientId}-old`, { ca: caPem })).rejects.toThrow(/certificate/);
    }
  });

  it("reloads on request, and keeps the current certificate when the files are unusable", async () => {
    await replaceLive(server);
    service.mqtt.reloadCertificates();
    const reloaded = await connect(tlsUrl(), "reloaded", { ca: caPem });
    await reloaded.endAsync();

    await fs.writeFile(live.certFile, "not a certificate");
    service.mqtt.reloadCertificates();
    const kept = await connect(tlsUrl(), "kept", { ca: caPem });
    await kept.endAsync();

    await replaceLive(renewed);
    await fs.copyFile(server.keyFile, live.keyFile);
    service.mqtt.reloadCertificates();
    const mismatched = await connect(wssUrl(), "mismatched", { ca: caPem });
    await mismatched.endAsync();
  });
});

describe("who a client is, as the authenticate hook sees it", () => {
  const seen = new Map<string, { certificateId: string | undefined; address: string }>();
  let broker: MqttServer;
  beforeAll(async () => {
    broker = await startMqttServer(
      {
        host: "127.0.0.1",
        port: 0,
        tls: { port: 0, certFile: server.certFile, keyFile: server.keyFile, caFile: ca.certFile },
        limits: mqttLimits(loadConfig({})),
        wsPort: 0,
      },
      {
        authenticate: (accepted, _username, _password, callback) => {
          seen.set(accepted.id, {
            certificateId: peerCertificateId(accepted),
            address: remoteAddress(accepted),
          });
          callback(null, true);
        },
      },
      silentLogger,
    );
  });
  afterAll(() => broker?.close());

  const certificate = async (pair: KeyPair) => ({
    cert: await fs.readFile(pair.certFile),
    key: await fs.readFile(pair.keyFile),
  });

  it("is the CN of a certificate signed by the CA, over TLS and WSS", async () => {
    const result = await mosquittoPub(broker.tlsPort ?? 0, "mosq-cert", "cert-1", [
      ...["--cafile", ca.certFile, "--cert", client.certFile, "--key", client.keyFile],
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(seen.get("mosq-cert")).toEqual({ certificateId: "dev-tls", address: "127.0.0.1" });

    for (const [url, clientId] of [
      [`mqtts://127.0.0.1:${broker.tlsPort}`, "mqttjs-cert"],
      [`wss://127.0.0.1:${broker.wsPort}/mqtt`, "wss-cert"],
    ] as const) {
      const device = await connect(url, clientId, { ca: caPem, ...(await certificate(client)) });
      await device.endAsync();
      expect(seen.get(clientId)).toEqual({ certificateId: "dev-tls", address: "127.0.0.1" });
    }
  });

  it("is nobody without a certificate, or with one another CA signed, and the client is let in", async () => {
    const connections = [
      [`mqtt://127.0.0.1:${broker.port}`, "plain", {}],
      [`mqtts://127.0.0.1:${broker.tlsPort}`, "no-cert", { ca: caPem }],
      [`wss://127.0.0.1:${broker.wsPort}/mqtt`, "wss-no-cert", { ca: caPem }],
      [
        `mqtts://127.0.0.1:${broker.tlsPort}`,
        "stranger",
        { ca: caPem, ...(await certificate(strangerClient)) },
      ],
    ] as const;
    for (const [url, clientId, options] of connections) {
      const device = await connect(url, clientId, options);
      await device.endAsync();
      expect(seen.get(clientId)).toEqual({ certificateId: undefined, address: "127.0.0.1" });
    }
  });
});
