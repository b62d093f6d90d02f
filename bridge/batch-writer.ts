import { createHash } from "node:crypto";
import { finished } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import { encodeRows } from "./copy-binary.ts";
import { DedupWindow } from "./dedup-window.ts";
import type { Logger } from "./logger.ts";
import type { Mappings } from "./mappings.ts";
import { dayOf, type Partitions } from "./partitions.ts";
import {
  CHECK_VIOLATION,
  copyErrorRow,
  isLostRace,
  isRetryable,
  isRowError,
  sqlstate,
  UNIQUE_VIOLATION,
} from "./pg-errors.ts";
import {
  parseTelemetry,
  type RawMessage,
  type RejectReason,
  type TelemetryRow,
} from "./telemetry-message.ts";
import { timestamp } from "./timestamp.ts";

/** What became of a message; settled only once that is committed. */
export type WriteOutcome =
  | { status: "stored" }
  | { status: "duplicate"; source: "window" | "database" }
  | { status: "rejected"; reason: RejectReason; detail: string };

const STORED: WriteOutcome = Object.freeze({ status: "stored" });
const DUPLICATE_WINDOW: WriteOutcome = Object.freeze({ status: "duplicate", source: "window" });
const DUPLICATE_DATABASE: WriteOutcome = Object.freeze({
  status: "duplicate",
  source: "database",
});

/** Told once what became of a message: after its COMMIT, or the error that stopped it. */
export interface Receipt {
  settle(outcome: WriteOutcome): void;
  fail(error: unknown): void;
}

export interface DeadLetter {
  topic: string;
  clientId: string | null;
  payload: Buffer;
  reason: RejectReason;
  detail: string;
  receivedAtMs: number;
}

export interface BatchWriterOptions {
  /** How to read topics in devices' own shapes; others are read as the default shape. */
  mappings?: Mappings;
  batchMaxRows: number;
  batchMaxWaitMs: number;
  queueMaxRows: number;
  /** Batches written at once, each in its own transaction: one formats while another commits. */
  concurrency: number;
  dedupWindowKeys: number;
  maxPayloadBytes: number;
  /** First and longest pause between attempts while PostgreSQL is unavailable. */
  retryInitialMs?: number;
  retryMaxMs?: number;
}

export interface WriterCounters {
  received: number;
  stored: number;
  duplicateWindow: number;
  duplicateDatabase: number;
  rejected: Partial<Record<RejectReason, number>>;
  batches: number;
  retries: number;
}

/** What one committed batch looked like, for metrics. */
export interface BatchReport {
  rows: number;
  rejected: number;
  /** From the batch's start to its COMMIT, retries included. */
  commitMs: number;
  /** Receipt → COMMIT for each message of the batch. */
  latenciesMs: number[];
}

interface Pending<T> {
  value: T;
  enqueuedAt: number;
  receipt: Receipt;
}

type RowItem = Pending<TelemetryRow> & {
  kind: "row";
  key: string;
  /** Copies of the message that arrived while it was being written: they share its outcome. */
  redeliveries: Receipt[] | undefined;
};
type LetterItem = Pending<DeadLetter> & { kind: "letter" };
type Item = RowItem | LetterItem;

const MAX_TOPICS_TRACKED = 100_000;

class WriterClosedError extends Error {
  override name = "WriterClosedError";
}

export const COPY_TELEMETRY =
  "COPY telemetry (time, topic, device_id, event_id, payload, received_at) FROM STDIN (FORMAT binary)";
const COPY_STAGING =
  "COPY telemetry_staging (time, topic, device_id, event_id, payload, received_at) FROM STDIN (FORMAT binary)";
const CREATE_STAGING =
  "CREATE TEMP TABLE IF NOT EXISTS telemetry_staging (LIKE telemetry) ON COMMIT DELETE ROWS";
/**
 * Rows go in the unique index's order: two processes merging the same keys
 * then meet at their first common key, and one waits for the other instead
 * of each holding a key the other needs (a deadlock, which PostgreSQL breaks
 * only after deadlock_timeout).
 */
