import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { runMarker } from "./faults.ts";
import type { FleetRun } from "./fleet.ts";
import type { SimOptions } from "./options.ts";
import type { OpenProfile } from "./profiles/index.ts";
import { SPARKPLUG_METRICS } from "./profiles/sparkplug-b.ts";

export interface Verification {
  pass: boolean;
  /** Unique events the broker acknowledged (QoS 1) or that were sent (QoS 0). */
  expected: number;
  stored: number;
  missing: number;
  /** Events stored twice; for a profile without id or time, rows beyond one per event (allowed). */
  duplicated: number;
  /** Rows of this run's devices that no acknowledged event accounts for. */
  unexpected: number;
  rejected: number;
  badExpected: number;
  problems: string[];
  /** With --verify-wait: seconds from the end of the run until the check that is reported. */
  waitedS?: number;
}

/** How far storage has got, after each check while verification waits. */
export interface StorageProgress {
  /** Expected events stored. */
  stored: number;
  expected: number;
  /** Acknowledged malformed messages dead-lettered. */
  deadLetters: number;
  badExpected: number;
  waitedS: number;
  leftS: number;
  /**
   * Why the wait is over: everything is stored, the time is up, or, with
   * QoS 0, nothing more was stored for a while; absent while it goes on.
   */
  ended?: "stored" | "timeout" | "settled";
}

/** Between two checks while verification waits. */
const POLL_MS = 1_000;

/** With QoS 0 a message may be lost: once nothing more is stored for this long, waiting ends. */
export const QOS0_SETTLE_MS = 5_000;

/**
 * The service's clock and the simulator's may differ a little: rows received
 * this long before or after the run count as the run's.
 */
const CLOCK_MARGIN_MS = 10_000;

/** What PostgreSQL holds of a run's events. */
interface Tally {
  expected: number;
  stored: number;
  /** An entry per delivered event without a row. */
  missing: string[];
  /** An entry per row beyond one per delivered event. */
  duplicated: string[];
  unexpected: number;
  /** Rows that no message of the run accounts for, acknowledged or not. */
  strangers: string[];
}

/** The devices' keys: event ids, or a profile's `<topic> <ms>/<event id>`. */
function keysOf(run: FleetRun): { delivered: Set<string>; unacked: Set<string> } {
  const delivered = new Set<string>();
  const unacked = new Set<string>();
  for (const device of run.devices) {
    for (const key of device.delivered.keys()) delivered.add(key);
    for (const key of device.unacked) unacked.add(key);
  }
  return { delivered, unacked };
}

/** A profile's key, `<topic> <ms>/<event id>`, in its parts. */
const KEY = /^(.*) (\d+)\/(.*)$/;

/** Compares the run's rows, counted by key, with the keys it sent: each event has one row. */
function tallyByKey(
  { delivered, unacked }: { delivered: Set<string>; unacked: Set<string> },
  found: Map<string, number>,
): Tally {
  const unexpected = [...found.keys()].filter((key) => !delivered.has(key));
  return {
    expected: delivered.size,
    stored: found.size,
    missing: [...delivered].filter((key) => !found.has(key)),
    duplicated: [...found].filter(([, copies]) => copies > 1).map(([key]) => key),
    unexpected: unexpected.length,
    // Sent but never acknowledged (the run ended or the connection dropped first) may be stored or not.
    strangers: unexpected.filter((key) => !unacked.has(key)),
  };
}

/**
 * The default shape: a device id that is an identity outlives the run, so
 * this run's rows are those whose event id is the device's prefix (with the
 * run id) and a seq.
 */
async function tallyRunEvents(client: pg.Client, run: FleetRun): Promise<Tally> {
  const { rows } = await client.query<{ event_id: string; copies: number }>(
    `SELECT t.event_id, count(*)::int AS copies
       FROM telemetry t
       JOIN unnest($1::text[], $2::text[]) AS d(device_id, prefix)
         ON t.device_id = d.device_id AND starts_with(t.event_id, d.prefix)
      WHERE substr(t.event_id, length(d.prefix) + 1) ~ '^[0-9]+$'
      GROUP BY t.event_id`,
    [run.devices.map((device) => device.deviceId), run.devices.map((device) => device.eventPrefix)],
  );
  return tallyByKey(keysOf(run), new Map(rows.map((row) => [row.event_id, row.copies])));
}

