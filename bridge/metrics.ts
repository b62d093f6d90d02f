import client from "prom-client";
import type { Access } from "../broker/auth/access.ts";
import type { MqttServer } from "../broker/mqtt-server.ts";
import type { BatchReport, BatchWriter } from "./batch-writer.ts";
import type { Partitions } from "./partitions.ts";
import { percentile } from "./percentile.ts";

const RECENT_MS = 60_000;
const LATENCY_SAMPLES = 1000;

export interface MetricsSources {
  writer: BatchWriter;
  access: Pick<Access, "counters">;
  /** Unset while the embedded broker is off. */
  mqtt: Pick<MqttServer, "gate" | "oversizedPackets"> | undefined;
  partitions: Partitions;
  connectedClients(): number;
}

/**
 * What `/stats`, `/metrics` and `/metrics/workers` answer: this process's
 * figures, or every worker's.
 */
export interface Reports {
  readonly contentType: string;
  stats(): Promise<unknown>;
  /** Every series, summed over the workers. */
  metrics(): Promise<string>;
  /** Every worker's series apart, each labelled with its worker's number. */
  workerMetrics(): Promise<string>;
}

/** A registry's series as prom-client exports them for aggregation. */
export type MetricsJson = client.MetricObjectWithValues<client.MetricValue<string>>[];

/** This process's figures alone: its series are worker 1's. */
export function localReports(metrics: Metrics): Reports {
  return {
    contentType: metrics.registry.contentType,
    stats: async () => metrics.stats(),
    metrics: () => metrics.registry.metrics(),
    workerMetrics: async () =>
      byWorker([{ worker: 1, metrics: await metrics.registry.getMetricsAsJSON() }]),
  };
}

/**
 * One exposition of several workers' series, each series labelled
 * `worker`: its counters and histograms, summed without `worker`, are
 * those of `/metrics`.
 */
export function byWorker(parts: { worker: number; metrics: MetricsJson }[]): Promise<string> {
  return client.AggregatorRegistry.aggregate(
    parts.map(({ worker, metrics }) =>
      metrics.map((metric) => ({
        ...metric,
        // Each value is alone under its labels: the first is itself.
        aggregator: "first" as const,
        values: metric.values.map((value) => ({
          ...value,
          labels: { ...value.labels, worker: String(worker) },
        })),
      })),
    ),
  ).metrics();
}

/**
 * Prometheus metrics (`/metrics`) and the figures of `/stats`, both read
 * from the writer's counters and from a report of every committed batch.
 */
export class Metrics {
  readonly registry = new client.Registry();
  private readonly startedAt = Date.now();
  private readonly recent: { at: number; rows: number }[] = [];
  private readonly commitMs: number[] = [];
  private lastBatchSize = 0;