const MERGE_STAGING = `INSERT INTO telemetry SELECT * FROM telemetry_staging
  ORDER BY time, topic, event_id
  ON CONFLICT DO NOTHING
  RETURNING topic, event_id, (extract(epoch FROM time) * 1000)::bigint AS time_ms`;

/** The longest pause before a batch that lost a race goes again, so two losers do not meet again. */
const LOST_RACE_JITTER_MS = 20;

/** What a dead letter keeps of its payload; the full size and SHA-256 stand for the rest. */
export const DEAD_LETTER_PAYLOAD_BYTES = 4096;

/** One row per (reason, topic, payload): a resent letter counts in `occurrences`. */
const RECORD_LETTERS = `INSERT INTO telemetry_rejected AS r (received_at, last_received_at,
    occurrences, client_id, topic, reason, detail, payload, payload_bytes, payload_sha256)
  SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[], $3::int[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::bytea[], $9::int[], $10::bytea[])
  ON CONFLICT (reason, md5(topic), payload_sha256) DO UPDATE
    SET occurrences = r.occurrences + excluded.occurrences,
        last_received_at = greatest(r.last_received_at, excluded.last_received_at)`;

/** Text columns hold neither U+0000, which topics and client ids may carry, nor lone surrogates. */
function storable(value: string): string {
  return value.replaceAll("\u0000", "\uFFFD").toWellFormed();
}

/** Letters alike, as one row. */
interface LetterGroup {
  first: DeadLetter;
  topic: string;
  sha256: Buffer;
  lastMs: number;
  count: number;
}

/**
 * The statement's parameters: one row per distinct letter, in key order so
 * that two transactions recording the same letters lock them in one order.
 */
function letterParameters(letters: DeadLetter[]): unknown[][] {
  const groups = new Map<string, LetterGroup>();
  for (const letter of letters) {
    const topic = storable(letter.topic);
    const sha256 = createHash("sha256").update(letter.payload).digest();
    const key = `${letter.reason}\u0000${topic}\u0000${sha256.toString("hex")}`;
    const group = groups.get(key);
    if (group) {
      group.count++;
      group.lastMs = Math.max(group.lastMs, letter.receivedAtMs);
    } else {
      groups.set(key, { first: letter, topic, sha256, lastMs: letter.receivedAtMs, count: 1 });
    }
  }
  const rows = [...groups.keys()].sort().map((key) => {
    const { first, topic, sha256, lastMs, count } = groups.get(key) as LetterGroup;
    return [
      timestamp(first.receivedAtMs),
      timestamp(lastMs),
      count,
      first.clientId === null ? null : storable(first.clientId),
      topic,
      first.reason,
      storable(first.detail),
      first.payload.subarray(0, DEAD_LETTER_PAYLOAD_BYTES),
      first.payload.length,
      sha256,
    ];
  });
  // unnest takes a column at a time.
  return Array.from({ length: 10 }, (_, column) => rows.map((row) => row[column]));
}

/** Sends `data` to a `COPY … FROM STDIN` and waits for PostgreSQL to accept it. */
export async function copyIn(
  client: pg.PoolClient,
  sql: string,
  data: Buffer | string,
): Promise<void> {
  const stream = client.query(copyFrom(sql));
  stream.end(data);
  await finished(stream);
}

function describe(error: unknown): string {
  const code = sqlstate(error) ?? (error as NodeJS.ErrnoException).code;
  const message = error instanceof Error ? error.message : String(error);
  return code ? `${code} ${message}` : message;
}