/**
 * A profile whose rows are told apart by (topic, time, event id): each
 * delivered event is looked up by its device, topic, time and event id as
 * the mapping reads them, and the rows the service received during the run
 * are counted against them.
 */
async function tallyKeyed(client: pg.Client, run: FleetRun, open: OpenProfile): Promise<Tally> {
  const keys = keysOf(run);
  const wanted = [...keys.delivered].map((key) => {
    const [, topic = "", ms, eventId = ""] = KEY.exec(key) ?? [];
    return {
      topic,
      deviceId: open.mappings.deviceOf(topic),
      time: new Date(Number(ms)).toISOString(),
      eventId,
    };
  });
  const byKey = await client.query<{ topic: string; ms: string; event_id: string; copies: number }>(
    `SELECT k.topic, (extract(epoch FROM k.time) * 1000)::bigint::text AS ms, k.event_id,
            count(*)::int AS copies
       FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])
            AS k(topic, device_id, time, event_id)
       JOIN telemetry t
         ON t.time = k.time AND t.topic = k.topic AND t.event_id = k.event_id
        AND t.device_id = k.device_id
      GROUP BY k.topic, k.time, k.event_id`,
    [
      wanted.map((key) => key.topic),
      wanted.map((key) => key.deviceId),
      wanted.map((key) => key.time),
      wanted.map((key) => key.eventId),
    ],
  );
  const received = await client.query<{
    topic: string;
    ms: string;
    event_id: string;
    copies: number;
  }>(
    `SELECT topic, (extract(epoch FROM time) * 1000)::bigint::text AS ms, event_id,
            count(*)::int AS copies
       FROM telemetry
      WHERE device_id = ANY($1) AND topic = ANY($2) AND received_at BETWEEN $3 AND $4
      GROUP BY topic, time, event_id`,
    [...scopeOf(run, open), ...windowOf(run)],
  );
  const found = new Map<string, number>();
  for (const row of [...byKey.rows, ...received.rows]) {
    const key = `${row.topic} ${row.ms}/${row.event_id}`;
    found.set(key, Math.max(found.get(key) ?? 0, row.copies));
  }
  const tally = tallyByKey(keys, found);
  // `<topic> <ms>/<event id>` reads better as `<topic> <ISO time> <event id>`.
  const readable = (key: string) =>
    key.replace(
      KEY,
      (_, topic: string, ms: string, eventId: string) =>
        `${topic} ${new Date(Number(ms)).toISOString()}${eventId ? ` ${eventId}` : ""}`,
    );
  return {
    ...tally,
    missing: tally.missing.map(readable),
    duplicated: tally.duplicated.map(readable),
    strangers: tally.strangers.map(readable),
  };
}

/**
 * A profile without id or time, whose rows are stored at least once: the
 * rows the service received during the run, grouped by topic and payload,
 * against the events delivered with each payload (two readings can be alike).
 */
async function tallyPayloads(client: pg.Client, run: FleetRun, open: OpenProfile): Promise<Tally> {
  const sent = run.devices.flatMap((device) => [
    ...[...device.delivered].map(([payload, events]) => ({
      topic: device.shape.topic,
      payload,
      events,
    })),
    ...[...device.unacked].map((payload) => ({ topic: device.shape.topic, payload, events: 0 })),
  ]);
  const { rows } = await client.query<{
    topic: string;
    payload: string;
    delivered: number | null;
    copies: number;
  }>(
    `WITH sent AS (
       SELECT topic, payload::jsonb AS payload, sum(events)::int AS delivered
         FROM unnest($1::text[], $2::text[], $3::int[]) AS s(topic, payload, events)
        GROUP BY 1, 2),
     stored AS (
       SELECT topic, payload, count(*)::int AS copies
         FROM telemetry
        WHERE device_id = ANY($4) AND topic = ANY($5) AND time BETWEEN $6 AND $7
        GROUP BY 1, 2)
     SELECT coalesce(s.topic, r.topic) AS topic, coalesce(s.payload, r.payload)::text AS payload,
            s.delivered, coalesce(r.copies, 0) AS copies
       FROM sent s FULL JOIN stored r ON r.topic = s.topic AND r.payload = s.payload`,
    [
      sent.map((item) => item.topic),
      sent.map((item) => item.payload),
      sent.map((item) => item.events),
      ...scopeOf(run, open),
      ...windowOf(run),
    ],
  );
  const tally: Tally = {
    expected: 0,
    stored: 0,
    missing: [],
    duplicated: [],
    unexpected: 0,
    strangers: [],
  };
  for (const row of rows) {
    const label = `${row.topic} ${row.payload}`;
    tally.stored += row.copies;
    if (row.delivered === null) {
      tally.unexpected += row.copies;
      tally.strangers.push(label);
    } else if (row.delivered === 0) {
      tally.unexpected += row.copies;
    } else {
      tally.expected += row.delivered;
      for (let n = row.copies; n < row.delivered; n++) tally.missing.push(label);
      for (let n = row.delivered; n < row.copies; n++) tally.duplicated.push(label);
    }
  }
  return tally;
}

