import cron from "node-cron";
import type pg from "pg";
import type { Logger } from "./logger.ts";

const DAY_MS = 86_400_000;

/** Days since 1970-01-01 UTC: the partition a timestamp belongs to. */
export function dayOf(timeMs: number): number {
  return Math.floor(timeMs / DAY_MS);
}

function isoDate(day: number): string {
  return new Date(day * DAY_MS).toISOString().slice(0, 10);
}

export function partitionName(day: number): string {
  return `telemetry_p${isoDate(day).replaceAll("-", "")}`;
}

const PARTITION_NAME = /^telemetry_p(\d{4})(\d{2})(\d{2})$/;

function dayOfPartition(name: string): number | undefined {
  const match = PARTITION_NAME.exec(name);
  if (!match) return undefined;
  return dayOf(Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])));
}

/** Arbitrary, fixed: every process creating or dropping this database's partitions takes the same lock. */
const PARTITIONS_LOCK = 7_352_114_021;

/**
 * SQLSTATEs of a CREATE … IF NOT EXISTS that lost the race with a creator
 * not taking the lock (a psql session, an older version mid-upgrade).
 */
const ALREADY_CREATED = new Set(["42P07", "23505"]);

export interface PartitionPolicy {
  daysAhead: number;
  retentionDays: number | undefined;
}

export type TimeVerdict =
  | { ok: true }
  | { ok: false; reason: "ts_in_future" | "ts_before_retention" };

/**
 * Owns the daily partitions of `telemetry`: creates them ahead of time and
 * on demand, and drops those past retention.
 *
 * A message for a day with no partition gets its partition created on
 * demand, as long as the day lies between the retention limit and
 * `daysAhead` days from today. Outside that range it is dead-lettered
 * (`ts_before_retention`, `ts_in_future`): a partition there would be dropped
 * at once, or would let a device with a broken clock create tables at will.
 *
 * Processes sharing the database take turns under an advisory lock and read
 * the catalog once they hold it: each partition is created, and dropped, by
 * one of them, and the others find it done.
 */
export class Partitions {
  private readonly known = new Set<number>();

  constructor(
    private readonly pool: pg.Pool,
    private readonly policy: PartitionPolicy,
    private readonly logger: Logger,
  ) {}

  /** Whether a message stamped `timeMs` may be stored, judged at `nowMs`. */
  judge(timeMs: number, nowMs = Date.now()): TimeVerdict {
    const day = dayOf(timeMs);
    const today = dayOf(nowMs);
    if (day > today + this.policy.daysAhead) return { ok: false, reason: "ts_in_future" };
    if (this.policy.retentionDays !== undefined && day < today - this.policy.retentionDays) {
      return { ok: false, reason: "ts_before_retention" };
    }
    return { ok: true };
  }

  /** The days that have a partition, as the catalog says now. */
  async list(db: pg.Pool | pg.PoolClient = this.pool): Promise<number[]> {
    const result = await db.query<{ name: string }>(
      `SELECT c.relname AS name
         FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'telemetry'::regclass`,
    );
    const days = result.rows
      .map((row) => dayOfPartition(row.name))
      .filter((day): day is number => day !== undefined)
      .sort((a, b) => a - b);
    this.known.clear();
    for (const day of days) this.known.add(day);
    return days;
  }

  /** Forgets what it knows, so the next `ensure` asks the catalog again. */
  invalidate(): void {
    this.known.clear();
  }

  /** Creates the partitions of these days that do not exist yet. */
  async ensure(days: Iterable<number>): Promise<number[]> {
    const missing = [...new Set(days)].filter((day) => !this.known.has(day));
    if (missing.length === 0) return [];
    const created = await this.locked(async (client) => {
      await this.list(client);
      const made: number[] = [];
      for (const day of missing) {
        if (this.known.has(day)) continue;
        if (await this.create(client, day)) made.push(day);
        this.known.add(day);
      }
      return made;
    });
    if (created.length > 0) {
      this.logger.info({ partitions: created.map(partitionName) }, "created partitions");
    }
    return created;
  }

  /** Runs `work` on one connection while it holds the partitions lock. */
  private async locked<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    let unlocked = false;
    try {
      await client.query("SELECT pg_advisory_lock($1)", [PARTITIONS_LOCK]);
      try {
        return await work(client);
      } finally {
        await client.query("SELECT pg_advisory_unlock($1)", [PARTITIONS_LOCK]);
        unlocked = true;
      }
    } finally {
      // A connection that may still hold the lock is closed, which releases it.
      client.release(!unlocked);
    }
  }

  private async create(client: pg.PoolClient, day: number): Promise<boolean> {
    try {
      await client.query(
        `CREATE TABLE IF NOT EXISTS ${partitionName(day)} PARTITION OF telemetry
           FOR VALUES FROM ('${isoDate(day)} 00:00:00+00') TO ('${isoDate(day + 1)} 00:00:00+00')`,
      );
      return true;
    } catch (error) {
      if (ALREADY_CREATED.has((error as { code?: string }).code ?? "")) return false;
      throw error;
    }
  }

  /** Creates today's partition and `daysAhead` more; drops those past retention. */
  async maintain(nowMs = Date.now()): Promise<{ created: number[]; dropped: number[] }> {
    const today = dayOf(nowMs);
    const ahead = Array.from({ length: this.policy.daysAhead + 1 }, (_, i) => today + i);
    this.invalidate();
    const created = await this.ensure(ahead);
    const dropped: number[] = [];
    if (this.policy.retentionDays !== undefined) {
      const oldestKept = today - this.policy.retentionDays;
      await this.locked(async (client) => {
        for (const day of await this.list(client)) {
          if (day >= oldestKept) break;
          await client.query(`DROP TABLE IF EXISTS ${partitionName(day)}`);
          this.known.delete(day);
          dropped.push(day);
        }
      });
      if (dropped.length > 0) {
        this.logger.info(
          { partitions: dropped.map(partitionName) },
          "dropped partitions past retention",
        );
      }
    }
    return { created, dropped };
  }

  /** Runs `maintain` on a cron schedule; a failed run is logged and retried at the next tick. */
  schedule(expression: string): { stop(): void } {
    const task = cron.schedule(expression, async () => {
      try {
        await this.maintain();
      } catch (error) {
        this.logger.error({ err: error }, "partition maintenance failed");
      }
    });
    return { stop: () => void task.stop() };
  }
}