/**
 * Turns messages into committed rows, many at a time.
 *
 * Messages queue until `batchMaxRows` are waiting or the oldest has waited
 * `batchMaxWaitMs`; then one transaction (up to `concurrency` at once) COPYs them into `telemetry` and
 * their dead letters into `telemetry_rejected`. If the unique index finds a
 * message already stored, the batch is written again through a staging
 * table with `ON CONFLICT DO NOTHING`, which tells stored from duplicate;
 * later batches take that path first until one finds no duplicate.
 * A row PostgreSQL refuses is dead-lettered and the rest written again;
 * connection failures and retryable SQLSTATEs are retried with backoff for
 * as long as it takes, while callers wait. A batch that lost a race with
 * another process writing the same keys (a deadlock) goes again at once,
 * through the staging table.
 *
 * Every outcome (a receipt told, a promise settled) comes after COMMIT, so
 * a caller that acknowledges on it never acknowledges what could still be
 * lost.
 */
export class BatchWriter {
  readonly window: DedupWindow;
  /** Distinct topics stored or rejected since start, up to MAX_TOPICS_TRACKED. */
  readonly topics = new Set<string>();
  readonly counters: WriterCounters = {
    received: 0,
    stored: 0,
    duplicateWindow: 0,
    duplicateDatabase: 0,
    rejected: {},
    batches: 0,
    retries: 0,
  };
  private readonly options: Required<Omit<BatchWriterOptions, "mappings">>;
  private readonly mappings: Mappings | undefined;
  private readonly queue: Item[] = [];
  /** Callers past `queueMaxRows`: their messages join the queue as it drains. */
  private readonly waiting: Item[] = [];
  /** Keys queued or being written: a redelivery waits for the first copy's outcome. */
  private readonly inflight = new Map<string, RowItem>();
  private readonly drained: (() => void)[] = [];
  /** Batches being written, each on its own connection. */
  private active = 0;
  /** Messages in those batches. */
  private writing = 0;
  private closing = false;
  /**
   * Set when the unique index last found duplicates (typically right after a
   * restart, with the window empty): batches then go straight through the
   * staging table instead of failing a plain COPY first.
   */
  private expectDuplicates = false;
  /** True while a batch waits for PostgreSQL to come back. */
  private retrying = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly reporters: ((report: BatchReport) => void)[] = [];

  constructor(
    private readonly pool: pg.Pool,
    private readonly partitions: Partitions,
    options: BatchWriterOptions,
    private readonly logger: Logger,
  ) {
    this.options = { retryInitialMs: 100, retryMaxMs: 5000, ...options };
    this.mappings = options.mappings;
    this.window = new DedupWindow(options.dedupWindowKeys);
  }

  /** Messages held by the writer and not yet committed. */
  get queueDepth(): number {
    return this.queued + this.writing;
  }

  /** Messages waiting for a batch to take them. */
  get queued(): number {
    return this.queue.length + this.waiting.length;
  }

  /** True while callers are waiting for room in the queue. */
  get saturated(): boolean {
    return this.waiting.length > 0;
  }

  /** True while PostgreSQL cannot be reached and batches are being retried. */
  get unavailable(): boolean {
    return this.retrying;
  }

  /** Calls `reporter` after every committed batch. */
  onBatch(reporter: (report: BatchReport) => void): void {
    this.reporters.push(reporter);
  }

  /**
   * Validates a raw message, then writes it or dead-letters it. A message
   * in the default shape (`event_id` and `ts`), as the HTTP API makes, can
   * be read so on any topic: a mapped topic then gives only its device.
   */
  ingest(message: RawMessage, shape: "topic" | "default" = "topic"): Promise<WriteOutcome> {
    return new Promise((settle, fail) => this.submit(message, { settle, fail }, shape));
  }

  /** `ingest` for callers that take a receipt instead of a promise for each message. */
  submit(message: RawMessage, receipt: Receipt, shape: "topic" | "default" = "topic"): void {
    const max = this.options.maxPayloadBytes;
    const parsed =
      shape === "topic"
        ? (this.mappings?.read(message, max) ?? parseTelemetry(message, max))
        : parseTelemetry(message, max, this.mappings?.deviceOf(message.topic));
    if (parsed.ok) {
      this.writeRow(parsed.row, receipt);
      return;
    }
    this.submitLetter(
      {
        topic: message.topic,
        clientId: message.clientId,
        payload: message.payload,
        reason: parsed.reason,
        detail: parsed.detail,
        receivedAtMs: message.receivedAtMs,
      },
      receipt,
    );
  }

