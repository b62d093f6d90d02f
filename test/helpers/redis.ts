import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connectOutcome, freePort } from "./free-port.ts";

export interface RedisServer {
  port: number;
  url: string;
  /** Stops the server; its data goes with it (nothing is saved). */
  stop(): Promise<void>;
  /** Starts it again on the same port, empty. */
  start(): Promise<void>;
  /** Stops it for good and removes its directory. */
  close(): Promise<void>;
}

/**
 * A redis-server of its own on a free loopback port, with its own
 * configuration file: nothing saved to disk, never the machine's Redis.
 */
export async function startRedis(): Promise<RedisServer> {
  const port = await freePort();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-redis-"));
  const config = path.join(dir, "redis.conf");
  await fs.writeFile(
    config,
    [
      `port ${port}`,
      "bind 127.0.0.1",
      `dir ${dir}`,
      'save ""',
      "appendonly no",
      "daemonize no",
      "loglevel warning",
      "",
    ].join("\n"),
  );
  let child: ChildProcess | undefined;
  let exited: Promise<unknown> = Promise.resolve();
  const start = async () => {
    const server = spawn("redis-server", [config], { stdio: "ignore" });
    child = server;
    exited = once(server, "exit");
    for (let attempt = 0; ; attempt++) {
      if ((await connectOutcome(port)) === "open") return;
      if (attempt > 100 || server.exitCode !== null) {
        throw new Error(`redis-server did not start on ${port}`);
      }
      await sleep(50);
    }
  };
  const stop = async () => {
    if (!child || child.exitCode !== null) return;
    child.kill("SIGTERM");
    await exited;
  };
  await start();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    start,
    stop,
    close: async () => {
      await stop();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
