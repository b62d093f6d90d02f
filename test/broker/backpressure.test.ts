import fs from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { type Database, startEmbedded } from "../../bridge/database.ts";
import { Stream } from "../helpers/device.ts";
import { startTestServer } from "../helpers/embedded-server.ts";
import { freePort } from "../helpers/free-port.ts";
import { type ServiceProcess, spawnService } from "../helpers/service.ts";
import { silentLogger } from "../helpers/test-database.ts";

const DEVICES = 1000;
const OUTAGE_MS = 60_000;

const server = await startTestServer();
let restarted: Database | undefined;
let service: ServiceProcess | undefined;
afterAll(async () => {
  service?.child.kill("SIGKILL");
  await restarted?.stop();
  await server.destroy();
});

async function rssMiB(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]) / 1024;
}

describe(`${DEVICES} devices while PostgreSQL is down for ${OUTAGE_MS / 1000} s`, () => {
  it("keeps the service's memory bounded and resumes by itself", { timeout: 240_000 }, async () => {
    const port = await freePort();
    service = await spawnService({ DATABASE_URL: server.url, MQTT_PORT: String(port) });
    const pid = service.child.pid as number;
    const devices = Array.from({ length: DEVICES }, (_, d) =>
      mqtt.connect(`mqtt://127.0.0.1:${port}`, {
        clientId: `bp-${d}`,
        clean: false,
        protocolVersion: 4,
        keepalive: 30,
        reconnectPeriod: 1000,
      }),
    );
    // Each device samples every 500 ms and keeps one message in flight.
    const streams = devices.map((device, d) => new Stream(device, `bp-${d}`, 20, 1, 500));
    const done = Promise.all(streams.map((stream) => stream.run()));
    const acked = () => streams.reduce((sum, stream) => sum + stream.acked.size, 0);

    while (acked() < 2 * DEVICES) await sleep(50);
    const before = await rssMiB(pid);
    await server.stop();
    const down = Date.now();
    let peak = before;
    while (Date.now() - down < OUTAGE_MS) {
      await sleep(1000);
      peak = Math.max(peak, await rssMiB(pid));
    }
    const ackedWhileDown = streams.reduce(
      (sum, stream) => sum + [...stream.acked.values()].filter((at) => at > down).length,
      0,
    );
    restarted = await startEmbedded({
      dataDir: server.dataDir,
      port: server.port,
      logger: silentLogger,
    });
    await done;
    await Promise.all(devices.map((device) => device.endAsync()));

    console.info(
      `${DEVICES} devices, PostgreSQL down ${OUTAGE_MS / 1000} s: service RSS ${before.toFixed(0)} MiB before, ` +
        `${peak.toFixed(0)} MiB at most while down; ${acked()} messages acknowledged in all, each stored once`,
    );
    expect(ackedWhileDown).toBe(0);
    expect(
      peak - before,
      `RSS ${before.toFixed(0)} MiB before, ${peak.toFixed(0)} MiB at most while down`,
    ).toBeLessThan(64);
    const pool = new pg.Pool({ connectionString: restarted.url });
    const { rows } = await pool.query<{ n: string; ids: string }>(
      "SELECT count(*) AS n, count(DISTINCT (topic, event_id)) AS ids FROM telemetry",
    );
    await pool.end();
    expect(rows[0]).toEqual({ n: String(DEVICES * 20), ids: String(DEVICES * 20) });
    service.child.kill("SIGTERM");
    expect(await service.exited).toBe(0);
  });
});