  write(row: TelemetryRow): Promise<WriteOutcome> {
    return new Promise((settle, fail) => this.writeRow(row, { settle, fail }));
  }

  /** Records a message that cannot be stored as telemetry; settles after COMMIT. */
  deadLetter(letter: DeadLetter): Promise<WriteOutcome> {
    return new Promise((settle, fail) => this.submitLetter(letter, { settle, fail }));
  }

  /** `deadLetter` for callers that take a receipt. */
  submitLetter(letter: DeadLetter, receipt: Receipt): void {
    if (this.refusedWhenClosed(receipt)) return;
    this.counters.received++;
    this.queueLetter(letter, receipt);
  }

  private writeRow(row: TelemetryRow, receipt: Receipt): void {
    if (this.refusedWhenClosed(receipt)) return;
    this.counters.received++;
    if (this.topics.size < MAX_TOPICS_TRACKED) this.topics.add(row.topic);
    const verdict = this.partitions.judge(row.timeMs);
    if (!verdict.ok) {
      this.queueLetter(
        {
          topic: row.topic,
          clientId: row.clientId,
          payload: row.payload,
          reason: verdict.reason,
          detail: `ts ${timestamp(row.timeMs)} is outside the partitions kept`,
          receivedAtMs: row.receivedAtMs,
        },
        receipt,
      );
      return;
    }
    const key = this.window.key(row.topic, row.eventId, row.timeMs);
    if (this.window.has(key)) {
      this.counters.duplicateWindow++;
      receipt.settle(DUPLICATE_WINDOW);
      return;
    }
    const first = this.inflight.get(key);
    if (first) {
      first.redeliveries ??= [];
      first.redeliveries.push(receipt);
      return;
    }
    const item: RowItem = {
      kind: "row",
      key,
      value: row,
      enqueuedAt: Date.now(),
      receipt,
      redeliveries: undefined,
    };
    this.inflight.set(key, item);
    this.enqueue(item);
  }

  /** Fails the receipt once the writer takes no more messages. */
  private refusedWhenClosed(receipt: Receipt): boolean {
    if (this.closing) receipt.fail(new WriterClosedError("the writer is closed"));
    return this.closing;
  }

  private queueLetter(letter: DeadLetter, receipt: Receipt): void {
    this.enqueue({ kind: "letter", value: letter, enqueuedAt: Date.now(), receipt });
  }

