import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { CONFIG_VARIABLES, ConfigError, defaults, loadConfig } from "../../bridge/config.ts";
import { Mappings } from "../../bridge/mappings.ts";
import { TrustedProxies } from "../../broker/trusted-proxies.ts";

describe("loadConfig", () => {
  it("uses the defaults when nothing is set", () => {
    const config = loadConfig({});
    expect(config).toMatchObject({ ...defaults, dataDir: path.resolve(defaults.dataDir) });
  });

  it("reads exactly the variables it lists", () => {
    const read = new Set<string>();
    const env = new Proxy({} as Record<string, string | undefined>, {
      get(_target, name) {
        if (typeof name === "string") read.add(name);
        return undefined;
      },
    });
    loadConfig(env);
    expect([...read].sort()).toEqual([...CONFIG_VARIABLES].sort());
  });

  it("reads every variable", () => {
    const pem = fileURLToPath(import.meta.url);
    const config = loadConfig({
      MQTT_HOST: "0.0.0.0",
      MQTTS_PORT: "8884",
      MQTT_WS_PORT: "9001",
      TLS_CERT_FILE: pem,
      TLS_KEY_FILE: pem,
      TLS_CA_FILE: pem,
      ALLOW_ANONYMOUS: "false",
      MQTT_MAX_PACKET_BYTES: "65536",
      MQTT_CONNECT_TIMEOUT_MS: "2000",
      MQTT_MAX_CONNECTIONS: "100",
      MQTT_MAX_CONNECTIONS_PER_ADDRESS: "10",
      MQTT_CONNECT_RATE_PER_ADDRESS: "5",
      MQTT_MAX_KEEPALIVE_S: "120",
      HTTP_HOST: "::",
      MQTT_PORT: "1884",
      HTTP_PORT: "8081",
      HTTP_BODY_LIMIT_BYTES: "2048",
      BRIDGE_TOPICS: "telemetry/#, plant/+/sensors",
      MAPPINGS_FILE: "mappings/tasmota.yaml",
      SOURCE_URL: "mqtts://broker.example:8883",
      SOURCE_USERNAME: "bridge",
      SOURCE_PASSWORD: "s3cret",
      SOURCE_CA_FILE: pem,
      SOURCE_CLIENT_ID: "tb-1",
      SOURCE_PROTOCOL_VERSION: "5",
      SOURCE_SHARE_GROUP: "ingest",
      SOURCE_CONNECTIONS: "4",
      EMBEDDED_BROKER: "off",
      INGEST_TIMEOUT_MS: "5000",
      WORKERS: "3",
      REDIS_URL: "redis://cache:6379/2",
      MQTT_PROXY_PROTOCOL: "on",
      TRUSTED_PROXIES: "10.0.0.5, fd00::/8",
      DATABASE_URL: "postgres://u:p@db:5432/x",
      DATA_DIR: "/var/lib/tb",
      PG_PORT: "6000",
      LOG_LEVEL: "DEBUG",
      BATCH_MAX_ROWS: "100",
      BATCH_MAX_WAIT_MS: "0",
      QUEUE_MAX_ROWS: "100",
      BATCH_CONCURRENCY: "1",
      DEDUP_WINDOW_KEYS: "0",
      MAX_PAYLOAD_BYTES: "4096",
      PARTITION_DAYS_AHEAD: "1",
      RETENTION_DAYS: "30",
      PARTITION_SCHEDULE: "0 * * * *",
    });
    expect(config).toEqual({
      mqttHost: "0.0.0.0",
      mqttsPort: 8884,
      mqttWsPort: 9001,
      tlsCertFile: pem,
      tlsKeyFile: pem,
      tlsCaFile: pem,
      allowAnonymous: false,
      mqttMaxPacketBytes: 65536,
      mqttConnectTimeoutMs: 2000,
      mqttMaxConnections: 100,
      mqttMaxConnectionsPerAddress: 10,
      mqttConnectRatePerAddress: 5,
      mqttMaxKeepaliveS: 120,
      httpHost: "::",
      mqttPort: 1884,
      httpPort: 8081,
      httpBodyLimitBytes: 2048,
      bridgeTopics: ["telemetry/#", "plant/+/sensors"],
      mappings: expect.any(Mappings),
      source: {
        url: "mqtts://broker.example:8883",
        username: "bridge",
        password: "s3cret",
        caFile: pem,
        clientId: "tb-1",
        protocolVersion: 5,
        shareGroup: "ingest",
        connections: 4,
      },
      embeddedBroker: false,
      ingestTimeoutMs: 5000,
      workers: 3,
      redisUrl: "redis://cache:6379/2",
      mqttProxyProtocol: true,
      trustedProxies: expect.any(TrustedProxies),
      databaseUrl: "postgres://u:p@db:5432/x",
      dataDir: "/var/lib/tb",
      pgPort: 6000,
      logLevel: "debug",
      batchMaxRows: 100,
      batchMaxWaitMs: 0,
      queueMaxRows: 100,
      batchConcurrency: 1,
      dedupWindowKeys: 0,
      maxPayloadBytes: 4096,
      partitionDaysAhead: 1,
      retentionDays: 30,
      partitionSchedule: "0 * * * *",
    });
  });

  it("trusts the proxies of TRUSTED_PROXIES alone, by address or range, IPv4 also in its IPv6-mapped form", () => {
    const proxies = loadConfig({
      TRUSTED_PROXIES: "10.0.0.5, 172.18.0.0/16,fd00::/8,",
    }).trustedProxies;
    for (const address of ["10.0.0.5", "::ffff:10.0.0.5", "172.18.3.4", "fd12::1"]) {
      expect(proxies.has(address), address).toBe(true);
    }
    for (const address of ["10.0.0.6", "172.19.0.1", "fe80::1", "", undefined, "localhost"]) {
      expect(proxies.has(address), String(address)).toBe(false);
    }
    expect(loadConfig({}).trustedProxies.has("127.0.0.1")).toBe(false);
  });

  it("believes X-Forwarded-For only as far back as trusted proxies wrote it", () => {
    const proxies = loadConfig({ TRUSTED_PROXIES: "10.0.0.5,10.0.0.6" }).trustedProxies;
    const cases: [string, string | string[] | undefined, string][] = [
      ["10.0.0.5", undefined, "10.0.0.5"],
      ["10.0.0.5", "198.51.100.7", "198.51.100.7"],
      // A client's own forged entry sits left of what the proxies wrote.
      ["10.0.0.5", "203.0.113.1, 198.51.100.7, 10.0.0.6", "198.51.100.7"],
      ["10.0.0.5", ["203.0.113.1", "198.51.100.7"], "198.51.100.7"],
      ["10.0.0.5", "unknown", "10.0.0.5"],
      ["203.0.113.9", "198.51.100.7", "203.0.113.9"],
    ];
    for (const [peer, header, client] of cases) {
      expect(proxies.forwardedClient(peer, header), `${peer} ${header}`).toBe(client);
    }
  });

  it("runs a worker per core with WORKERS=auto", () => {
    expect(loadConfig({ WORKERS: "auto" }).workers).toBe(os.availableParallelism());
  });

  it("fails with one line naming the variable", () => {
    const cases: [Record<string, string>, RegExp][] = [
      [
        { BATCH_MAX_ROWS: "many" },
        /^BATCH_MAX_ROWS must be an integer from 1 to 100000 \(got "many"\)$/,
      ],
      [{ PG_PORT: "70000" }, /^PG_PORT /],
      [{ MQTT_PORT: "-1" }, /^MQTT_PORT /],
      [{ BRIDGE_TOPICS: "telemetry/#/x" }, /^BRIDGE_TOPICS .*"telemetry\/#\/x" has #/],
      [{ BRIDGE_TOPICS: "a,,b" }, /^BRIDGE_TOPICS .*"" is empty/],
      [{ SOURCE_URL: "http://broker" }, /^SOURCE_URL must start with mqtt:\/\/ or mqtts:\/\//],
      [
        { SOURCE_URL: "mqtt://b", SOURCE_PROTOCOL_VERSION: "3" },
        /^SOURCE_PROTOCOL_VERSION must be 4/,
      ],
      [
        { SOURCE_URL: "mqtt://b", SOURCE_SHARE_GROUP: "a/b" },
        /^SOURCE_SHARE_GROUP must be a name without "\/"/,
      ],
      [
        { SOURCE_URL: "mqtt://b", SOURCE_CONNECTIONS: "2" },
        /^SOURCE_CONNECTIONS above 1 needs SOURCE_SHARE_GROUP/,
      ],
      [
        { SOURCE_URL: "mqtt://b", SOURCE_CONNECTIONS: "0" },
        /^SOURCE_CONNECTIONS must be an integer from 1 to 64/,
      ],
      [{ RETENTION_DAYS: "0" }, /^RETENTION_DAYS /],
      [{ MQTT_PROXY_PROTOCOL: "on" }, /^MQTT_PROXY_PROTOCOL=on needs TRUSTED_PROXIES: /],
      [{ TRUSTED_PROXIES: "haproxy" }, /^TRUSTED_PROXIES must be .*: "haproxy" is not an IP/],
      [{ TRUSTED_PROXIES: "10.0.0.0/33" }, /"10.0.0.0\/33" is not/],
      [{ TRUSTED_PROXIES: "10.0.0.0/8/1" }, /"10.0.0.0\/8\/1" is not/],
      [{ TRUSTED_PROXIES: "::1/x" }, /"::1\/x" is not/],
      [{ TRUSTED_PROXIES: "10.0.0.5, 0.0.0.0/0" }, /"0.0.0.0\/0" would trust every address$/],
      [{ TRUSTED_PROXIES: "::/0" }, /"::\/0" would trust every address$/],
      [{ TRUSTED_PROXIES: "::ffff:10.0.0.0/8" }, /"::ffff:10.0.0.0\/8" is IPv4 in IPv6 form/],
      [{ DATABASE_URL: "mysql://x" }, /^DATABASE_URL must start with postgres:\/\//],
      [{ DATABASE_URL: "localhost" }, /^DATABASE_URL must be a URL/],
      [{ LOG_LEVEL: "loud" }, /^LOG_LEVEL must be one of/],
      [{ ALLOW_ANONYMOUS: "yes" }, /^ALLOW_ANONYMOUS must be true or false/],
      [{ MQTT_MAX_PACKET_BYTES: "10" }, /^MQTT_MAX_PACKET_BYTES must be an integer from 1024/],
      [{ MQTT_MAX_KEEPALIVE_S: "0" }, /^MQTT_MAX_KEEPALIVE_S must be an integer from 1 to 65535/],
      [{ MQTT_HOST: "0.0.0.0; rm" }, /^MQTT_HOST must be an address/],
      [{ TLS_CERT_FILE: "/nonexistent.pem" }, /^TLS_CERT_FILE must name a readable PEM file/],
      [{ TLS_CERT_FILE: fileURLToPath(import.meta.url) }, /^TLS_KEY_FILE must be set too/],
      [{ TLS_CA_FILE: fileURLToPath(import.meta.url) }, /^TLS_CA_FILE needs TLS_CERT_FILE/],
      [{ PARTITION_SCHEDULE: "every hour" }, /^PARTITION_SCHEDULE must be a cron expression/],
      [
        { BATCH_MAX_ROWS: "500", QUEUE_MAX_ROWS: "100" },
        /^QUEUE_MAX_ROWS \(100\) must be at least/,
      ],
    ];
    for (const [env, message] of cases) {
      expect(() => loadConfig(env)).toThrow(ConfigError);
      expect(() => loadConfig(env)).toThrow(message);
    }
  });
});
