import cluster, { type Worker } from "node:cluster";
import client from "prom-client";
import type { Config } from "../bridge/config.ts";
import { openDatabase } from "../bridge/database.ts";
import type { Logger } from "../bridge/logger.ts";
import { byWorker, type Metrics, type MetricsJson, type Reports } from "../bridge/metrics.ts";
import { migrate } from "../bridge/migrate.ts";
import type { Listening } from "./announce.ts";

/** A worker that exits on its own is started again after this long. */
const RESTART_MS = 1000;
/** How long the primary waits for every worker's figures. */
const COLLECT_TIMEOUT_MS = 2000;

type ReportKind = "stats" | "metrics" | "worker-metrics";

/** Messages between the primary and its workers. */
type WorkerMessage =
  | { type: "ready"; listening: Listening }
  | { type: "report-request"; id: number; kind: ReportKind }
  | { type: "report-collect"; id: number }
  | { type: "report-part"; id: number; pid: number; stats: Stats; metrics: MetricsJson }
  | { type: "report-result"; id: number; body: unknown };

/** A worker's figures, with the number it was started as (kept across its restarts). */
type Part = Extract<WorkerMessage, { type: "report-part" }> & { worker: number };

type Stats = Record<string, unknown>;

/** Figures that do not add up across workers: the largest is kept. */
const LARGEST = new Set(["p50", "p99", "uptime_seconds", "last_batch_size"]);

/** Every worker's /stats as one: counts added up, latencies and uptime the largest. */
function combineStats(parts: readonly Stats[]): Stats {
  const combined: Stats = {};
  for (const part of parts) {
    for (const [key, value] of Object.entries(part)) {
      const sofar = combined[key];
      if (typeof value === "number") {
        const before = typeof sofar === "number" ? sofar : undefined;
        combined[key] =
          before === undefined
            ? value
            : LARGEST.has(key)
              ? Math.max(before, value)
              : before + value;
      } else if (value !== null && typeof value === "object") {
        combined[key] = combineStats([
          sofar !== null && typeof sofar === "object" ? (sofar as Stats) : {},
          value as Stats,
        ]);
      }
    }
  }
  return combined;
}

/**
 * The primary of WORKERS > 1: opens the database (starting the embedded one
 * when DATABASE_URL is unset) and migrates it once, then runs `config.workers`
 * copies of the service on the same MQTT and HTTP ports (node:cluster hands
 * each new connection to one of them). A worker that dies is started again.
 * Resolves with the listeners once every worker is ready; `stop` ends the
 * workers (each commits what it received) and then the database.
 */
export async function startWorkers(
  config: Config,
  logger: Logger,
): Promise<{ listening: Listening; embedded: boolean; stop(): Promise<void> }> {
  const database = await openDatabase(config, logger);
  let stopping = false;
  const workers = new Map<number, Worker>();
  const collections = new Map<number, { parts: Part[]; done: () => void }>();
  let nextId = 0;

  const fork = (index: number): Worker => {
    const worker = cluster.fork({
      DATABASE_URL: database.url,
      ...(config.source ? { SOURCE_CLIENT_ID: `${config.source.clientId}-w${index}` } : {}),
    });
    workers.set(index, worker);
    worker.on("message", (message: WorkerMessage) => void answer(index, worker, message));
    worker.on("exit", (code, signal) => {
      workers.delete(index);
      if (stopping) return;
      logger.error({ worker: index, code, signal }, "worker exited; starting it again");
      setTimeout(() => {
        if (!stopping) fork(index);
      }, RESTART_MS);
    });
    return worker;
  };

  /** Asks every worker for its figures; resolves with what arrived in time, by worker number. */
  const collect = async (): Promise<Part[]> => {
    const id = nextId++;
    const parts: Part[] = [];
    const expected = workers.size;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, COLLECT_TIMEOUT_MS);
      collections.set(id, {
        parts,
        done: () => {
          if (parts.length < expected) return;
          clearTimeout(timer);
          resolve();
        },
      });
      for (const worker of workers.values()) worker.send({ type: "report-collect", id });
    });
    collections.delete(id);
    return parts.sort((a, b) => a.worker - b.worker);
  };

  const report = async (kind: ReportKind): Promise<unknown> => {
    const parts = await collect();
    switch (kind) {
      case "stats":
        return {
          ...combineStats(parts.map((part) => part.stats)),
          workers: parts.map((part) => ({ worker: part.worker, pid: part.pid, ...part.stats })),
        };
      case "metrics":
        return client.AggregatorRegistry.aggregate(parts.map((part) => part.metrics)).metrics();
      case "worker-metrics":
        return byWorker(parts);
    }
  };

  const answer = async (index: number, worker: Worker, message: WorkerMessage) => {
    if (message.type === "report-part") {
      const collection = collections.get(message.id);
      collection?.parts.push({ ...message, worker: index });
      collection?.done();
      return;
    }
    if (message.type !== "report-request") return;
    const body = await report(message.kind);
    if (worker.isConnected()) worker.send({ type: "report-result", id: message.id, body });
  };

  const stop = async () => {
    stopping = true;
    await Promise.all(
      [...workers.values()].map(
        (worker) =>
          new Promise<void>((resolve) => {
            if (worker.isDead()) return resolve();
            worker.once("exit", () => resolve());
            worker.process.kill("SIGTERM");
          }),
      ),
    );
    await database.stop();
  };

  try {
    const applied = await migrate(database.url);
    if (applied.length > 0) logger.info({ applied }, "migrations applied");
    const ready = Array.from(
      { length: config.workers },
      (_, n) =>
        new Promise<Listening>((resolve, reject) => {
          const worker = fork(n + 1);
          worker.on("message", (message: WorkerMessage) => {
            if (message.type === "ready") resolve(message.listening);
          });
          worker.once("exit", (code) =>
            reject(new Error(`worker ${n + 1} exited (${code}) before it was ready`)),
          );
        }),
    );
    const [listening] = await Promise.all(ready);
    return { listening: listening as Listening, embedded: database.embedded, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * In a worker: tells the primary the service is ready, answers its
 * collections with this process's figures, and returns the Reports that
 * answer /stats and /metrics for all workers, through the primary.
 */
export function workerReports(local: Metrics): Reports {
  const pending = new Map<number, (body: unknown) => void>();
  let nextId = 0;
  process.on("message", (message: WorkerMessage) => {
    if (message.type === "report-collect") {
      void local.registry.getMetricsAsJSON().then((metrics) =>
        process.send?.({
          type: "report-part",
          id: message.id,
          pid: process.pid,
          stats: local.stats(),
          metrics,
        } satisfies WorkerMessage),
      );
    } else if (message.type === "report-result") {
      pending.get(message.id)?.(message.body);
      pending.delete(message.id);
    }
  });
  const ask = (kind: ReportKind) =>
    new Promise<unknown>((resolve) => {
      const id = nextId++;
      pending.set(id, resolve);
      process.send?.({ type: "report-request", id, kind } satisfies WorkerMessage);
    });
  return {
    contentType: local.registry.contentType,
    stats: () => ask("stats"),
    metrics: async () => String(await ask("metrics")),
    workerMetrics: async () => String(await ask("worker-metrics")),
  };
}

/** In a worker: tells the primary that this worker listens. */
export function announceWorker(listening: Listening): void {
  process.send?.({ type: "ready", listening } satisfies WorkerMessage);
}

export const isWorker = cluster.isWorker;