  /** Resolves once everything handed over so far is committed (or failed). */
  flush(): Promise<void> {
    if (this.queueDepth === 0) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.drained.push(resolve));
    void this.run();
    return done;
  }

  /** Refuses new messages and commits those already handed over. */
  async close(): Promise<void> {
    this.closing = true;
    await this.flush();
  }

  private enqueue(item: Item): void {
    if (this.queue.length < this.options.queueMaxRows) this.queue.push(item);
    else this.waiting.push(item);
    this.schedule();
  }

  private schedule(): void {
    if (this.active >= this.options.concurrency || this.timer || this.queue.length === 0) return;
    const oldest = this.queue[0] as Item;
    const due = oldest.enqueuedAt + this.options.batchMaxWaitMs - Date.now();
    if (this.queue.length >= this.options.batchMaxRows || this.closing || due <= 0) {
      void this.run();
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run();
    }, due);
  }

  private async run(): Promise<void> {
    if (this.active >= this.options.concurrency) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.queue.length === 0) {
      if (this.active === 0) this.notifyDrained();
      return;
    }
    this.active++;
    const batch = this.queue.splice(0, this.options.batchMaxRows);
    this.writing += batch.length;
    const room = this.options.queueMaxRows - this.queue.length;
    if (room > 0 && this.waiting.length > 0) this.queue.push(...this.waiting.splice(0, room));
    // A second full batch need not wait for this one.
    this.schedule();
    try {
      const started = performance.now();
      const rows = batch.filter((item): item is RowItem => item.kind === "row");
      const letters = batch.filter((item): item is LetterItem => item.kind === "letter");
      await this.commit(rows, letters);
      this.counters.batches++;
      const commitMs = performance.now() - started;
      this.logger.debug(
        { rows: rows.length, rejected: letters.length, ms: Math.round(commitMs) },
        "batch committed",
      );
      if (this.reporters.length > 0) {
        const now = Date.now();
        const report: BatchReport = {
          rows: rows.length,
          rejected: letters.length,
          commitMs,
          latenciesMs: batch.map((item) => now - item.value.receivedAtMs),
        };
        for (const reporter of this.reporters) reporter(report);
      }
    } catch (error) {
      this.logger.error({ err: error, messages: batch.length }, "batch failed; not acknowledged");
      for (const item of batch) this.failItem(item, error);
    } finally {
      this.active--;
      this.writing -= batch.length;
      if (this.queue.length > 0) this.schedule();
      else if (this.active === 0) this.notifyDrained();
    }
  }

  private notifyDrained(): void {
    for (const resolve of this.drained.splice(0)) resolve();
  }

  /**
   * Commits rows and dead letters, retrying until it succeeds or meets an
   * error that retrying cannot fix.
   */
  private async commit(rows: RowItem[], letters: LetterItem[]): Promise<void> {
    let merge = this.expectDuplicates;
    let partitionsRefreshed = false;
    let attempt = 0;
    for (;;) {
      try {
        const stored = await this.writeOnce(rows, letters, merge);
        this.retrying = false;
        if (stored !== undefined) this.expectDuplicates = stored.size < rows.length;
        this.settle(rows, letters, stored);
        return;
      } catch (error) {
        const code = sqlstate(error);
        if (isLostRace(error)) {
          this.counters.retries++;
          this.logger.info(
            { rows: rows.length, error: describe(error) },
            "batch lost a race with another transaction; retrying",
          );
          // Another process is writing the same keys: the staging path
          // takes them in index order and tells stored from duplicate.
          if (rows.length > 0) merge = true;
          await sleep(Math.random() * LOST_RACE_JITTER_MS);
          continue;
        }
        if (isRetryable(error)) {
          this.retrying = true;
          attempt++;
          this.counters.retries++;
          const pause = Math.min(
            this.options.retryMaxMs,
            this.options.retryInitialMs * 2 ** Math.min(attempt - 1, 16),
          );
          this.logger.warn(
            { attempt, retryInMs: pause, rows: rows.length, error: describe(error) },
            "PostgreSQL unavailable; retrying the batch",
          );
          await sleep(pause * (0.75 + Math.random() * 0.5));
          continue;
        }
        if (code === UNIQUE_VIOLATION && !merge) {
          merge = true;
          this.expectDuplicates = true;
          continue;
        }
        if (code === CHECK_VIOLATION && !partitionsRefreshed) {
          partitionsRefreshed = true;
          this.partitions.invalidate();
          continue;
        }
        if (!isRowError(error)) throw error;
        const index =
          copyErrorRow(error, merge ? "telemetry_staging" : "telemetry") ??
          (rows.length === 1 ? 0 : undefined);
        const refused = index === undefined ? undefined : rows[index];
        if (refused) {
          rows = rows.filter((row) => row !== refused);
          letters = [...letters, this.refusedLetter(refused, error)];
          continue;
        }
        // The error does not say which row: write each half on its own.
        const half = Math.ceil(rows.length / 2);
        await this.commit(rows.slice(0, half), letters);
        await this.commit(rows.slice(half), []);
        return;
      }
    }
  }

  /** Turns a refused row into a dead letter whose outcome is the row's. */
  private refusedLetter(item: RowItem, error: unknown): LetterItem {
    const row = item.value;
    return {
      kind: "letter",
      value: {
        topic: row.topic,
        clientId: row.clientId,
        payload: row.payload,
        reason: "database_refused",
        detail: describe(error),
        receivedAtMs: row.receivedAtMs,
      },
      enqueuedAt: item.enqueuedAt,
      receipt: {
        settle: (outcome) => this.settleRow(item, outcome),
        fail: (failure) => this.failItem(item, failure),
      },
    };
  }

  /** One transaction; returns the keys stored, or undefined when every row was. */
  private async writeOnce(
    rows: RowItem[],
    letters: LetterItem[],
    merge: boolean,
  ): Promise<Set<string> | undefined> {
    if (rows.length > 0) await this.partitions.ensure(rows.map((item) => dayOf(item.value.timeMs)));
    const client = await this.pool.connect();
    let failure: unknown;
    // A checked-out client reports a dropped connection as an event, not to the pool.
    const onError = (error: Error) => {
      failure ??= error;
    };
    client.on("error", onError);
    // The common batch is one COPY: outside a transaction block it commits on
    // its own, so BEGIN and COMMIT would only add round trips, and under load
    // each round trip waits for a turn of a busy event loop.
    const single = !merge && letters.length === 0;
    try {
      if (!single) await client.query("BEGIN");
      let stored: Set<string> | undefined;
      if (rows.length > 0 && !merge) {
        await copyIn(client, COPY_TELEMETRY, encodeRows(rows.map((item) => item.value)));
      } else if (rows.length > 0) {
        await client.query(CREATE_STAGING);
        await copyIn(client, COPY_STAGING, encodeRows(rows.map((item) => item.value)));
        const inserted = await client.query<{ topic: string; event_id: string; time_ms: string }>(
          MERGE_STAGING,
        );
        stored = new Set(
          inserted.rows.map((row) => this.window.key(row.topic, row.event_id, Number(row.time_ms))),
        );
      }
      if (letters.length > 0) {
        await client.query(RECORD_LETTERS, letterParameters(letters.map((item) => item.value)));
      }
      if (!single) await client.query("COMMIT");
      return stored;
    } catch (error) {
      failure = error;
      if (!single) await client.query("ROLLBACK").catch(() => {});
      throw error;
    } finally {
      // A connection that failed for any reason but bad data or a lost race is not trusted again.
      const reusable =
        failure === undefined ||
        sqlstate(failure) === UNIQUE_VIOLATION ||
        isRowError(failure) ||
        isLostRace(failure);
      client.off("error", onError);
      client.release(!reusable);
    }
  }

  private settle(rows: RowItem[], letters: LetterItem[], stored: Set<string> | undefined): void {
    for (const item of rows) {
      this.settleRow(
        item,
        stored === undefined || stored.has(item.key) ? STORED : DUPLICATE_DATABASE,
      );
    }
    for (const item of letters) {
      const { reason, detail } = item.value;
      this.counters.rejected[reason] = (this.counters.rejected[reason] ?? 0) + 1;
      item.receipt.settle({ status: "rejected", reason, detail });
    }
  }

  private settleRow(item: RowItem, outcome: WriteOutcome): void {
    if (outcome.status === "stored") this.counters.stored++;
    if (outcome.status === "duplicate") this.counters.duplicateDatabase++;
    // Into the window before leaving inflight, so no redelivery slips between.
    if (outcome.status !== "rejected") this.window.add(item.key);
    this.inflight.delete(item.key);
    item.receipt.settle(outcome);
    for (const receipt of item.redeliveries ?? []) {
      if (outcome.status === "rejected") {
        receipt.settle(outcome);
      } else {
        this.counters.duplicateWindow++;
        receipt.settle(DUPLICATE_WINDOW);
      }
    }
  }

  private failItem(item: Item, error: unknown): void {
    if (item.kind === "row") {
      this.inflight.delete(item.key);
      for (const receipt of item.redeliveries ?? []) receipt.fail(error);
    }
    item.receipt.fail(error);
  }
}
