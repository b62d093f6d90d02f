import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Service } from "../../bin/service.ts";
import { IdentityStore } from "../../storage/identities.ts";
import { startTestService } from "../helpers/service.ts";
import { runSim } from "../helpers/sim.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("sim_credentials");
const pool = new pg.Pool({ connectionString: db.url });
const store = new IdentityStore(pool);
const dir = await fs.mkdtemp(path.join(os.tmpdir(), "sim-credentials-"));
let service: Service;
let url: string;

/** A fleet file as `npm run devices -- add --count` writes it. */
async function fleetFile(name: string, secrets: Map<string, string>): Promise<string> {
  const file = path.join(dir, name);
  const lines = [...secrets].map(([id, secret]) => `${id}:${secret}\n`);
  await fs.writeFile(file, lines.join(""), { mode: 0o600 });
  return file;
}

beforeAll(async () => {
  service = await startTestService(db.url, { ALLOW_ANONYMOUS: "false" });
  url = `mqtt://127.0.0.1:${service.mqttPort}`;
});
afterAll(async () => {
  await service?.close();
  await pool.end();
  await fs.rm(dir, { recursive: true, force: true });
});

describe("npm run sim with identities", () => {
  it("runs a fleet from --credentials against a service that requires them, twice, and --verify checks each run alone", async () => {
    const ids = Array.from({ length: 20 }, (_, n) => `sim-fleet-${n + 1}`);
    const file = await fleetFile("fleet.txt", await store.add(ids, "device"));
    const load = [...["--url", url, "--credentials", file, "--rate", "20", "--inflight", "2"]];
    const faults = ["--dup-rate", "0.05", "--bad-rate", "0.03", "--verify", db.url];

    const first = await runSim([...load, ...faults, "--duration", "3", "--seed", "1"]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.summary?.devices).toBe(20);
    expect(first.summary?.verification).toMatchObject({ pass: true, missing: 0, duplicated: 0 });
    expect(first.summary?.verification?.stored).toBe(first.summary?.uniqueEventsAcknowledged);
    expect(first.summary?.duplicatesInjected).toBeGreaterThan(0);
    expect(first.summary?.badAcknowledged).toBeGreaterThan(0);
    expect(first.summary?.verification?.rejected).toBe(first.summary?.badAcknowledged);
    const { rows } = await pool.query<{ device_id: string }>(
      "SELECT DISTINCT device_id FROM telemetry ORDER BY device_id",
    );
    expect(rows.map((row) => row.device_id)).toEqual([...ids].sort());

    // The same identities again: the first run's rows and dead letters are not this run's.
    const second = await runSim([...load, ...faults, "--duration", "1", "--seed", "2"]);
    expect(second.code, second.stderr).toBe(0);
    expect(second.summary?.verification?.pass).toBe(true);
    expect(second.summary?.verification?.stored).toBe(second.summary?.uniqueEventsAcknowledged);
    expect(second.summary?.verification?.rejected).toBe(second.summary?.badAcknowledged);
  });

  it("names the device and the CONNACK code when a secret is wrong, and exits 2", async () => {
    const ids = ["sim-wrong-1", "sim-wrong-2", "sim-wrong-3"];
    const secrets = await store.add(ids, "device");
    secrets.set("sim-wrong-3", "not-its-secret");
    const file = await fleetFile("wrong.txt", secrets);
    const result = await runSim(["--url", url, "--credentials", file, "--duration", "2"]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(
      /the broker refused device sim-wrong-3: CONNACK 4, bad user name or password; its secret in --credentials is not the identity's/,
    );
    expect(result.summary).toBeUndefined();
  });

  it("says that the broker requires credentials when none are given", async () => {
    const result = await runSim(["--url", url, "--devices", "2", "--duration", "1"]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(
      /CONNACK 5, not authorized; the broker requires credentials: --credentials FILE, or --username and --password/,
    );
  });

  it("logs every device in as one admin with --username, and one device as itself", async () => {
    const admin = await store.add(["sim-ops"], "admin");
    const asAdmin = await runSim([
      ...["--url", url, "--username", "sim-ops", "--password", admin.get("sim-ops") as string],
      ...["--devices", "3", "--count", "20", "--rate", "20", "--bad-rate", "0.1"],
      ...["--run-id", "ops", "--seed", "3", "--verify", db.url],
    ]);
    expect(asAdmin.code, asAdmin.stderr).toBe(0);
    expect(asAdmin.summary?.verification).toMatchObject({ pass: true, expected: 60, stored: 60 });
    expect(asAdmin.summary?.badAcknowledged).toBeGreaterThan(0);
    expect(asAdmin.summary?.verification?.rejected).toBe(asAdmin.summary?.badAcknowledged);

    const device = await store.add(["sim-single"], "device");
    const login = ["--username", "sim-single", "--password", device.get("sim-single") as string];
    const single = await runSim([
      ...["--url", url, ...login, "--devices", "1", "--count", "10", "--rate", "20"],
    ]);
    expect(single.code, single.stderr).toBe(0);
    const { rows } = await pool.query(
      "SELECT count(*)::int AS n FROM telemetry WHERE device_id = 'sim-single'",
    );
    expect(rows[0]?.n).toBe(10);

    const several = await runSim([...["--url", url, ...login, "--devices", "2", "--count", "1"]]);
    expect(several.code).toBe(2);
    expect(several.stderr).toMatch(
      /CONNACK 2, identifier rejected; a device identity connects only as itself, on one connection: use --devices 1, or an admin identity/,
    );
  });
});
