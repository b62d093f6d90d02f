import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { connectDevice, reading } from "../helpers/device.ts";
import { healthcheck } from "../helpers/dockerfile.ts";
import { createDataDir } from "../helpers/embedded-server.ts";
import { connectOutcome, freePort } from "../helpers/free-port.ts";
import { runCommand } from "../helpers/run-command.ts";
import { portsOf, readyLine, type ServiceProcess, spawnUntilReady } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("start");

/** `npm start` as a child process, and what its service said in its "ready" line. */
interface Started extends ServiceProcess {
  /** The service's own process: npm's child, not npm. */
  pid: number;
  mqttPort: number;
  httpPort: number;
}

const running: Started[] = [];
afterEach(async () => {
  for (const started of running.splice(0)) {
    if (!alive(started.pid)) continue;
    process.kill(started.pid, "SIGKILL");
    started.child.kill("SIGKILL");
  }
});

/** `npm start`, run by `wrapper` (e.g. `timeout`) when given, with only the variables in `env`. */
async function npmStart(env: NodeJS.ProcessEnv, wrapper: string[] = []): Promise<Started> {
  const { DATABASE_URL: _, ...inherited } = process.env;
  const [command = "npm", ...args] = [...wrapper, "npm", "start"];
  const service = await spawnUntilReady(command, args, {
    ...inherited,
    LOG_LEVEL: "info",
    MQTT_PORT: "0",
    HTTP_PORT: "0",
    ...env,
  });
  const ports = portsOf(service);
  const started = {
    ...service,
    pid: readyLine(service).pid,
    mqttPort: ports.mqtt,
    httpPort: ports.http,
  };
  running.push(started);
  return started;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function refused(port: number): Promise<boolean> {
  return (await connectOutcome(port)) === "ECONNREFUSED";
}

/** Lines of the service's log with this message. */
function logged(started: Started, message: string): string[] {
  return started.output.filter((line) => line.includes(`"msg":"${message}`));
}

/** The service's process is gone with npm, and its ports are free. */
async function expectGone(started: Started): Promise<void> {
  expect(alive(started.pid), `service pid ${started.pid} still runs`).toBe(false);
  expect(await refused(started.mqttPort), `MQTT port ${started.mqttPort}`).toBe(true);
  expect(await refused(started.httpPort), `HTTP port ${started.httpPort}`).toBe(true);
}

/** A SIGTERM to npm gives one graceful shutdown: exit 0, and nothing left running. */
async function expectOneShutdown(started: Started): Promise<void> {
  started.child.kill("SIGTERM");
  expect(await started.exited).toBe(0);
  expect(logged(started, "shutting down")).toHaveLength(1);
  expect(logged(started, "stopped")).toHaveLength(1);
  expect(logged(started, "second signal")).toEqual([]);
  await expectGone(started);
}

/** The Dockerfile's HEALTHCHECK, run against the service on `httpPort`: its exit code. */
async function checkHealth(httpPort: number): Promise<number | null> {
  const [command, ...args] = (await healthcheck()) as [string, ...string[]];
  return (await runCommand(command, args, { ...process.env, HTTP_PORT: String(httpPort) })).code;
}

describe("npm start", () => {
  it("builds what changed, then runs the compiled service, which the image's health check finds healthy", async () => {
    const now = new Date();
    await fs.utimes("bin/start.ts", now, now);
    const started = await npmStart({ DATABASE_URL: db.url });
    expect(started.output.join("\n")).toMatch(/is older than \S+: npm run build/);
    expect(started.output.join("\n")).toContain("exec node dist/bin/start.js");
    expect(started.pid).not.toBe(started.child.pid);
    expect(await checkHealth(started.httpPort)).toBe(0);

    started.child.kill("SIGTERM");
    expect(await started.exited).toBe(0);
    expect(await checkHealth(started.httpPort)).toBe(1);
  });

  it("shuts down once on a SIGTERM to npm: stopped, exit 0, ports free, no process left", async () => {
    await expectOneShutdown(await npmStart({ DATABASE_URL: db.url }));
  });

  it("shuts down once under timeout, which signals npm and then its whole process group", async () => {
    // timeout sends what it receives on, as it does when its time is up.
    await expectOneShutdown(await npmStart({ DATABASE_URL: db.url }, ["timeout", "600"]));
  });

  it("exits at once on a second signal sent after the first one's second", async () => {
    const started = await npmStart({ DATABASE_URL: db.url });
    // A lock on the table holds the device's message, and so the shutdown, short of its commit.
    const locker = new pg.Client({ connectionString: db.url });
    await locker.connect();
    await locker.query("BEGIN");
    await locker.query("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE");
    const device = await connectDevice(started.mqttPort, "start-dev");
    try {
      device.publish("telemetry/start-dev/env", reading("start-dev", 1), { qos: 1 });
      const waiting = async () =>
        (
          await locker.query(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
          )
        ).rowCount;
      while (!(await waiting())) await sleep(20);

      started.child.kill("SIGTERM");
      await sleep(1500);
      expect(logged(started, "shutting down")).toHaveLength(1);
      expect(alive(started.pid)).toBe(true);
      started.child.kill("SIGTERM");
      expect(await started.exited).toBe(1);
      expect(logged(started, "second signal")).toHaveLength(1);
      expect(logged(started, "stopped")).toEqual([]);
      await expectGone(started);
    } finally {
      device.end(true);
      await locker.query("ROLLBACK");
      await locker.end();
    }
  });

  it("stops its embedded PostgreSQL on a SIGTERM to npm", async () => {
    const dataDir = await createDataDir();
    const pgPort = await freePort();
    try {
      const started = await npmStart({ DATA_DIR: dataDir, PG_PORT: String(pgPort) });
      const pidFile = path.join(dataDir, "pg", "postmaster.pid");
      const postmaster = Number((await fs.readFile(pidFile, "utf8")).split("\n")[0]);
      expect(alive(postmaster)).toBe(true);

      started.child.kill("SIGTERM");
      expect(await started.exited).toBe(0);
      expect(logged(started, "stopped")).toHaveLength(1);
      await expectGone(started);
      expect(alive(postmaster), `postmaster ${postmaster} still runs`).toBe(false);
      expect(existsSync(pidFile)).toBe(false);
      expect(await refused(pgPort)).toBe(true);
    } finally {
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe("the compiled commands", () => {
  it("run with node alone, as in the image", async () => {
    const result = await runCommand(process.execPath, ["dist/bin/devices.js", "list", "--json"], {
      ...process.env,
      DATABASE_URL: db.url,
    });
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual([]);
  });
});
