import pg from "pg";
import { runMarker } from "./faults.ts";
import type { FleetRun } from "./fleet.ts";
import type { SimOptions } from "./options.ts";

export interface Verification {
  pass: boolean;
  /** Unique events the broker acknowledged (QoS 1) or that were sent (QoS 0). */
  expected: number;
  stored: number;
  missing: number;
  duplicated: number;
  /** Rows of this run's devices that no acknowledged event accounts for. */
  unexpected: number;
  rejected: number;
  badExpected: number;
  problems: string[];
}

/**
 * Checks that PostgreSQL holds exactly the run's acknowledged unique events,
 * each once, and that every acknowledged malformed message was dead-lettered.
 * With QoS 0 nothing is acknowledged, so a missing event is reported but
 * allowed; a duplicate never is.
 */
export async function verifyRun(
  databaseUrl: string,
  options: SimOptions,
  run: FleetRun,
): Promise<Verification> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    // A device id that is an identity outlives the run: this run's rows are
    // the ones whose event id is the device's prefix (with the run id) and a seq.
    const stored = await client.query<{
      event_id: string;
      prefix: string;
      seq: string;
      copies: number;
    }>(
      `SELECT t.event_id, d.prefix, substr(t.event_id, length(d.prefix) + 1) AS seq,
              count(*)::int AS copies
         FROM telemetry t
         JOIN unnest($1::text[], $2::text[]) AS d(device_id, prefix)
           ON t.device_id = d.device_id AND starts_with(t.event_id, d.prefix)
        WHERE substr(t.event_id, length(d.prefix) + 1) ~ '^[0-9]+$'
        GROUP BY t.event_id, d.prefix`,
      [
        run.devices.map((device) => device.deviceId),
        run.devices.map((device) => device.eventPrefix),
      ],
    );
    const rejected = await client.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM telemetry_rejected
        WHERE topic = ANY($1) AND position($2::bytea IN payload) > 0`,
      [run.devices.map((device) => device.topic), runMarker(options.runId)],
    );
    const expected = new Set(run.devices.flatMap((device) => [...device.delivered]));
    const published = new Map(run.devices.map((device) => [device.eventPrefix, device.published]));
    const found = new Map(stored.rows.map((row) => [row.event_id, row.copies]));
    const missing = [...expected].filter((id) => !found.has(id));
    const duplicated = stored.rows.filter((row) => row.copies > 1);
    const unexpected = stored.rows.filter((row) => !expected.has(row.event_id));
    const rejectedCount = rejected.rows[0]?.n ?? 0;
    const badExpected = run.counters.badAcked;

    const problems: string[] = [];
    const sample = (ids: string[]) => ids.slice(0, 5).join(", ") + (ids.length > 5 ? ", …" : "");
    if (missing.length > 0 && options.qos === 1) problems.push(`missing: ${sample(missing)}`);
    if (duplicated.length > 0)
      problems.push(`stored twice: ${sample(duplicated.map((row) => row.event_id))}`);
    // Sent but never acknowledged (the run ended or the connection dropped first) may be stored or not;
    // a row for an event this run never sent may not.
    const strangers = unexpected.filter(
      (row) => Number(row.seq) >= (published.get(row.prefix) ?? 0),
    );
    if (strangers.length > 0)
      problems.push(`never sent: ${sample(strangers.map((row) => row.event_id))}`);
    if (rejectedCount < badExpected) {
      problems.push(
        `${badExpected} bad messages acknowledged but only ${rejectedCount} dead-lettered`,
      );
    }
    return {
      pass: problems.length === 0,
      expected: expected.size,
      stored: stored.rows.length,
      missing: missing.length,
      duplicated: duplicated.length,
      unexpected: unexpected.length,
      rejected: rejectedCount,
      badExpected,
      problems,
    };
  } finally {
    await client.end();
  }
}
