import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { type Service, startService } from "../../bin/service.ts";
import { loadConfig } from "../../bridge/config.ts";
import type { MqttServer } from "../../broker/mqtt-server.ts";
import { silentLogger } from "./test-database.ts";

/** A service whose embedded broker runs. */
export type BrokeredService = Service & { mqtt: MqttServer; mqttPort: number };

/** The whole service in this process, on a free MQTT port, against `databaseUrl`. */
export async function startTestService(
  databaseUrl: string,
  env: Record<string, string> = {},
): Promise<BrokeredService> {
  const config = loadConfig({ DATABASE_URL: databaseUrl, MQTT_PORT: "0", HTTP_PORT: "0", ...env });
  const service = await startService(config, silentLogger);
  if (!service.mqtt) throw new Error("startTestService needs the embedded broker");
  return service as BrokeredService;
}

export interface ServiceProcess {
  child: ChildProcess;
  /** Every log line it printed, for assertions and for failure messages. */
  output: string[];
  exited: Promise<number | null>;
}

/**
 * The service from its sources (or another entry point) as a child process;
 * resolves once it logs "ready".
 */
export function spawnService(
  env: Record<string, string>,
  entry = "bin/start.ts",
): Promise<ServiceProcess> {
  return spawnUntilReady(process.execPath, ["--import", "tsx", entry], {
    ...process.env,
    LOG_LEVEL: "info",
    HTTP_PORT: "0",
    ...env,
  });
}

/** Any command that runs the service as a child process; resolves once the service logs "ready". */
export async function spawnUntilReady(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<ServiceProcess> {
  const child = spawn(command, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  const output: string[] = [];
  const exited = once(child, "exit").then(([code]) => code as number | null);
  const ready = new Promise<void>((resolve, reject) => {
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on("line", (line) => {
        output.push(line);
        if (line.includes('"msg":"ready"')) resolve();
      });
    }
    exited.then((code) =>
      reject(new Error(`service exited (${code}) before ready:\n${output.join("\n")}`)),
    );
  });
  await ready;
  return { child, output, exited };
}

/** What a service process's "ready" line says: where it listens ("off" for MQTT without the embedded broker), its pid, its database. */
export interface ReadyLine {
  pid: number;
  mqtt: string;
  http: string;
  database: string;
}

export function readyLine(service: ServiceProcess): ReadyLine {
  return JSON.parse(service.output.find((line) => line.includes('"msg":"ready"')) ?? "{}");
}

/** The MQTT and HTTP ports a service process with the embedded broker listens on. */
export function portsOf(service: ServiceProcess): { mqtt: number; http: number } {
  const ready = readyLine(service);
  return { mqtt: Number(new URL(ready.mqtt).port), http: Number(new URL(ready.http).port) };
}

/** Resolves once `service` has logged `times` lines containing `text`; fails after `withinMs` with its output. */
export async function logged(
  service: ServiceProcess,
  text: string,
  withinMs = 10_000,
  times = 1,
): Promise<void> {
  for (let waited = 0; ; waited += 50) {
    if (service.output.filter((line) => line.includes(text)).length >= times) return;
    if (waited > withinMs) throw new Error(`never logged "${text}":\n${service.output.join("\n")}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
