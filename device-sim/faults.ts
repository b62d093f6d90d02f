import type { Random } from "./random.ts";

export const BAD_KINDS = ["not_json", "no_event_id", "bad_ts", "wrong_types", "oversized"] as const;
export type BadKind = (typeof BAD_KINDS)[number];

/** A malformed payload of one kind; each fails a different validation rule. */
export function badPayload(kind: BadKind, seq: number, timeMs: number): Buffer {
  switch (kind) {
    case "not_json":
      return Buffer.from(`temperature=21.5;seq=${seq}`);
    case "no_event_id":
      return Buffer.from(JSON.stringify({ ts: timeMs, seq }));
    case "bad_ts":
      return Buffer.from(JSON.stringify({ event_id: `bad-${seq}`, ts: "yesterday at noon" }));
    case "wrong_types":
      return Buffer.from(JSON.stringify({ event_id: seq, ts: timeMs }));
    case "oversized":
      return Buffer.from(
        JSON.stringify({ event_id: `big-${seq}`, ts: timeMs, blob: "x".repeat(256 * 1024) }),
      );
  }
}

export function pickBadKind(random: Random): BadKind {
  return random.pick(BAD_KINDS);
}