/** The topics a run's rows are on. */
function topicsOf(run: FleetRun): string[] {
  return run.devices.flatMap((device) => device.shape.topics);
}

/** The devices (as the mapping stores them) and topics of a run. */
function scopeOf(run: FleetRun, { mappings }: OpenProfile): [string[], string[]] {
  const topics = topicsOf(run);
  return [[...new Set(topics.map((topic) => mappings.deviceOf(topic) as string))], topics];
}

/**
 * Sparkplug B devices' rows hold their metrics by name, DDATA sent by alias
 * too: of a sample of the run's, how many do not name every metric.
 */
async function unnamedMetrics(client: pg.Client, run: FleetRun): Promise<number> {
  const { rows } = await client.query<{ n: number }>(
    `SELECT count(*)::int AS n
       FROM (SELECT payload FROM telemetry
              WHERE device_id = ANY($1) AND topic = ANY($2) AND received_at BETWEEN $3 AND $4
              LIMIT 1000) AS sample
      WHERE NOT coalesce(payload->'metrics' ?& $5::text[], false)`,
    [
      run.devices.map((device) => device.shape.storedDeviceId),
      topicsOf(run),
      ...windowOf(run),
      SPARKPLUG_METRICS.map((metric) => metric.name),
    ],
  );
  return rows[0]?.n ?? 0;
}

/**
 * When the service received the run's messages, give or take its clock: from
 * the run's start until now, as a bridged broker's messages are stored after
 * it acknowledged them, while verification waits.
 */
function windowOf(run: FleetRun): [Date, Date] {
  const until = Math.max(run.endedAt, Date.now());
  return [new Date(run.startedAt - CLOCK_MARGIN_MS), new Date(until + CLOCK_MARGIN_MS)];
}

/**
 * Checks that PostgreSQL holds the run's acknowledged unique events as the
 * service tells rows apart: each exactly once, or, for a profile without id
 * or time, at least once (more is reported, not failed); and that every
 * acknowledged malformed message was dead-lettered. With QoS 0 nothing is
 * acknowledged, so a missing event is reported but allowed.
 */
