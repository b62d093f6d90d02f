import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import type { Service } from "../../bin/service.ts";
import { freePort } from "../helpers/free-port.ts";
import { type ServiceProcess, spawnService, startTestService } from "../helpers/service.ts";
import { runSim } from "../helpers/sim.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("sim");
const empty = await createTestDatabase("sim_empty");
let service: Service | undefined;
const processes: ServiceProcess[] = [];
afterAll(async () => {
  await service?.close();
  for (const child of processes) child.child.kill("SIGKILL");
});

const ALL_FAULTS = [
  ...["--dup-rate", "0.05", "--bad-rate", "0.02", "--reconnect-rate", "0.01"],
  ...["--late-rate", "0.05", "--clock-skew", "120"],
];

function mosquittoAnswers(): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(1883, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

describe("npm run sim", () => {
  it("against our broker with every fault on, then --verify passes", async () => {
    service = await startTestService(db.url);
    const result = await runSim([
      ...["--url", `mqtt://127.0.0.1:${service.mqttPort}`, "--devices", "50", "--rate", "20"],
      ...["--duration", "4", "--inflight", "4", "--seed", "7", "--verify", db.url],
      ...ALL_FAULTS,
    ]);
    expect(result.code, result.stderr).toBe(0);
    const summary = result.summary;
    expect(summary?.verification?.pass).toBe(true);
    expect(summary?.uniqueEventsAcknowledged).toBe(summary?.uniqueEventsSent);
    expect(summary?.verification?.stored).toBe(summary?.uniqueEventsAcknowledged);
    for (const injected of [
      "duplicatesInjected",
      "badInjected",
      "lateInjected",
      "reconnects",
    ] as const) {
      expect(summary?.[injected], injected).toBeGreaterThan(0);
    }
    expect(summary?.verification?.rejected).toBeGreaterThanOrEqual(summary?.badAcknowledged ?? 1);
    await service.close();
    service = undefined;
  });

  it("fails verification when the database does not hold the run", async () => {
    service = await startTestService(db.url);
    const result = await runSim([
      ...[
        "--url",
        `mqtt://127.0.0.1:${service.mqttPort}`,
        "--devices",
        "3",
        "--count",
        "5",
        "--rate",
        "20",
      ],
      ...["--verify", empty.url],
    ]);
    expect(result.code).toBe(1);
    expect(result.summary?.verification).toMatchObject({
      pass: false,
      expected: 15,
      stored: 0,
      missing: 15,
    });
    await service.close();
    service = undefined;
  });

  it("passes --verify with reconnects while the service is restarted mid-run", async () => {
    const port = await freePort();
    const env = { DATABASE_URL: db.url, MQTT_PORT: String(port) };
    processes.push(await spawnService(env));
    const sim = runSim([
      ...[
        "--url",
        `mqtt://127.0.0.1:${port}`,
        "--devices",
        "30",
        "--rate",
        "10",
        "--duration",
        "6",
      ],
      ...[
        "--dup-rate",
        "0.05",
        "--bad-rate",
        "0.02",
        "--reconnect-rate",
        "0.01",
        "--verify",
        db.url,
        "--run-id",
        "restart",
      ],
    ]);
    // Restart only once the fleet is publishing: a loaded machine may take seconds to start it.
    const pool = new pg.Pool({ connectionString: db.url });
    while (
      Number(
        (
          await pool.query(
            "SELECT count(*) AS n FROM telemetry WHERE device_id LIKE 'sim-restart-%'",
          )
        ).rows[0]?.n,
      ) < 30
    ) {
      await sleep(100);
    }
    await pool.end();
    const first = processes[0] as ServiceProcess;
    first.child.kill("SIGTERM");
    expect(await first.exited).toBe(0);
    processes.push(await spawnService(env));
    const result = await sim;
    expect(result.code, result.stderr).toBe(0);
    expect(result.summary?.verification?.pass).toBe(true);
    expect(result.summary?.reconnects).toBeGreaterThanOrEqual(30);
  });

  it("runs against Mosquitto too, when one answers on 127.0.0.1:1883", async (context) => {
    if (!(await mosquittoAnswers())) context.skip();
    const result = await runSim([
      ...["--url", "mqtt://127.0.0.1:1883", "--devices", "20", "--count", "20", "--rate", "20"],
      ...[
        "--topic-prefix",
        "telemetry-bridge-sim-test",
        "--dup-rate",
        "0.1",
        "--reconnect-rate",
        "0.02",
      ],
      ...["--bad-rate", "0.05"],
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.summary?.uniqueEventsAcknowledged).toBe(result.summary?.uniqueEventsSent);
    expect(result.summary?.messagesAcknowledged).toBe(result.summary?.messagesSent);
    expect(result.summary?.reconnects).toBeGreaterThan(0);
  });
});
