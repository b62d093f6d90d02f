import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import YAML from "yaml";
import { anonymousAllowed } from "../bin/service.ts";
import { CONFIG_VARIABLES, loadConfig } from "../bridge/config.ts";
import { parseOptions } from "../device-sim/options.ts";

interface Service {
  image?: string;
  build?: string;
  environment?: Record<string, string>;
  volumes?: string[];
  command?: string[];
  ports?: string[];
  depends_on?: string[] | Record<string, unknown>;
}

const compose = YAML.parse(await fs.readFile("docker-compose.yml", "utf8")) as {
  services: Record<string, Service>;
};
const services = compose.services;

/**
 * The simulator's flags, with its credentials file (made inside the stack)
 * stood in for by a file of as many identities as the stack creates.
 */
async function simOptions() {
  const script = services["sim-identities"]?.command?.at(-1) ?? "";
  const match = /npx tsx (\S+) add --count (\d+) --prefix (\S+) --secrets-file (\S+)$/.exec(script);
  expect(match, script).not.toBeNull();
  const [, entry, count, prefix, file] = match as RegExpExecArray;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-compose-"));
  const standIn = path.join(dir, "sim.txt");
  await fs.writeFile(
    standIn,
    Array.from({ length: Number(count) }, (_, n) => `${prefix}${n + 1}:secret\n`).join(""),
  );
  const args = (services.sim?.command ?? []).slice(3);
  expect(args).toContain(file);
  const options = parseOptions(
    args.map((arg) => (arg === file ? standIn : arg)),
    {},
  );
  await fs.rm(dir, { recursive: true });
  return { options, entry: entry as string, file: file as string };
}

describe("docker-compose.yml", () => {
  it("mounts files and builds from folders that exist", () => {
    for (const [name, service] of Object.entries(services)) {
      for (const volume of service.volumes ?? []) {
        const source = volume.split(":")[0] as string;
        if (source.startsWith("./")) expect(existsSync(source), `${name}: ${source}`).toBe(true);
      }
      if (service.build)
        expect(existsSync(path.join(service.build, "Dockerfile")), name).toBe(true);
      for (const dependency of Array.isArray(service.depends_on)
        ? service.depends_on
        : Object.keys(service.depends_on ?? {})) {
        expect(services, `${name} depends on ${dependency}`).toHaveProperty(dependency);
      }
    }
  });

  it("sets only variables the service reads, to values it accepts", () => {
    const environment = services.bridge?.environment ?? {};
    for (const variable of Object.keys(environment)) expect(CONFIG_VARIABLES).toContain(variable);
    const config = loadConfig(environment);
    const postgres = services.postgres?.environment ?? {};
    expect(config.databaseUrl).toBe(
      `postgres://${postgres.POSTGRES_USER}:${postgres.POSTGRES_PASSWORD}@postgres:5432/${postgres.POSTGRES_DB}`,
    );
    expect(services.bridge?.ports).toEqual([
      `${config.mqttPort}:${config.mqttPort}`,
      `${config.httpPort}:${config.httpPort}`,
    ]);
  });

  it("points Prometheus and Grafana at what the other services serve", async () => {
    const config = loadConfig(services.bridge?.environment ?? {});
    const prometheus = YAML.parse(await fs.readFile("dashboards/prometheus.yml", "utf8"));
    expect(prometheus.scrape_configs[0].static_configs[0].targets).toEqual([
      `bridge:${config.httpPort}`,
    ]);
    const sources = YAML.parse(
      await fs.readFile("dashboards/provisioning/datasources/telemetry-bridge.yml", "utf8"),
    ).datasources as {
      type: string;
      url: string;
      user?: string;
      secureJsonData?: { password: string };
      jsonData?: { database: string };
    }[];
    const postgres = services.postgres?.environment ?? {};
    const pgSource = sources.find((source) => source.type === "grafana-postgresql-datasource");
    expect(pgSource).toMatchObject({
      url: "postgres:5432",
      user: postgres.POSTGRES_USER,
      secureJsonData: { password: postgres.POSTGRES_PASSWORD },
      jsonData: { database: postgres.POSTGRES_DB },
    });
    expect(sources.find((source) => source.type === "prometheus")?.url).toBe(
      "http://prometheus:9090",
    );
  });

  it("runs the simulator with flags it accepts, against the bridge", async () => {
    const command = services.sim?.command ?? [];
    expect(command.slice(0, 3)).toEqual(["npx", "tsx", "device-sim/cli.ts"]);
    expect(existsSync(command[2] as string)).toBe(true);
    const { options } = await simOptions();
    expect(options?.url).toBe(
      `mqtt://bridge:${loadConfig(services.bridge?.environment ?? {}).mqttPort}`,
    );
  });

  it("gives the simulator credentials, since the bridge listens beyond loopback", async () => {
    const bridge = loadConfig(services.bridge?.environment ?? {});
    expect(anonymousAllowed(bridge)).toBe(false);
    const provision = services["sim-identities"];
    const { options, entry, file } = await simOptions();
    expect(existsSync(entry)).toBe(true);
    expect(provision?.environment?.DATABASE_URL).toBe(bridge.databaseUrl);
    // Every simulated device has an identity of its own.
    expect(options?.credentials?.length).toBeGreaterThanOrEqual(options?.devices ?? Infinity);
    const volume = file.split("/").slice(0, -1).join("/");
    expect(provision?.volumes).toContain(`simsecrets:${volume}`);
    expect(services.sim?.volumes).toContain(`simsecrets:${volume}:ro`);
  });

  it("starts the service with the command `npm start` runs", async () => {
    const dockerfile = await fs.readFile("Dockerfile", "utf8");
    const pkg = JSON.parse(await fs.readFile("package.json", "utf8"));
    expect(pkg.scripts.start).toBe("tsx bin/start.ts");
    expect(dockerfile).toContain('CMD ["npx", "tsx", "bin/start.ts"]');
  });
});