  constructor(private readonly sources: MetricsSources) {
    const { writer } = sources;
    const registers = [this.registry];
    client.collectDefaultMetrics({ register: this.registry, prefix: "telemetry_bridge_" });

    const counted = (name: string, help: string, read: () => number) => {
      let last = 0;
      new client.Counter({
        name,
        help,
        registers,
        collect() {
          const now = read();
          this.inc(now - last);
          last = now;
        },
      });
    };
    counted(
      "telemetry_bridge_received_total",
      "Messages handed to the writer.",
      () => writer.counters.received,
    );
    counted(
      "telemetry_bridge_stored_total",
      "Messages committed as telemetry rows.",
      () => writer.counters.stored,
    );

    const seen = new Map<string, number>();
    new client.Counter({
      name: "telemetry_bridge_duplicates_total",
      help: "Redeliveries dropped, by where they were recognised.",
      labelNames: ["source"],
      registers,
      collect() {
        for (const [source, now] of [
          ["window", writer.counters.duplicateWindow],
          ["database", writer.counters.duplicateDatabase],
        ] as const) {
          this.inc({ source }, now - (seen.get(source) ?? 0));
          seen.set(source, now);
        }
      },
    });
    /** A counter per label value, read from a record of running totals. */
    const countedBy = (
      name: string,
      help: string,
      label: string,
      read: () => Partial<Record<string, number>>,
    ) => {
      const seenBy = new Map<string, number>();
      new client.Counter({
        name,
        help,
        labelNames: [label],
        registers,
        collect() {
          for (const [value, now = 0] of Object.entries(read())) {
            this.inc({ [label]: value }, now - (seenBy.get(value) ?? 0));
            seenBy.set(value, now);
          }
        },
      });
    };
    countedBy(
      "telemetry_bridge_rejected_total",
      "Messages dead-lettered to telemetry_rejected, by reason.",
      "reason",
      () => writer.counters.rejected,
    );
    countedBy(
      "telemetry_bridge_auth_failures_total",
      "MQTT connections refused at CONNECT, by reason.",
      "reason",
      () => sources.access.counters.authFailures,
    );
    countedBy(
      "telemetry_bridge_connections_refused_total",
      "MQTT connections closed at the door, by the limit they were over, or as untrusted_proxy: not from TRUSTED_PROXIES while MQTT_PROXY_PROTOCOL=on.",
      "reason",
      () => sources.mqtt?.gate.refused ?? {},
    );
    counted(
      "telemetry_bridge_oversized_packets_total",
      "MQTT connections closed for a packet over MQTT_MAX_PACKET_BYTES.",
      () => sources.mqtt?.oversizedPackets ?? 0,
    );
    counted(
      "telemetry_bridge_subscriptions_denied_total",
      "Subscriptions refused by the ACL (SUBACK 0x80).",
      () => sources.access.counters.subscriptionsDenied,
    );

    const batchSize = new client.Histogram({
      name: "telemetry_bridge_batch_size",
      help: "Messages per committed batch.",
      buckets: [1, 10, 50, 100, 500, 1000, 2000, 5000, 10000],
      registers,
    });
    const commitSeconds = new client.Histogram({
      name: "telemetry_bridge_commit_seconds",
      help: "Time from a batch's start to its COMMIT, retries included.",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30],
      registers,
    });
    const publishToCommit = new client.Histogram({
      name: "telemetry_bridge_publish_to_commit_seconds",
      help: "Time from a message's receipt to its COMMIT: how long its sender waits for the acknowledgement.",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30],
      registers,
    });

    new client.Gauge({
      name: "telemetry_bridge_connected_clients",
      help: "MQTT clients connected.",
      registers,
      collect() {
        this.set(sources.connectedClients());
      },
    });
    new client.Gauge({
      name: "telemetry_bridge_inflight_messages",
      help: "Messages received and not yet committed.",
      registers,
      collect() {
        this.set(writer.queueDepth);
      },
    });
    new client.Gauge({
      name: "telemetry_bridge_queue_depth",
      help: "Messages waiting for a batch.",
      registers,
      collect() {
        this.set(writer.queued);
      },
    });
    new client.Gauge({
      name: "telemetry_bridge_partitions",
      help: "Daily partitions of the telemetry table.",
      registers,
      // Every worker counts the same table.
      aggregator: "max",
      async collect() {
        this.set((await sources.partitions.list()).length);
      },
    });

    writer.onBatch((report: BatchReport) => {
      const size = report.rows + report.rejected;
      batchSize.observe(size);
      commitSeconds.observe(report.commitMs / 1000);
      for (const ms of report.latenciesMs) publishToCommit.observe(ms / 1000);
      this.lastBatchSize = size;
      const now = Date.now();
      this.recent.push({ at: now, rows: report.rows });
      while ((this.recent[0]?.at ?? now) < now - RECENT_MS) this.recent.shift();
      this.commitMs.push(report.commitMs);
      if (this.commitMs.length > LATENCY_SAMPLES) this.commitMs.shift();
    });
  }

  /** The figures of GET /stats. */
  stats() {
    const { writer } = this.sources;
    const c = writer.counters;
    const rejected = Object.values(c.rejected).reduce((sum, n) => sum + (n ?? 0), 0);
    const now = Date.now();
    const lastMinute = this.recent.filter((batch) => batch.at >= now - RECENT_MS);
    const elapsed = Math.min(RECENT_MS, now - this.startedAt) / 1000;
    const commitMs = [...this.commitMs].sort((a, b) => a - b);
    return {
      received: c.received,
      unique_processed: c.stored,
      duplicate_dropped: {
        total: c.duplicateWindow + c.duplicateDatabase,
        window: c.duplicateWindow,
        database: c.duplicateDatabase,
      },
      rejected: { total: rejected, by_reason: { ...c.rejected } },
      topics: writer.topics.size,
      connected_devices: this.sources.connectedClients(),
      uptime_seconds: Math.round((now - this.startedAt) / 1000),
      batches: {
        committed: c.batches,
        rows_per_second_last_minute:
          elapsed > 0
            ? Math.round(lastMinute.reduce((sum, batch) => sum + batch.rows, 0) / elapsed)
            : 0,
        last_batch_size: this.lastBatchSize,
        commit_latency_ms: {
          p50: Math.round(percentile(commitMs, 50) * 10) / 10,
          p99: Math.round(percentile(commitMs, 99) * 10) / 10,
        },
        queue_depth: writer.queueDepth,
      },
    };
  }
}
