import type { FieldPath, Profile } from "./profiles/profile.ts";
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

/** Malformed messages in a profile's own shape: each fails what its mapping reads. */
export type ShapedBadKind = "not_json" | "oversized" | "no_time" | "bad_time" | "no_event_id";

/**
 * The malformed JSON messages a profile's devices can send: none for bare
 * values, which any bytes are; Sparkplug B's are its shape's own.
 */
export function shapedBadKinds(profile: Profile): ShapedBadKind[] {
  if (profile.payload !== "object") return [];
  return [
    "not_json",
    "oversized",
    ...(profile.time ? (["no_time", "bad_time"] as const) : []),
    ...(profile.eventId ? (["no_event_id"] as const) : []),
  ];
}

function setField(body: Record<string, unknown>, path: FieldPath, value: unknown): void {
  let parent = body;
  for (const key of path.slice(0, -1)) parent = parent[key] as Record<string, unknown>;
  const last = path.at(-1) as string;
  if (value === undefined) delete parent[last];
  else parent[last] = value;
}

/**
 * A message of the profile (`body`, a JSON object) malformed as `kind`, one
 * of its shapedBadKinds, and marked with its run.
 */
export function shapedBadPayload(
  kind: ShapedBadKind,
  body: Record<string, unknown>,
  profile: Profile,
  runId: string,
): Buffer {
  const marked: Record<string, unknown> = { run: runId, ...structuredClone(body) };
  switch (kind) {
    case "not_json":
      return Buffer.from(JSON.stringify(marked).slice(0, -1));
    case "oversized":
      return Buffer.from(JSON.stringify({ ...marked, blob: "x".repeat(96 * 1024) }));
    case "no_time":
    case "bad_time":
      setField(
        marked,
        profile.time?.field as FieldPath,
        kind === "bad_time" ? "yesterday at noon" : undefined,
      );
      return Buffer.from(JSON.stringify(marked));
    case "no_event_id":
      setField(marked, profile.eventId as FieldPath, undefined);
      return Buffer.from(JSON.stringify(marked));
  }
}
