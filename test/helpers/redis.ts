import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { KeyPair } from "./certificates.ts";
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

export interface RedisOptions {
  /** Clients must send this password (`requirepass`). */
  password?: string;
  /** TLS only, with this certificate; clients present none. */
  tls?: KeyPair;
}

/**
 * A redis-server of its own on a free loopback port, with its own
 * configuration file: nothing saved to disk, never the machine's Redis.
 * Its `url` is rediss:// with TLS, and carries the password.
 */
export async function startRedis(options: RedisOptions = {}): Promise<RedisServer> {
  const port = await freePort();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-redis-"));
  const config = path.join(dir, "redis.conf");
  await fs.writeFile(
    config,
    [
      ...(options.tls
        ? [
            "port 0",
            `tls-port ${port}`,
            `tls-cert-file ${options.tls.certFile}`,
            `tls-key-file ${options.tls.keyFile}`,
            "tls-auth-clients no",
          ]
        : [`port ${port}`]),
      ...(options.password ? [`requirepass ${options.password}`] : []),
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
    url: `${options.tls ? "rediss" : "redis"}://${options.password ? `:${options.password}@` : ""}127.0.0.1:${port}`,
    start,
    stop,
    close: async () => {
      await stop();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
