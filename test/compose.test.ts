import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import YAML from "yaml";
import { anonymousAllowed } from "../bin/service.ts";
import { CONFIG_VARIABLES, defaults, loadConfig } from "../bridge/config.ts";
import { MIGRATIONS_DIR } from "../bridge/migrate.ts";
import { TrustedProxies } from "../broker/trusted-proxies.ts";
import { parseOptions } from "../device-sim/options.ts";
import { BUILT_FOLDERS, OUT_DIR, sourceOf } from "./helpers/build.ts";
import { argsOf, execForm, healthcheck, readDockerfile, type Stage } from "./helpers/dockerfile.ts";
import { DEPLOY_CONFIG, STATS_PORT } from "./helpers/haproxy.ts";
import { installed } from "./helpers/installed.ts";
import { runCommand } from "./helpers/run-command.ts";

interface Service {
  image?: string;
  build?: string;
  profiles?: string[];
  /** A variable without a value is passed through from the shell that runs compose. */
  environment?: Record<string, string | null>;
  volumes?: string[];
  command?: string[];
  ports?: string[];
  depends_on?: string[] | Record<string, unknown>;
  networks?: string[] | Record<string, { ipv4_address?: string } | null>;
}

const compose = YAML.parse(await fs.readFile("docker-compose.yml", "utf8")) as {
  services: Record<string, Service>;
  networks?: Record<string, { ipam?: { config?: { subnet?: string }[] } } | null>;
};
const services = compose.services;

/** The variables a service is given, without those passed through from the shell. */
function setVariables(service: Service | undefined): Record<string, string> {
  return Object.fromEntries(
    Object.entries(service?.environment ?? {}).filter(
      (entry): entry is [string, string] => entry[1] !== null,
    ),
  );
}

const bridgeConfig = loadConfig(setVariables(services.bridge));

/**
 * The simulator's flags, with its credentials file (made inside the stack)
 * stood in for by a file of as many identities as the stack creates.
 */
