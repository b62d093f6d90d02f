import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { connectOutcome, freePort } from "./free-port.ts";

export const DEPLOY_CONFIG = "deploy/haproxy.cfg";
/** The port of deploy/haproxy.cfg's stats page. */
export const STATS_PORT = 8404;

export interface HaproxyNode {
  name: string;
  /** The node's port for each port a server line of deploy/haproxy.cfg names (1883, 8080). */
  ports: Record<number, number>;
}

export interface ServerState {
  /** "UP", "DOWN", "UP 1/2" (going down), … */
  status: string;
  /** Connections open to it now. */
  sessions: number;
}

export interface Haproxy {
  /** The local port of each frontend, by the port it binds in deploy/haproxy.cfg. */
  ports: Record<number, number>;
  /** What HAProxy printed: its log and its alerts. */
  output: string[];
  /** Each server as the stats page reports it, by "backend/server". */
  servers(): Promise<Record<string, ServerState>>;
  stop(): Promise<void>;
}

const BIND = /^(\s*bind\s+):(\d+)(.*)$/;
const SERVER = /^(\s*server\s+)\S+\s+\S+:(\d+)(.*)$/;

/**
 * deploy/haproxy.cfg for a test: each frontend bound to a free loopback
 * port, and each backend's servers replaced by `nodes`, written after the
 * backend's first server line with its options kept. `source` is the
 * address HAProxy connects to the nodes from.
 */
export function testConfig(
  deployed: string,
  nodes: HaproxyNode[],
  frontendPorts: Record<number, number>,
  source: string,
): string {
  const lines: string[] = [];
  let serversWritten = false;
  for (const line of deployed.split("\n")) {
    if (/^\S/.test(line)) serversWritten = false;
    const bind = BIND.exec(line);
    if (bind) {
      const [, head, port, rest] = bind as unknown as [string, string, string, string];
      lines.push(`${head}127.0.0.1:${portOf(frontendPorts, Number(port), "frontend")}${rest}`);
      continue;
    }
    const server = SERVER.exec(line);
    if (server) {
      if (serversWritten) continue;
      serversWritten = true;
      const [, head, port, rest] = server as unknown as [string, string, string, string];
      for (const node of nodes) {
        const options = rest.replace(
          /\bport (\d+)/,
          (_, checked: string) => `port ${portOf(node.ports, Number(checked), node.name)}`,
        );
        const address = `127.0.0.1:${portOf(node.ports, Number(port), node.name)}`;
        lines.push(`${head}${node.name} ${address}${options} source ${source}`);
      }
      continue;
    }
    lines.push(line);
  }
  return lines.join("\n");
}

function portOf(ports: Record<number, number>, port: number, owner: string): number {
  const mapped = ports[port];
  if (mapped === undefined)
    throw new Error(`${DEPLOY_CONFIG} uses port ${port}, unknown to ${owner}`);
  return mapped;
}

/** The ports deploy/haproxy.cfg's frontends bind. */
export function frontendPortsOf(deployed: string): number[] {
  return deployed
    .split("\n")
    .map((line) => BIND.exec(line)?.[2])
    .filter((port): port is string => port !== undefined)
    .map(Number);
}

/**
 * HAProxy in the foreground with deploy/haproxy.cfg in front of `nodes`
 * (see `testConfig`); resolves once every frontend accepts connections.
 * Its stats page serves `servers()`.
 */
export async function startHaproxy(nodes: HaproxyNode[], source = "127.0.0.1"): Promise<Haproxy> {
  const deployed = await fs.readFile(DEPLOY_CONFIG, "utf8");
  const ports: Record<number, number> = {};
  for (const port of frontendPortsOf(deployed)) ports[port] = await freePort();
  const statsPort = portOf(ports, STATS_PORT, "the frontends");
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-haproxy-"));
  const config = path.join(dir, "haproxy.cfg");
  await fs.writeFile(config, testConfig(deployed, nodes, ports, source));
  const child: ChildProcess = spawn("haproxy", ["-f", config, "-db"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    if (stream) createInterface({ input: stream }).on("line", (line) => output.push(line));
  }
  const exited = once(child, "exit");
  for (const port of Object.values(ports)) {
    for (let attempt = 0; (await connectOutcome(port)) !== "open"; attempt++) {
      if (attempt > 100 || child.exitCode !== null) {
        child.kill("SIGKILL");
        throw new Error(`haproxy did not start on ${port}:\n${output.join("\n")}`);
      }
      await sleep(50);
    }
  }
  return {
    ports,
    output,
    servers: async () => {
      const csv = await (await fetch(`http://127.0.0.1:${statsPort}/;csv`)).text();
      const [header = "", ...rows] = csv.trim().split("\n");
      const columns = header.replace(/^# /, "").split(",");
      const at = (name: string) => columns.indexOf(name);
      const servers: Record<string, ServerState> = {};
      for (const row of rows) {
        const fields = row.split(",");
        const server = fields[at("svname")];
        if (server === "FRONTEND" || server === "BACKEND") continue;
        servers[`${fields[at("pxname")]}/${server}`] = {
          status: fields[at("status")] as string,
          sessions: Number(fields[at("scur")]),
        };
      }
      return servers;
    },
    stop: async () => {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await exited;
      }
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
