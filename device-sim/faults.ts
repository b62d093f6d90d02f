import type { Random } from "./random.ts";

export const BAD_KINDS = ["not_json", "no_event_id", "bad_ts", "wrong_types", "oversized"] as const;
export type BadKind = (typeof BAD_KINDS)[number];

/**
 * Bytes every malformed payload of a run holds, so that `--verify` counts
 * that run's dead letters only: device ids that are identities outlive a run.
 */
export function runMarker(runId: string): Buffer {
  return Buffer.from(`"run":${JSON.stringify(runId)}`);
}

/** A malformed payload of one kind; each fails a different validation rule. */
export function badPayload(kind: BadKind, runId: string, seq: number, timeMs: number): Buffer {
  switch (kind) {
    case "not_json":
      // Cut off before its closing brace, as by a truncated write.
      return Buffer.from(JSON.stringify({ run: runId, seq, temperature: 21.5 }).slice(0, -1));
    case "no_event_id":
      return Buffer.from(JSON.stringify({ run: runId, ts: timeMs, seq }));
    case "bad_ts":
      return Buffer.from(
        JSON.stringify({ event_id: `bad-${seq}`, run: runId, ts: "yesterday at noon" }),
      );
    case "wrong_types":
      return Buffer.from(JSON.stringify({ event_id: seq, run: runId, ts: timeMs }));
    case "oversized":
      // Over the service's payload limit (64 KiB), which dead-letters it, and
      // under its packet limit (256 KiB), which would close the connection.
      return Buffer.from(
        JSON.stringify({
          event_id: `big-${seq}`,
          run: runId,
          ts: timeMs,
          blob: "x".repeat(96 * 1024),
        }),
      );
  }
}

export function pickBadKind(random: Random): BadKind {
  return random.pick(BAD_KINDS);
}
