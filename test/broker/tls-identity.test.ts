import { spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IdentityStore } from "../../storage/identities.ts";
import { createCertificateAuthority, issueCertificate } from "../helpers/certificates.ts";
import { connackRefusal, reading } from "../helpers/device.ts";
import { runCommand } from "../helpers/run-command.ts";
import { type BrokeredService, startTestService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";
import { count } from "../helpers/writer.ts";

const db = await createTestDatabase("tls_identity");
const pool = new pg.Pool({ connectionString: db.url });
const store = new IdentityStore(pool);
const dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-tls-id-"));
const ca = await createCertificateAuthority(dir, "ca");
const otherCa = await createCertificateAuthority(dir, "other-ca");
const server = await issueCertificate(ca, dir, "server", "localhost", "server");
const deviceCert = await issueCertificate(ca, dir, "dev-tls", "dev-tls", "client");
const readerCert = await issueCertificate(ca, dir, "reader-tls", "reader-tls", "client");
const strangerCert = await issueCertificate(ca, dir, "stranger", "stranger", "client");
const forgedCert = await issueCertificate(otherCa, dir, "forged", "dev-tls", "client");
let service: BrokeredService;
let secret: string;

beforeAll(async () => {
  service = await startTestService(db.url, {
    ALLOW_ANONYMOUS: "false",
    MQTTS_PORT: "0",
    MQTT_WS_PORT: "0",
    TLS_CERT_FILE: server.certFile,
    TLS_KEY_FILE: server.keyFile,
    TLS_CA_FILE: ca.certFile,
  });
  await store.add(["dev-tls"], "device");
  await store.add(["reader-tls"], "reader");
  secret = (await store.add(["dev-pw"], "device")).get("dev-pw") as string;
});
afterAll(async () => {
  await service?.close();
  await pool.end();
  await fs.rm(dir, { recursive: true, force: true });
});

function pub(args: string[]) {
  return runCommand("mosquitto_pub", [
    ...["-h", "127.0.0.1", "-p", String(service.mqtt.tlsPort), "--cafile", ca.certFile, "-q", "1"],
    ...args,
  ]);
}

describe("identities over TLS", () => {
  it("takes a client certificate's CN as the identity, without a password", async () => {
    const tap = spawn("mosquitto_sub", [
      ...["-h", "127.0.0.1", "-p", String(service.mqtt.tlsPort), "--cafile", ca.certFile],
      ...["--cert", readerCert.certFile, "--key", readerCert.keyFile, "-i", "tap"],
      ...["-t", "telemetry/#", "-C", "1", "-v"],
    ]);
    const tapClosed = once(tap, "close");
    let out = "";
    tap.stdout.on("data", (chunk) => {
      out += chunk;
    });
    await once(service.mqtt.broker, "subscribe");
    const result = await pub([
      ...["--cert", deviceCert.certFile, "--key", deviceCert.keyFile, "-i", "dev-tls"],
      ...["-t", "telemetry/dev-tls/env", "-m", reading("dev-tls", 1)],
    ]);
    expect(result.code, result.stderr).toBe(0);
    const [code] = await tapClosed;
    expect(code).toBe(0);
    expect(out).toMatch(/^telemetry\/dev-tls\/env \{"event_id":"dev-tls-1"/);
    const { rows } = await pool.query(
      "SELECT device_id FROM telemetry WHERE event_id = 'dev-tls-1'",
    );
    expect(rows).toEqual([{ device_id: "dev-tls" }]);
  });

  it("refuses a certificate that is no identity's, or from another CA, or of a disabled identity", async () => {
    const stranger = await pub([
      ...["--cert", strangerCert.certFile, "--key", strangerCert.keyFile, "-i", "stranger"],
      ...["-t", "telemetry/stranger/env", "-m", reading("stranger", 1)],
    ]);
    expect(stranger.code).not.toBe(0);
    const forged = await pub([
      ...["--cert", forgedCert.certFile, "--key", forgedCert.keyFile, "-i", "dev-tls"],
      ...["-t", "telemetry/dev-tls/env", "-m", reading("dev-tls", 2)],
    ]);
    expect(forged.code).not.toBe(0);
    await store.setEnabled("dev-tls", false);
    const disabled = await pub([
      ...["--cert", deviceCert.certFile, "--key", deviceCert.keyFile, "-i", "dev-tls"],
      ...["-t", "telemetry/dev-tls/env", "-m", reading("dev-tls", 3)],
    ]);
    await store.setEnabled("dev-tls", true);
    expect(disabled.code).not.toBe(0);
    expect(
      await count(
        pool,
        "SELECT count(*) AS n FROM telemetry WHERE device_id IN ('dev-tls', 'stranger') AND event_id <> 'dev-tls-1'",
      ),
    ).toBe(0);
  });

  it("takes a password over TLS and over WSS, and still checks the ACL", async () => {
    const ok = await pub([
      ...["-u", "dev-pw", "-P", secret, "-i", "dev-pw"],
      ...["-t", "telemetry/dev-pw/env", "-m", reading("dev-pw", 1)],
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    const ws = await mqtt.connectAsync(`wss://127.0.0.1:${service.mqtt.wsPort}/mqtt`, {
      ca: await fs.readFile(ca.certFile),
      clientId: "dev-pw",
      username: "dev-pw",
      password: secret,
      protocolVersion: 4,
      reconnectPeriod: 0,
    });
    await ws.publishAsync("telemetry/dev-pw/env", reading("dev-pw", 2), { qos: 1 });
    await ws.publishAsync("telemetry/dev-tls/env", reading("dev-tls", 9), { qos: 1 });
    await ws.endAsync();
    const { rows } = await pool.query(
      "SELECT device_id, event_id FROM telemetry WHERE event_id IN ('dev-pw-1', 'dev-pw-2', 'dev-tls-9') ORDER BY event_id",
    );
    expect(rows).toEqual([
      { device_id: "dev-pw", event_id: "dev-pw-1" },
      { device_id: "dev-pw", event_id: "dev-pw-2" },
    ]);
    const anonymous = await connackRefusal(`wss://127.0.0.1:${service.mqtt.wsPort}/mqtt`, {
      ca: await fs.readFile(ca.certFile),
      clientId: "anon",
    });
    expect(anonymous).toBe(5);
  });
});
