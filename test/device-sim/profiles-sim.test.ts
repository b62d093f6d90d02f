import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import type { Service } from "../../bin/service.ts";
import { IdentityStore } from "../../storage/identities.ts";
import { startTestService } from "../helpers/service.ts";
import { runSim } from "../helpers/sim.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("sim_profiles");
const pool = new pg.Pool({ connectionString: db.url });
let service: Service | undefined;
afterAll(async () => {
  await service?.close();
  await pool.end();
});

/**
 * Each profile with a short load and the faults that make sense for it, and
 * the device_id the service stores device `sim-<profile>-<n>` under.
 */
const RUNS: { profile: string; mappingsFile: string; args: string[]; storedAs: string }[] = [
  {
    profile: "zigbee2mqtt",
    mappingsFile: "mappings/zigbee2mqtt.yaml",
    args: ["--devices", "5", "--rate", "20", "--count", "12", "--inflight", "2"],
    storedAs: "sim-zigbee2mqtt-<n>",
  },
  {
    profile: "tasmota",
    mappingsFile: "mappings/tasmota.yaml",
    args: ["--devices", "30", "--rate", "1", "--count", "2", "--clock-skew", "120"],
    storedAs: "sim-tasmota-<n>",
  },
  {
    profile: "shelly",
    mappingsFile: "mappings/shelly.yaml",
    args: ["--devices", "5", "--rate", "20", "--count", "12", "--inflight", "4"],
    storedAs: "sim-shelly-<n>",
  },
  {
    profile: "homeassistant",
    mappingsFile: "mappings/homeassistant-statestream.yaml",
    args: ["--devices", "5", "--rate", "20", "--count", "12"],
    storedAs: "sensor.sim-homeassistant-<n>",
  },
  {
    profile: "owntracks",
    mappingsFile: "mappings/owntracks.yaml",
    args: ["--devices", "30", "--rate", "1", "--count", "2", "--late-rate", "0.2"],
    storedAs: "sim/sim-owntracks-<n>",
  },
  {
    profile: "sparkplug-b",
    mappingsFile: "mappings/sparkplug-b.yaml",
    args: ["--devices", "5", "--rate", "20", "--count", "15", "--clock-skew", "60"],
    storedAs: "sim-sparkplug-b-<n>/sensor",
  },
];