async function simOptions() {
  const script = services["sim-identities"]?.command?.at(-1) ?? "";
  const match = /exec node (\S+) add --count (\d+) --prefix (\S+) --secrets-file (\S+)$/.exec(
    script,
  );
  expect(match, script).not.toBeNull();
  const [, entry, count, prefix, file] = match as RegExpExecArray;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-compose-"));
  const standIn = path.join(dir, "sim.txt");
  await fs.writeFile(
    standIn,
    Array.from({ length: Number(count) }, (_, n) => `${prefix}${n + 1}:secret\n`).join(""),
  );
  const args = (services.sim?.command ?? []).slice(2);
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
    for (const variable of Object.keys(services.bridge?.environment ?? {})) {
      expect(CONFIG_VARIABLES).toContain(variable);
    }
    const postgres = services.postgres?.environment ?? {};
    expect(bridgeConfig.databaseUrl).toBe(
      `postgres://${postgres.POSTGRES_USER}:${postgres.POSTGRES_PASSWORD}@postgres:5432/${postgres.POSTGRES_DB}`,
    );
    expect(services.bridge?.ports).toEqual([
      `${bridgeConfig.mqttPort}:${bridgeConfig.mqttPort}`,
      `${bridgeConfig.httpPort}:${bridgeConfig.httpPort}`,
    ]);
  });

  it("passes the limits and mappings through from the shell that runs compose", () => {
    const environment = services.bridge?.environment ?? {};
    const passedThrough = Object.keys(environment).filter((name) => environment[name] === null);
    expect(passedThrough).toEqual(
      expect.arrayContaining([
        "MQTT_MAX_PACKET_BYTES",
        "MQTT_MAX_CONNECTIONS",
        "INGEST_TIMEOUT_MS",
        "MAPPINGS_FILE",
      ]),
    );
  });

  it("points Prometheus and Grafana at what the other services serve", async () => {
    const prometheus = YAML.parse(await fs.readFile("dashboards/prometheus.yml", "utf8"));
    expect(prometheus.scrape_configs[0].static_configs[0].targets).toEqual([
      `bridge:${bridgeConfig.httpPort}`,
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

  it("runs the compiled simulator with flags it accepts, against the bridge", async () => {
    const [node, entry] = services.sim?.command ?? [];
    expect(node).toBe("node");
    expect(sourceOf(entry as string), `${entry} is built`).toBe("device-sim/cli.ts");
    const { options } = await simOptions();
    expect(options?.url).toBe(`mqtt://bridge:${bridgeConfig.mqttPort}`);
  });

  it("gives the simulator credentials, since the bridge listens beyond loopback", async () => {
    expect(anonymousAllowed(bridgeConfig)).toBe(false);
    const provision = services["sim-identities"];
    const { options, entry, file } = await simOptions();
    expect(sourceOf(entry), `${entry} is built`).toBe("bin/devices.ts");
    expect(provision?.environment?.DATABASE_URL).toBe(bridgeConfig.databaseUrl);
    // Every simulated device has an identity of its own.
    expect(options?.credentials?.length).toBeGreaterThanOrEqual(options?.devices ?? Infinity);
    const volume = file.split("/").slice(0, -1).join("/");
    expect(provision?.volumes).toContain(`simsecrets:${volume}`);
    expect(services.sim?.volumes).toContain(`simsecrets:${volume}:ro`);
  });

  it("waits for the bridge to be healthy before starting the simulator", () => {
    expect(services.sim?.depends_on).toMatchObject({ bridge: { condition: "service_healthy" } });
  });
});

interface HaproxySection {
  /** global, defaults, frontend, backend, resolvers, … */
  kind: string;
  name: string;
  /** Its settings, one a line, without comments. */
  lines: string[];
}

function haproxySections(text: string): HaproxySection[] {
  const sections: HaproxySection[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*/, "").trimEnd();
    if (line.trim() === "") continue;
    if (/^\S/.test(line)) {
      const [kind = "", name = ""] = line.split(/\s+/);
      sections.push({ kind, name, lines: [] });
    } else {
      sections.at(-1)?.lines.push(line.trim());
    }
  }
  return sections;
}

/** An HAProxy time ("90m", "30s", "500", in milliseconds when bare) in seconds. */
function seconds(time: string): number {
  const match = /^(\d+)(us|ms|s|m|h|d)?$/.exec(time);
  expect(match, time).not.toBeNull();
  const [, value, unit = "ms"] = match as RegExpExecArray;
  const scale = { us: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600, d: 86_400 }[unit] as number;
  return Number(value) * scale;
}

describe("the cluster profile: nodes behind HAProxy", async () => {
  const cluster = Object.entries(services).filter(([, service]) =>
    service.profiles?.includes("cluster"),
  );
  const nodes = cluster.filter(([, service]) => service.build !== undefined);
  const nodeConfigs = new Map(
    nodes.map(([name, service]) => [name, loadConfig(setVariables(service))]),
  );
  const sections = haproxySections(await fs.readFile(DEPLOY_CONFIG, "utf8"));
  const section = (kind: string, name: string) => {
    const found = sections.find((candidate) => candidate.kind === kind && candidate.name === name);
    expect(found, `${kind} ${name} in ${DEPLOY_CONFIG}`).toBeDefined();
    return found as HaproxySection;
  };
  const setting = (found: HaproxySection, keyword: string) =>
    found.lines
      .filter((line) => line.startsWith(`${keyword} `))
      .map((line) => line.slice(keyword.length + 1));
  /** The backend a frontend sends to, and its servers as name, host, port and options. */
  const backendOf = (frontend: string) => {
    const backend = section(
      "backend",
      setting(section("frontend", frontend), "default_backend")[0] ?? "",
    );
    const servers = setting(backend, "server").map((line) => {
      const [name = "", address = "", ...options] = line.split(/\s+/);
      const [host, port] = address.split(":");
      return { name, host, port: Number(port), options: options.join(" ") };
    });
    return { backend, servers };
  };
  const frontendPort = (frontend: string) =>
    Number(/^:(\d+)$/.exec(setting(section("frontend", frontend), "bind")[0] ?? "")?.[1]);

  it("leaves the default stack as it was: every new service is in the profile", () => {
    const byDefault = Object.keys(services).filter((name) => !services[name]?.profiles);
    expect(byDefault.sort()).toEqual(["bridge", "grafana", "postgres", "prometheus"]);
    expect(cluster.map(([name]) => name).sort()).toEqual([
      "bridge-1",
      "bridge-2",
      "haproxy",
      "redis",
    ]);
  });

  it("runs two or more nodes of the bridge's image, on the same PostgreSQL and Redis, behind the PROXY protocol", () => {
    expect(nodes.length).toBeGreaterThanOrEqual(2);
    for (const [name, service] of nodes) {
      expect(service.build, name).toBe(services.bridge?.build);
      for (const variable of Object.keys(service.environment ?? {})) {
        expect(CONFIG_VARIABLES, `${name}: ${variable}`).toContain(variable);
      }
      const config = nodeConfigs.get(name);
      expect(config?.databaseUrl, name).toBe(bridgeConfig.databaseUrl);
      expect(config?.mqttProxyProtocol, name).toBe(true);
      expect(config?.mqttHost, name).toBe("0.0.0.0");
      const redis = new URL(config?.redisUrl ?? "");
      expect(
        cluster.map(([other]) => other),
        name,
      ).toContain(redis.hostname);
      expect(redis.port, name).toBe("6379");
      // Reachable through HAProxy only: a device connecting directly could name any address.
      expect(service.ports, name).toBeUndefined();
      expect(Object.keys(service.depends_on ?? {}), name).toEqual(["postgres", redis.hostname]);
    }
  });

  it("has the nodes believe client addresses from HAProxy's fixed address alone", () => {
    const [network = "", attachment] = Object.entries(services.haproxy?.networks ?? {})[0] ?? [];
    const address = attachment?.ipv4_address ?? "";
    const subnet = compose.networks?.[network]?.ipam?.config?.[0]?.subnet ?? "";
    expect(new TrustedProxies([subnet]).has(address), `${address} in ${subnet}`).toBe(true);
    const neighbour = address.replace(/\d+$/, (last: string) => String(Number(last) + 1));
    for (const [name, service] of nodes) {
      expect(service.networks, name).toContain(network);
      const config = nodeConfigs.get(name);
      expect(config?.trustedProxies.has(address), name).toBe(true);
      expect(config?.trustedProxies.has(neighbour), name).toBe(false);
    }
  });

  it("mounts deploy/haproxy.cfg in the official image and publishes its frontends", () => {
    const haproxy = services.haproxy;
    expect(haproxy?.image).toMatch(/^haproxy:\d/);
    expect(haproxy?.volumes).toContain(`./${DEPLOY_CONFIG}:/usr/local/etc/haproxy/haproxy.cfg:ro`);
    const published = (haproxy?.ports ?? []).map((mapping) => Number(mapping.split(":")[1]));
    expect(published.sort()).toEqual(
      [frontendPort("mqtt"), frontendPort("http"), STATS_PORT].sort(),
    );
    expect(haproxy?.depends_on).toEqual(nodes.map(([name]) => name));
  });

  it("sends MQTT to every node's MQTT port with a PROXY v2 header, checking its /health", () => {
    const { backend, servers } = backendOf("mqtt");
    expect(setting(section("frontend", "mqtt"), "mode")).toEqual(["tcp"]);
    expect(setting(backend, "mode")).toEqual(["tcp"]);
    expect(setting(backend, "balance")).toEqual(["leastconn"]);
    expect(servers.map((server) => server.name)).toEqual(nodes.map(([name]) => name));
    for (const server of servers) {
      const config = nodeConfigs.get(server.name);
      expect(server.host).toBe(server.name);
      expect(server.port).toBe(config?.mqttPort);
      expect(server.options).toContain("send-proxy-v2");
      expect(server.options).toMatch(new RegExp(`\\bcheck port ${config?.httpPort}\\b`));
    }
    expect(backend.lines).toContain("option httpchk");
    expect(setting(backend, "http-check").join("\n")).toMatch(/^send meth GET uri \/health /m);
  });

  it("keeps an idle MQTT connection open longer than the longest keepalive a node allows", () => {
    const keepalive = Math.max(
      ...[...nodeConfigs.values()].map((config) => config.mqttMaxKeepaliveS),
    );
    const clientTimeout = setting(section("frontend", "mqtt"), "timeout client")[0] ?? "0";
    const serverTimeout = setting(backendOf("mqtt").backend, "timeout server")[0] ?? "0";
    // aedes drops a client silent for 1.5 × its keepalive: the proxy must not do it first.
    expect(seconds(clientTimeout)).toBeGreaterThanOrEqual(1.5 * keepalive);
    expect(seconds(serverTimeout)).toBeGreaterThanOrEqual(1.5 * keepalive);
  });

  it("balances the HTTP API in HTTP mode over every node's HTTP port, checking /health", () => {
    const { backend, servers } = backendOf("http");
    expect(setting(section("frontend", "http"), "mode")).toEqual(["http"]);
    expect(setting(backend, "mode")).toEqual(["http"]);
    expect(servers.map((server) => [server.name, server.host, server.port])).toEqual(
      nodes.map(([name]) => [name, name, nodeConfigs.get(name)?.httpPort]),
    );
    expect(backend.lines).toContain("option httpchk");
    expect(setting(backend, "http-check").join("\n")).toMatch(/^send meth GET uri \/health /m);
    // POST /publish holds its request until the commit, up to INGEST_TIMEOUT_MS.
    const ingestTimeout = Math.max(
      ...[...nodeConfigs.values()].map((config) => config.ingestTimeoutMs),
    );
    expect(seconds(setting(backend, "timeout server")[0] ?? "0")).toBeGreaterThan(
      ingestTimeout / 1000,
    );
  });

  it.skipIf(!installed("haproxy", "the check of deploy/haproxy.cfg"))(
    "is a configuration HAProxy accepts, though the nodes' names resolve only inside compose",
    async () => {
      const result = await runCommand("haproxy", ["-c", "-f", DEPLOY_CONFIG]);
      expect(result.code, result.stdout + result.stderr).toBe(0);
      const warnings = `${result.stdout}${result.stderr}`
        .split("\n")
        .filter((line) => line.includes("[WARNING]"));
      for (const warning of warnings)
        expect(warning).toMatch(/could not resolve address 'bridge-\d+'/);
    },
  );
});

describe("Dockerfile", async () => {
  const stages = await readDockerfile();
  const build = stages.find((stage) => stage.name === "build") as Stage;
  const final = stages.at(-1) as Stage;
  const workdir = argsOf(final, "WORKDIR")[0] as string;
  const pkg = JSON.parse(await fs.readFile("package.json", "utf8"));
  const lock = JSON.parse(await fs.readFile("package-lock.json", "utf8"));

  /** COPY's sources and destination, for copies from the build context. */
  const copies = (stage: Stage) =>
    argsOf(stage, "COPY")
      .filter((args) => !args.startsWith("--from="))
      .map((args) => {
        const paths = args.split(" ");
        return { sources: paths.slice(0, -1), destination: paths.at(-1) as string };
      });

  it("copies only files that exist", () => {
    for (const stage of stages) {
      for (const { sources } of copies(stage)) {
        for (const source of sources) expect(existsSync(source), source).toBe(true);
      }
    }
  });

  it("builds dist/ from every folder the build compiles, with the dev dependencies", () => {
    expect(stages).toHaveLength(2);
    expect(argsOf(build, "RUN")).toContain("npm ci --no-audit --no-fund");
    expect(argsOf(build, "RUN").at(-1)).toBe("npm run build");
    const copied = copies(build).flatMap((copy) => copy.sources);
    expect(copied).toEqual(expect.arrayContaining(["tsconfig.json", "tsconfig.build.json"]));
    expect(copied).toEqual(expect.arrayContaining(BUILT_FOLDERS));
  });

  it("runs the compiled service, with its migrations and example mappings, as npm start does", () => {
    const cmd = execForm(argsOf(final, "CMD")[0] as string);
    expect(cmd[0]).toBe("node");
    expect(sourceOf(cmd[1] as string), `${cmd[1]} is built`).toBe("bin/start.ts");
    expect(pkg.scripts.start.endsWith(` && exec ${cmd.join(" ")}`), pkg.scripts.start).toBe(true);
    expect(argsOf(final, "COPY")).toContain(`--from=build ${workdir}/${OUT_DIR} ${OUT_DIR}`);
    const migrations = path.relative(process.cwd(), MIGRATIONS_DIR);
    expect(copies(final)).toContainEqual({ sources: [migrations], destination: migrations });
    expect(copies(final)).toContainEqual({ sources: ["mappings"], destination: "mappings" });
    // "type": "module" makes node load dist/ as ES modules.
    expect(copies(final)[0]?.sources).toContain("package.json");
    expect(pkg.type).toBe("module");
  });

  it("installs no dev dependency, compiler or TypeScript runner in the final stage", () => {
    expect(argsOf(final, "RUN")[0]).toMatch(/^npm ci --omit=dev /);
    expect(argsOf(final, "COPY").filter((args) => args.startsWith("--from="))).toEqual([
      `--from=build ${workdir}/${OUT_DIR} ${OUT_DIR}`,
    ]);
    for (const name of ["typescript", "tsx", "esbuild", "vitest", "@biomejs/biome"]) {
      expect(lock.packages[`node_modules/${name}`]?.dev, `${name} is dev-only`).toBe(true);
    }
    expect(Object.keys(pkg.dependencies)).not.toContain("tsx");
  });

  it("installs every package the compiled service imports", async () => {
    const imported = new Set<string>();
    for (const folder of BUILT_FOLDERS) {
      for (const file of await fs.readdir(folder, { recursive: true })) {
        if (!file.endsWith(".ts")) continue;
        const source = await fs.readFile(path.join(folder, file), "utf8");
        // Type-only imports are erased by the build.
        for (const [, specifier] of source.matchAll(
          /^(?:import|export) (?!type )[^;]*?from "([^".][^"]*)"/gm,
        )) {
          if (!specifier?.startsWith("node:")) {
            imported.add(specifier?.match(/^(@[^/]+\/)?[^/]+/)?.[0] as string);
          }
        }
      }
    }
    expect(imported.size).toBeGreaterThan(0);
    for (const name of imported) expect(pkg.dependencies, name).toHaveProperty([name]);
  });

  it("runs as a user other than root, who may write DATA_DIR", () => {
    const user = argsOf(final, "USER").at(-1);
    expect(user).toBeDefined();
    expect(["root", "0"]).not.toContain(user);
    const dataDir = defaults.dataDir;
    expect(argsOf(final, "RUN")).toContain(`mkdir ${dataDir} && chown ${user}:${user} ${dataDir}`);
  });

  it("checks /health on the HTTP port it exposes", async () => {
    const env = Object.fromEntries(
      argsOf(final, "ENV")
        .flatMap((args) => args.split(" "))
        .map((pair) => pair.split("=") as [string, string]),
    );
    const config = loadConfig(env);
    expect(argsOf(final, "EXPOSE")).toEqual([`${config.mqttPort} ${config.httpPort}`]);
    const check = await healthcheck();
    expect(check.slice(0, 2)).toEqual(["node", "-e"]);
    expect(check[2]).toContain("process.env.HTTP_PORT + '/health'");
  });
});
