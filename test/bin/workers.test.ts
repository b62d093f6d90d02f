import fs from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { createDataDir } from "../helpers/embedded-server.ts";
import { connectOutcome, freePort } from "../helpers/free-port.ts";
import { readyLine, type ServiceProcess, spawnService } from "../helpers/service.ts";

const dataDir = await createDataDir();
let started: ServiceProcess | undefined;
afterAll(async () => {
  started?.child.kill("SIGKILL");
  await fs.rm(dataDir, { recursive: true, force: true });
});

interface Stats {
  received: number;
  unique_processed: number;
  workers: { worker: number; pid: number; received: number }[];
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** `read` until `done`; a request cut by the worker being killed is tried again. */
async function eventually<T>(read: () => Promise<T>, done: (value: T) => boolean): Promise<T> {
  for (let waited = 0; ; waited += 100) {
    const value = await read().catch(() => undefined);
    if ((value !== undefined && done(value)) || waited > 20_000) return value as T;
    await sleep(100);
  }
}

describe("WORKERS=2", () => {
  it("runs two processes on the same ports over one embedded PostgreSQL, sums their figures, restarts one that dies, and stops on one signal", async () => {
    const [mqttPort, httpPort, pgPort] = [await freePort(), await freePort(), await freePort()];
    started = await spawnService({
      WORKERS: "2",
      MQTT_PORT: String(mqttPort),
      HTTP_PORT: String(httpPort),
      DATA_DIR: dataDir,
      PG_PORT: String(pgPort),
      BATCH_MAX_WAIT_MS: "5",
    });
    const service = started;
    expect(service.output.filter((line) => line.includes('"msg":"ready"'))).toHaveLength(1);
    const stats = async () =>
      (await (await fetch(`http://127.0.0.1:${httpPort}/stats`)).json()) as Stats;

    const devices = await Promise.all(
      Array.from({ length: 20 }, (_, d) =>
        mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { clientId: `worker-dev-${d}` }),
      ),
    );
    await Promise.all(
      devices.map(async (device, d) => {
        for (let n = 0; n < 25; n++) {
          await device.publishAsync(
            `telemetry/worker-dev-${d}/env`,
            JSON.stringify({ event_id: `w-${d}-${n}`, ts: Date.now(), t: n }),
            { qos: 1 },
          );
        }
      }),
    );
    await Promise.all(devices.map((device) => device.endAsync()));

    const summed = await stats();
    expect(summed.received).toBe(500);
    expect(summed.unique_processed).toBe(500);
    expect(summed.workers).toHaveLength(2);
    const [first, second] = summed.workers;
    expect(new Set(summed.workers.map((worker) => worker.pid)).size).toBe(2);
    expect(first?.received).toBeGreaterThan(0);
    expect(second?.received).toBeGreaterThan(0);
    expect((first?.received ?? 0) + (second?.received ?? 0)).toBe(500);
    expect(summed.workers.map((worker) => worker.worker)).toEqual([1, 2]);
    const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    expect(metrics).toMatch(/^telemetry_bridge_received_total 500$/m);
    const byWorker = await (await fetch(`http://127.0.0.1:${httpPort}/metrics/workers`)).text();
    for (const worker of summed.workers) {
      expect(byWorker).toContain(
        `telemetry_bridge_received_total{worker="${worker.worker}"} ${worker.received}`,
      );
      expect(byWorker).toMatch(
        new RegExp(
          `^telemetry_bridge_batch_size_bucket\\{le="\\+Inf",worker="${worker.worker}"\\} \\d+$`,
          "m",
        ),
      );
    }
    // A figure of the shared table, not of a worker: not added up.
    const partitions = (text: string) =>
      [...text.matchAll(/^telemetry_bridge_partitions(?:\{worker="\d"\})? (\d+)$/gm)].map((match) =>
        Number(match[1]),
      );
    const [each] = partitions(byWorker);
    expect(partitions(byWorker)).toEqual([each, each]);
    expect(partitions(metrics)).toEqual([each]);

    // One PostgreSQL, the primary's, with every row once.
    const pidFile = path.join(dataDir, "pg", "postmaster.pid");
    const postmaster = Number((await fs.readFile(pidFile, "utf8")).split("\n")[0]);
    expect(readyLine(service).database).toContain(`:${pgPort}/`);
    const password = (await fs.readFile(path.join(dataDir, "pg-password"), "utf8")).trim();
    const pool = new pg.Pool({
      connectionString: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${pgPort}/telemetry`,
    });
    const { rows } = await pool.query<{ copies: number; unique: number }>(
      `SELECT count(*)::int AS copies, count(DISTINCT event_id)::int AS unique FROM telemetry`,
    );
    await pool.end();
    expect(rows[0]).toEqual({ copies: 500, unique: 500 });

    process.kill(first?.pid as number, "SIGKILL");
    const again = await eventually(
      stats,
      (now) => now.workers.length === 2 && now.workers.every((worker) => worker.pid !== first?.pid),
    );
    expect(again.workers.map((worker) => worker.pid)).not.toContain(first?.pid);
    expect(again.workers).toHaveLength(2);
    expect(service.output.some((line) => line.includes("worker exited; starting it again"))).toBe(
      true,
    );

    const workerPids = again.workers.map((worker) => worker.pid);
    service.child.kill("SIGTERM");
    expect(await service.exited).toBe(0);
    for (const pid of [...workerPids, postmaster])
      expect(alive(pid), `${pid} still runs`).toBe(false);
    expect(await connectOutcome(mqttPort)).toBe("ECONNREFUSED");
  });
});
