import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connectOutcome, freePort } from "./free-port.ts";

export interface Mosquitto {
  port: number;
  url: string;
  stop(): Promise<void>;
}

/** A Mosquitto of its own on a free loopback port, with `settings` added to its configuration. */
export async function startMosquitto(settings: string[] = []): Promise<Mosquitto> {
  const port = await freePort();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-mosquitto-"));
  const config = path.join(dir, "mosquitto.conf");
  await fs.writeFile(
    config,
    [
      `listener ${port} 127.0.0.1`,
      "allow_anonymous true",
      "persistence false",
      ...settings,
      "",
    ].join("\n"),
  );
  const child: ChildProcess = spawn("mosquitto", ["-c", config], { stdio: "ignore" });
  const exited = once(child, "exit");
  for (let attempt = 0; ; attempt++) {
    if ((await connectOutcome(port)) === "open") break;
    if (attempt > 100 || child.exitCode !== null)
      throw new Error(`mosquitto did not start on ${port}`);
    await sleep(50);
  }
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    stop: async () => {
      child.kill("SIGTERM");
      await exited;
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
