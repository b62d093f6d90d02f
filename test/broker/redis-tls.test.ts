import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createCertificateAuthority,
  issueCertificate,
  type KeyPair,
} from "../helpers/certificates.ts";
import { reading } from "../helpers/device.ts";
import { installed } from "../helpers/installed.ts";
import { type RedisServer, startRedis } from "../helpers/redis.ts";
import { portsOf, type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("redis_tls");
const pool = new pg.Pool({ connectionString: db.url });
const PASSWORD = "redis-s3cret";
let dir: string;
let ca: KeyPair;
let redis: RedisServer;
const running: ServiceProcess[] = [];
const clients: mqtt.MqttClient[] = [];

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-redis-tls-"));
  ca = await createCertificateAuthority(dir, "redis-ca");
  const certificate = await issueCertificate(ca, dir, "redis", "localhost", "server");
  redis = await startRedis({ tls: certificate, password: PASSWORD });
});

afterAll(async () => {
  for (const client of clients) client.end(true);
  for (const service of running) service.child.kill("SIGKILL");
  await redis?.close();
  await pool.end();
  await fs.rm(dir, { recursive: true, force: true });
});

/** A service on REDIS_URL `url`; resolves with its MQTT port, or rejects with its output. */
async function spawn(url: string, env: Record<string, string> = {}) {
  const service = await spawnService({
    DATABASE_URL: db.url,
    MQTT_PORT: "0",
    REDIS_URL: url,
    BATCH_MAX_WAIT_MS: "5",
    ...env,
  });
  running.push(service);
  return { service, port: portsOf(service).mqtt };
}

/** Why a service on REDIS_URL `url` did not start: its output. */
function failure(url: string, env: Record<string, string> = {}): Promise<string> {
  return spawn(url, env).then(
    () => "started",
    (error: Error) => error.message,
  );
}

async function connect(port: number, clientId: string): Promise<mqtt.MqttClient> {
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { clientId });
  clients.push(client);
  return client;
}

describe.skipIf(!installed("redis-server", "the Redis TLS tests"))(
  "REDIS_URL over TLS (rediss://) with a password",
  () => {
    it("shares live messages between two processes, trusting Redis' CA through NODE_EXTRA_CA_CERTS, and never logs the password", async () => {
      expect(redis.url).toMatch(/^rediss:\/\/:redis-s3cret@127\.0\.0\.1:\d+$/);
      const trusting = { NODE_EXTRA_CA_CERTS: ca.certFile };
      const [a, b] = await Promise.all([spawn(redis.url, trusting), spawn(redis.url, trusting)]);
      const tap = await connect(b.port, "tls-tap");
      const tapped: string[] = [];
      tap.on("message", (_topic, payload) => tapped.push(JSON.parse(payload.toString()).event_id));
      await tap.subscribeAsync("telemetry/#", { qos: 0 });
      const device = await connect(a.port, "dev-tls");
      for (let n = 1; n <= 5; n++) {
        await device.publishAsync("telemetry/dev-tls/env", reading("dev-tls", n), { qos: 1 });
      }
      for (let waited = 0; tapped.length < 5 && waited < 10_000; waited += 20) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const expected = ["dev-tls-1", "dev-tls-2", "dev-tls-3", "dev-tls-4", "dev-tls-5"];
      expect(tapped.sort()).toEqual(expected);
      const { rows } = await pool.query<{ event_id: string }>(
        "SELECT event_id FROM telemetry WHERE device_id = 'dev-tls' ORDER BY event_id",
      );
      expect(rows.map((row) => row.event_id)).toEqual(expected);
      for (const { service } of [a, b]) {
        expect(service.output.join("\n")).not.toContain(PASSWORD);
      }
    });

    it("does not start, in one line without the password, with a wrong password or an unknown CA", async () => {
      const wrong = redis.url.replace(PASSWORD, "guessed-password");
      const refused = await failure(wrong, { NODE_EXTRA_CA_CERTS: ca.certFile });
      expect(refused).toMatch(/^service exited \(1\) before ready:\n/);
      expect(refused).toMatch(
        /^cannot reach Redis at rediss:\/\/.*\(REDIS_URL\): WRONGPASS.*\. Correct the password in REDIS_URL /m,
      );
      expect(refused).not.toContain("guessed-password");

      const untrusted = await failure(redis.url);
      expect(untrusted).toMatch(
        /^cannot reach Redis at rediss:\/\/.*\(REDIS_URL\): .*certificate.*\. Trust the CA that signed Redis' certificate with NODE_EXTRA_CA_CERTS=/m,
      );
      expect(untrusted).not.toContain(PASSWORD);
    });
  },
);
