import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import YAML from "yaml";
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

  it("runs the simulator with flags it accepts, against the bridge", () => {
    const command = services.sim?.command ?? [];
    expect(command.slice(0, 3)).toEqual(["npx", "tsx", "device-sim/cli.ts"]);
    expect(existsSync(command[2] as string)).toBe(true);
    const options = parseOptions(command.slice(3), {});
    expect(options?.url).toBe(
      `mqtt://bridge:${loadConfig(services.bridge?.environment ?? {}).mqttPort}`,
    );
  });

  it("starts the service with the command `npm start` runs", async () => {
    const dockerfile = await fs.readFile("Dockerfile", "utf8");
    const pkg = JSON.parse(await fs.readFile("package.json", "utf8"));
    expect(pkg.scripts.start).toBe("tsx bin/start.ts");
    expect(dockerfile).toContain('CMD ["npx", "tsx", "bin/start.ts"]');
  });
});