describe("npm run sim --profile", () => {
  for (const { profile, mappingsFile, args, storedAs } of RUNS) {
    it(`${profile}: against a service reading ${mappingsFile}, with its faults on, then --verify passes`, async () => {
      service = await startTestService(db.url, { MAPPINGS_FILE: mappingsFile });
      const atLeastOnce = profile === "zigbee2mqtt" || profile === "homeassistant";
      const result = await runSim([
        ...["--url", `mqtt://127.0.0.1:${service.mqttPort}`, "--profile", profile, ...args],
        ...["--dup-rate", "0.2", "--reconnect-rate", "0.05", "--seed", "11", "--run-id", profile],
        ...(profile === "homeassistant" ? [] : ["--bad-rate", "0.1"]),
        ...["--verify", db.url],
      ]);
      await service.close();
      service = undefined;
      expect(result.code, result.stderr).toBe(0);
      expect(result.stderr).toContain(`MAPPINGS_FILE=${mappingsFile}`);
      const summary = result.summary;
      expect(summary?.profile).toMatchObject({ name: profile, mappingsFile });
      expect(summary?.verification?.pass, JSON.stringify(summary?.verification)).toBe(true);
      expect(summary?.uniqueEventsAcknowledged).toBe(summary?.uniqueEventsSent);
      expect(summary?.verification?.expected).toBe(summary?.uniqueEventsAcknowledged);
      expect(summary?.verification?.missing).toBe(0);
      expect(summary?.duplicatesInjected).toBeGreaterThan(0);
      expect(summary?.reconnects).toBeGreaterThan(0);
      if (atLeastOnce) {
        // An application's resend is stored again, and so may be a redelivery.
        expect(summary?.verification?.duplicated).toBeGreaterThanOrEqual(
          summary?.duplicatesInjected ?? 1,
        );
      } else {
        expect(summary?.verification?.duplicated).toBe(0);
        expect(summary?.verification?.stored).toBe(summary?.uniqueEventsAcknowledged);
      }
      if (profile !== "homeassistant") {
        expect(summary?.badAcknowledged).toBeGreaterThan(0);
        // A malformed message resent after a dropped connection counts again.
        expect(summary?.verification?.rejected).toBeGreaterThanOrEqual(
          summary?.badAcknowledged ?? 1,
        );
      }
      if (profile === "owntracks") expect(summary?.lateInjected).toBeGreaterThan(0);
      const devices = Array.from({ length: summary?.devices ?? 0 }, (_, n) =>
        storedAs.replace("<n>", String(n)),
      );
      const { rows } = await pool.query<{ device_id: string }>(
        "SELECT DISTINCT device_id FROM telemetry WHERE device_id = ANY($1)",
        [devices],
      );
      expect(rows.map((row) => row.device_id).sort()).toEqual(devices.sort());
    });
  }

  it("owntracks with identities: a device identity's locations are refused, a gateway's for its phones stored", async () => {
    const store = new IdentityStore(pool);
    const phone = await store.add(["sim-phone"], "device");
    const alice = await store.add(["sim-alice"], "gateway");
    await store.addRule("sim-alice", {
      permission: "allow",
      action: "publish",
      pattern: "owntracks/%u/#",
    });
    service = await startTestService(db.url, {
      MAPPINGS_FILE: "mappings/owntracks.yaml",
      ALLOW_ANONYMOUS: "false",
    });
    const load = [
      ...["--url", `mqtt://127.0.0.1:${service.mqttPort}`, "--profile", "owntracks"],
      ...["--count", "2", "--rate", "1", "--verify", db.url],
    ];
    const [asDevice, asGateway] = await Promise.all([
      runSim([
        ...load,
        ...["--username", "sim-phone", "--password", phone.get("sim-phone") as string],
        ...["--devices", "1"],
      ]),
      runSim([
        ...load,
        ...["--username", "sim-alice", "--password", alice.get("sim-alice") as string],
        ...["--devices", "3", "--run-id", "gw"],
      ]),
    ]);
    await service.close();
    service = undefined;

    expect(asDevice.code).toBe(1);
    expect(asDevice.stderr).toContain(
      "warning: mappings/owntracks.yaml stores sim-phone's messages as device sim-phone/sim-phone, for which a device identity may not publish",
    );
    expect(asDevice.summary?.verification?.problems).toContainEqual(
      expect.stringMatching(/^2 refused as not_authorized: a device identity publishes only as/),
    );

    expect(asGateway.code, asGateway.stderr).toBe(0);
    expect(asGateway.stderr).not.toContain("warning");
    expect(asGateway.summary?.verification).toMatchObject({ pass: true, expected: 6, stored: 6 });
    const { rows } = await pool.query<{ device_id: string }>(
      "SELECT DISTINCT device_id FROM telemetry WHERE topic LIKE 'owntracks/sim-alice/%' ORDER BY 1",
    );
    expect(rows.map((row) => row.device_id)).toEqual([
      "sim-alice/sim-gw-0",
      "sim-alice/sim-gw-1",
      "sim-alice/sim-gw-2",
    ]);
  });

  it("fails --verify, naming the mapping file, where the service does not read it", async () => {
    service = await startTestService(db.url);
    const result = await runSim([
      ...["--url", `mqtt://127.0.0.1:${service.mqttPort}`, "--profile", "tasmota"],
      ...["--devices", "2", "--count", "2", "--rate", "1", "--verify", db.url],
    ]);
    await service.close();
    service = undefined;
    expect(result.code).toBe(1);
    expect(result.summary?.verification).toMatchObject({ pass: false, expected: 4, missing: 4 });
    expect(result.summary?.verification?.problems).toContain(
      "nothing of the run is stored: is the service reading MAPPINGS_FILE=mappings/tasmota.yaml?",
    );
  });
});
