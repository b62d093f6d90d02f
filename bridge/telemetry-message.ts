import { isUtf8 } from "node:buffer";

/** A message as the broker received it. */
export interface RawMessage {
  topic: string;
  payload: Buffer;
  clientId: string | null;
  receivedAtMs: number;
}

/** A valid telemetry message, ready to be written. */
export interface TelemetryRow {
  topic: string;
  deviceId: string;
  eventId: string;
  /** `ts` in epoch milliseconds (finer digits of an ISO `ts` are kept only in the payload). */
  timeMs: number;
  /** The payload's bytes exactly as received: stored as jsonb without re-serialising. */
  payload: Buffer;
  receivedAtMs: number;
  clientId: string | null;
}

export type RejectReason =
  | "topic_invalid"
  | "payload_too_large"
  | "payload_not_utf8"
  | "payload_not_json"
  | "payload_not_object"
  | "payload_too_deep"
  | "payload_nul_character"
  | "payload_lone_surrogate"
  | "payload_not_sparkplug"
  | "sparkplug_alias_unknown"
  | "event_id_missing"
  | "event_id_invalid"
  | "ts_missing"
  | "ts_invalid"
  | "ts_in_future"
  | "ts_before_retention"
  | "source_invalid"
  | "not_authorized"
  | "database_refused";

export type ParseResult = { ok: true; row: TelemetryRow } | Rejection;

export const MAX_EVENT_ID_CHARS = 128;
/** Keeps (topic, time, event_id) well under PostgreSQL's btree entry limit (2704 bytes). */
export const MAX_TOPIC_BYTES = 1024;
/**
 * Arrays and objects nested deeper than this are refused: JSON.stringify and
 * PostgreSQL's jsonb recurse per level (jsonb, at its default stack, gives
 * up somewhere past 10,000 levels), and no reading needs a fraction of it.
 */
export const MAX_JSON_DEPTH = 64;

/**
 * Whether a parsed JSON value nests arrays and objects more than `levels`
 * deep (the value itself is the first level). Recursion stops at the limit,
 * and a flat reading costs a few tens of nanoseconds.
 */
export function nestsDeeperThan(value: unknown, levels: number): boolean {
  if (value === null || typeof value !== "object") return false;
  if (levels === 0) return true;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) if (nestsDeeperThan(value[i], levels - 1)) return true;
    return false;
  }
  for (const key in value) {
    if (nestsDeeperThan((value as Record<string, unknown>)[key], levels - 1)) return true;
  }
  return false;
}

const ISO_8601 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$/;
/** 1970-01-01 to 9999-12-31 UTC: what devices can mean, in ISO 8601's four-digit years. */
const MIN_TIME_MS = 0;
const MAX_TIME_MS = Date.UTC(10_000, 0, 1) - 1;

function inRange(timeMs: number): number | undefined {
  return timeMs >= MIN_TIME_MS && timeMs <= MAX_TIME_MS ? timeMs : undefined;
}

/** Epoch milliseconds of `ts`, or undefined when it is not a valid timestamp. */
export function parseTimestamp(ts: unknown): number | undefined {
  if (typeof ts === "number") {
    return Number.isFinite(ts) ? inRange(Math.trunc(ts)) : undefined;
  }
  return typeof ts === "string" ? parseIso(ts) : undefined;
}

/**
 * Epoch milliseconds of an ISO 8601 date and time. One without a zone is
 * refused, unless `zoneOffset` gives the offset (minutes east of UTC) in
 * force at that wall-clock time, taken as if it were UTC.
 */
export function parseIso(
  text: string,
  zoneOffset?: (wallClockMs: number) => number,
): number | undefined {
  const m = ISO_8601.exec(text);
  if (!m) return undefined;
  const [year, month, day, hour, minute] = [m[1], m[2], m[3], m[4], m[5]].map(Number) as [
    number,
    number,
    number,
    number,
    number,
  ];
  const second = Number(m[6] ?? 0);
  const millis = Number((m[7] ?? "").padEnd(3, "0").slice(0, 3));
  if (month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59) return undefined;
  const local = new Date(Date.UTC(year, month - 1, day, hour, minute, second, millis));
  // Date.UTC rolls 31 April over into May: reject what does not round-trip.
  if (local.getUTCDate() !== day || local.getUTCMonth() !== month - 1) return undefined;
  let offsetMinutes = 0;
  if (m[9] === undefined && m[8] === undefined) {
    if (!zoneOffset) return undefined;
    offsetMinutes = zoneOffset(local.getTime());
  } else if (!m[8]) {
    const offsetHours = Number(m[10]);
    const offsetMins = Number(m[11]);
    if (offsetHours > 23 || offsetMins > 59) return undefined;
    offsetMinutes = (m[9] === "-" ? -1 : 1) * (offsetHours * 60 + offsetMins);
  }
  return inRange(local.getTime() - offsetMinutes * 60_000);
}

const HIGH_SURROGATE = /^[dD][89abAB]/;
const LOW_SURROGATE = /^[dD][c-fC-F]/;

/**
 * jsonb refuses the escapes `\u0000` and a `\uD800`–`\uDFFF` that is not half
 * of a pair, wherever they are: in a key, in a value, even in a value a
 * later duplicate key replaces. So the text is read, not the parsed value;
 * only text with a `\u` escape is read at all.
 */