async function check(client: pg.Client, options: SimOptions, run: FleetRun): Promise<Verification> {
  const open = options.profile;
  const identity = open?.identity;
  const tally = await (open === undefined
    ? tallyRunEvents(client, run)
    : identity === "none"
      ? tallyPayloads(client, run, open)
      : tallyKeyed(client, run, open));
  // Identical malformed messages on a topic (two in a row share a seq) are
  // one dead letter counting its occurrences.
  const rejected = await client.query<{ n: number }>(
    `SELECT coalesce(sum(occurrences), 0)::int AS n FROM telemetry_rejected
      WHERE topic = ANY($1) AND position($2::bytea IN payload) > 0`,
    [run.devices.map((device) => device.shape.topic), runMarker(options.runId)],
  );
  const rejectedCount = rejected.rows[0]?.n ?? 0;
  const badExpected = run.counters.badAcked;

  const problems: string[] = [];
  const sample = (keys: string[]) => keys.slice(0, 5).join(", ") + (keys.length > 5 ? ", …" : "");
  if (tally.missing.length > 0 && options.qos === 1) {
    problems.push(`missing: ${sample(tally.missing)}`);
  }
  if (tally.duplicated.length > 0 && identity !== "none") {
    problems.push(`stored twice: ${sample(tally.duplicated)}`);
  }
  if (tally.strangers.length > 0) problems.push(`never sent: ${sample(tally.strangers)}`);
  if (rejectedCount < badExpected) {
    problems.push(
      `${badExpected} bad messages acknowledged but only ${rejectedCount} dead-lettered`,
    );
  }
  if (options.profile) {
    const { mappingsFile } = options.profile.profile;
    const refused = await client.query<{ n: number }>(
      `SELECT coalesce(sum(occurrences), 0)::int AS n FROM telemetry_rejected
        WHERE topic = ANY($1) AND reason = 'not_authorized' AND last_received_at >= $2`,
      [topicsOf(run), windowOf(run)[0]],
    );
    const notAuthorized = refused.rows[0]?.n ?? 0;
    if (notAuthorized > 0) {
      problems.push(
        `${notAuthorized} refused as not_authorized: a device identity publishes only as the device ${mappingsFile} stores its topic under; a gateway identity publishes where its rules allow`,
      );
    } else if (tally.stored === 0 && tally.expected > 0) {
      problems.push(
        `nothing of the run is stored: is the service reading MAPPINGS_FILE=${mappingsFile}?`,
      );
    }
    if (options.profile.profile.payload === "sparkplug-b") {
      const unnamed = await unnamedMetrics(client, run);
      if (unnamed > 0) {
        problems.push(
          `${unnamed} stored rows without payload->'metrics' naming ${SPARKPLUG_METRICS.map((metric) => metric.name).join(", ")}`,
        );
      }
    }
  }
  return {
    pass: problems.length === 0,
    expected: tally.expected,
    stored: tally.stored,
    missing: tally.missing.length,
    duplicated: tally.duplicated.length,
    unexpected: tally.unexpected,
    rejected: rejectedCount,
    badExpected,
    problems,
  };
}

/** Whether PostgreSQL holds every expected event and dead letter. */
function complete(verification: Verification): boolean {
  return verification.missing === 0 && verification.rejected >= verification.badExpected;
}

/**
 * Checks the run (as `check` above). With --verify-wait, a bridged broker
 * has acknowledged messages that the service may not have stored yet: checks
 * again every second until nothing expected is missing and every dead letter
 * is there, or the time is up, then reports the last check. `onProgress`
 * hears of each check that finds something missing, and of the end of the wait.
 */
export async function verifyRun(
  databaseUrl: string,
  options: SimOptions,
  run: FleetRun,
  onProgress?: (progress: StorageProgress) => void,
): Promise<Verification> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const started = performance.now();
    let verification = await check(client, options, run);
    if (options.verifyWaitS === 0) return verification;
    const deadline = started + options.verifyWaitS * 1000;
    const reached = (v: Verification) =>
      v.expected - v.missing + Math.min(v.rejected, v.badExpected);
    let last = reached(verification);
    let changedAt = started;
    for (let checks = 1; ; checks++) {
      const now = performance.now();
      const ended = complete(verification)
        ? "stored"
        : now >= deadline
          ? "timeout"
          : options.qos === 0 && now - changedAt >= QOS0_SETTLE_MS
            ? "settled"
            : undefined;
      const waitedS = Math.round((now - started) / 100) / 10;
      if (ended !== "stored" || checks > 1) {
        onProgress?.({
          stored: verification.expected - verification.missing,
          expected: verification.expected,
          deadLetters: Math.min(verification.rejected, verification.badExpected),
          badExpected: verification.badExpected,
          waitedS,
          leftS: Math.max(0, Math.ceil((deadline - now) / 1000)),
          ended,
        });
      }
      if (ended) return { ...verification, waitedS };
      await sleep(Math.min(POLL_MS, deadline - now));
      verification = await check(client, options, run);
      if (reached(verification) !== last) {
        last = reached(verification);
        changedAt = performance.now();
      }
    }
  } finally {
    await client.end();
  }
}
