/**
 * End to end: devices publish QoS 1 to the service (`npm start`, a child
 * process), which acknowledges after commit. Messages per second until the
 * last PUBACK, publish→PUBACK latency, and a check that PostgreSQL holds
 * each message exactly once.
 */
import mqtt from "mqtt";
import pg from "pg";
import { createDatabase, dropDatabase } from "../test/helpers/databases.ts";
import { Stream } from "../test/helpers/device.ts";
import { freePort } from "../test/helpers/free-port.ts";
import { spawnService } from "../test/helpers/service.ts";

export interface PipelineShape {
  label: string;
  devices: number;
  inflight: number;
  messagesPerDevice: number;
}

export interface PipelineResult extends PipelineShape {
  messages: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? 0;
}

/** `env` configures the service, e.g. { BATCH_MAX_WAIT_MS: "5" }. */
export async function benchPipeline(
  serverUrl: string,
  shape: PipelineShape,
  env: Record<string, string> = {},
): Promise<PipelineResult> {
  const { name, url: databaseUrl } = await createDatabase(serverUrl, "telemetry_pipeline");
  const port = await freePort();
  const service = await spawnService({
    DATABASE_URL: databaseUrl,
    MQTT_PORT: String(port),
    ...env,
  });
  try {
    const devices = await Promise.all(
      Array.from({ length: shape.devices }, (_, d) =>
        mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
          clientId: `bench-${d}`,
          clean: false,
          protocolVersion: 4,
          reconnectPeriod: 0,
        }),
      ),
    );
    const streams = devices.map(
      (device, d) => new Stream(device, `bench-${d}`, shape.messagesPerDevice, shape.inflight),
    );
    const started = performance.now();
    await Promise.all(streams.map((stream) => stream.run()));
    const seconds = (performance.now() - started) / 1000;
    await Promise.all(devices.map((device) => device.endAsync()));

    const messages = shape.devices * shape.messagesPerDevice;
    const pool = new pg.Pool({ connectionString: databaseUrl });
    const { rows } = await pool.query<{ n: string; ids: string }>(
      "SELECT count(*) AS n, count(DISTINCT (topic, event_id)) AS ids FROM telemetry",
    );
    await pool.end();
    if (Number(rows[0]?.n) !== messages || Number(rows[0]?.ids) !== messages) {
      throw new Error(
        `${shape.label}: ${rows[0]?.n} rows (${rows[0]?.ids} distinct) for ${messages} messages`,
      );
    }
    const latencies = streams.flatMap((stream) => stream.latencies).sort((a, b) => a - b);
    return {
      ...shape,
      messages,
      seconds,
      perSecond: messages / seconds,
      p50Ms: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
      maxMs: latencies.at(-1) ?? 0,
    };
  } finally {
    service.child.kill("SIGTERM");
    await service.exited;
    await dropDatabase(serverUrl, name);
  }
}