function escapeRejection(text: string): Rejection | undefined {
  for (let at = text.indexOf("\\u"); at !== -1; at = text.indexOf("\\u", at + 2)) {
    let backslashes = 1;
    while (text[at - backslashes] === "\\") backslashes++;
    // `\\u0000` is an escaped backslash followed by the text "u0000".
    if (backslashes % 2 === 0) continue;
    const hex = text.slice(at + 2, at + 6);
    if (hex === "0000") {
      return new Rejection("payload_nul_character", "PostgreSQL jsonb cannot store \\u0000");
    }
    if (LOW_SURROGATE.test(hex)) {
      return new Rejection("payload_lone_surrogate", `\\u${hex} is half of a surrogate pair alone`);
    }
    if (HIGH_SURROGATE.test(hex)) {
      if (text.startsWith("\\u", at + 6) && LOW_SURROGATE.test(text.slice(at + 8, at + 12))) {
        at += 6;
      } else {
        return new Rejection(
          "payload_lone_surrogate",
          `\\u${hex} is half of a surrogate pair alone`,
        );
      }
    }
  }
  return undefined;
}

function codePoints(text: string): number {
  let count = 0;
  for (const _ of text) count++;
  return count;
}

/** A topic's second level, `<prefix>/<device_id>/…`; empty when it has none. */
export function deviceIdOf(topic: string): string {
  const start = topic.indexOf("/") + 1;
  if (start === 0) return "";
  const end = topic.indexOf("/", start);
  return topic.slice(start, end === -1 ? undefined : end);
}

/** Why a message cannot be stored as telemetry. */
export class Rejection {
  readonly ok = false;
  constructor(
    readonly reason: RejectReason,
    readonly detail: string,
  ) {}
}

/** Why `topic` cannot be a stored topic (its size, U+0000, lone surrogates), if it cannot. */
export function topicRejection(topic: string): Rejection | undefined {
  if (
    // UTF-8 takes at most 3 bytes per UTF-16 unit: count bytes only when it could matter.
    (topic.length * 3 > MAX_TOPIC_BYTES && Buffer.byteLength(topic) > MAX_TOPIC_BYTES) ||
    topic.includes("\u0000") ||
    !topic.isWellFormed()
  ) {
    return new Rejection(
      "topic_invalid",
      `topic must be at most ${MAX_TOPIC_BYTES} bytes of Unicode, without U+0000`,
    );
  }
  return undefined;
}

export function sizeRejection(payload: Buffer, maxPayloadBytes: number): Rejection | undefined {
  return payload.length > maxPayloadBytes
    ? new Rejection("payload_too_large", `${payload.length} bytes; the limit is ${maxPayloadBytes}`)
    : undefined;
}

/** The payload as text: at most `maxPayloadBytes` of UTF-8. */
export function payloadText(payload: Buffer, maxPayloadBytes: number): string | Rejection {
  const tooLarge = sizeRejection(payload, maxPayloadBytes);
  if (tooLarge) return tooLarge;
  if (!isUtf8(payload)) return new Rejection("payload_not_utf8", "payload is not valid UTF-8");
  return payload.toString("utf8");
}

/**
 * Whether parsed JSON and its text can be stored as jsonb: nested at most
 * MAX_JSON_DEPTH, without U+0000 or a lone surrogate.
 */
export function jsonRejection(value: unknown, text: string): Rejection | undefined {
  if (nestsDeeperThan(value, MAX_JSON_DEPTH)) {
    return new Rejection(
      "payload_too_deep",
      `arrays and objects nest deeper than ${MAX_JSON_DEPTH} levels`,
    );
  }
  return text.includes("\\u") ? escapeRejection(text) : undefined;
}

/** Whether `eventId` can identify a message: 1–128 characters of Unicode, without U+0000. */
export function eventIdRejection(eventId: unknown): Rejection | undefined {
  if (
    typeof eventId !== "string" ||
    eventId.length === 0 ||
    (eventId.length > MAX_EVENT_ID_CHARS && codePoints(eventId) > MAX_EVENT_ID_CHARS) ||
    eventId.includes("\u0000") ||
    // PostgreSQL would store a lone surrogate as U+FFFD, merging distinct ids.
    !eventId.isWellFormed()
  ) {
    return new Rejection(
      "event_id_invalid",
      `event_id must be a string of 1–${MAX_EVENT_ID_CHARS} characters`,
    );
  }
  return undefined;
}

/**
 * Validates a telemetry message: topic `<prefix>/<device_id>/…`, payload a
 * JSON object with `event_id` (a string of 1–128 characters) and `ts`
 * (ISO 8601 with a zone, or epoch milliseconds). `mappedDevice`, for a
 * topic a mapping reads, stands for the topic's second level.
 */
export function parseTelemetry(
  message: RawMessage,
  maxPayloadBytes: number,
  mappedDevice?: string,
): ParseResult {
  const { topic, payload } = message;
  const deviceId = mappedDevice ?? deviceIdOf(topic);
  if (!deviceId) return new Rejection("topic_invalid", "topic must be <prefix>/<device_id>/…");
  const badTopic = topicRejection(topic);
  if (badTopic) return badTopic;
  const text = payloadText(payload, maxPayloadBytes);
  if (typeof text !== "string") return text;
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    return new Rejection("payload_not_json", (error as Error).message);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return new Rejection("payload_not_object", "payload must be a JSON object");
  }
  const { event_id: eventId, ts } = body as Record<string, unknown>;
  if (eventId === undefined) return new Rejection("event_id_missing", "payload has no event_id");
  const badEventId = eventIdRejection(eventId);
  if (badEventId) return badEventId;
  if (ts === undefined) return new Rejection("ts_missing", "payload has no ts");
  const timeMs = parseTimestamp(ts);
  if (timeMs === undefined) {
    return new Rejection("ts_invalid", "ts must be ISO 8601 with a zone or epoch milliseconds");
  }
  const badJson = jsonRejection(body, text);
  if (badJson) return badJson;
  return {
    ok: true,
    row: {
      topic,
      deviceId,
      eventId: eventId as string,
      timeMs,
      payload,
      receivedAtMs: message.receivedAtMs,
      clientId: message.clientId,
    },
  };
}
