import type { BatchWriter, WriteOutcome } from "../bridge/batch-writer.ts";
import type { RejectReason } from "../bridge/telemetry-message.ts";

export interface EventResult {
  index: number;
  event_id: unknown;
  status: "accepted" | "duplicate" | "rejected";
  reason?: RejectReason;
  field?: string;
  detail?: string;
}

/** The body field a rejection reason points at. */
const FIELD: Partial<Record<RejectReason, string>> = {
  topic_invalid: "topic",
  event_id_missing: "event_id",
  event_id_invalid: "event_id",
  ts_missing: "timestamp",
  ts_invalid: "timestamp",
  ts_in_future: "timestamp",
  ts_before_retention: "timestamp",
  source_invalid: "source",
  payload_not_object: "payload",
  payload_too_large: "payload",
  payload_too_deep: "payload",
  payload_nul_character: "payload",
  payload_lone_surrogate: "payload",
  not_authorized: "topic",
};

export function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

export interface TopicChecks {
  bridged(topic: string): boolean;
  /** What the caller's identity may publish on. */
  allowed(topic: string): boolean;
}

type Shape =
  | { ok: true; event: Record<string, unknown> & { topic: string } }
  | { ok: false; reason: RejectReason; detail: string };

/** Checks the event's shape before it is turned into a message. */
function checkShape(event: unknown, topics: TopicChecks): Shape {
  const fail = (reason: RejectReason, detail: string): Shape => ({ ok: false, reason, detail });
  if (!isObject(event)) return fail("payload_not_object", "each event must be a JSON object");
  const { topic } = event;
  if (typeof topic !== "string" || topic === "")
    return fail("topic_invalid", "topic must be a non-empty string");
  if (!topics.bridged(topic)) return fail("topic_invalid", "topic matches none of BRIDGE_TOPICS");
  if (!topics.allowed(topic)) {
    return fail("not_authorized", "this identity may not publish on this topic");
  }
  if (event.event_id === undefined) return fail("event_id_missing", "event_id is required");
  if (event.timestamp === undefined) return fail("ts_missing", "timestamp is required");
  if (typeof event.timestamp !== "string") {
    return fail("ts_invalid", "timestamp must be an ISO 8601 string with a zone");
  }
  if (event.source !== undefined && typeof event.source !== "string") {
    return fail("source_invalid", "source must be a string");
  }
  if (event.payload !== undefined && !isObject(event.payload)) {
    return fail("payload_not_object", "payload must be a JSON object");
  }
  return { ok: true, event: { ...event, topic } };
}

/**
 * Hands each event to the same validation, dedup window and writer as MQTT
 * messages. The stored payload is the event's `payload` with `event_id`,
 * `ts` (the timestamp) and `source` added, like a device's own JSON.
 * Resolves once every event is committed: stored, duplicate or dead-lettered.
 */
export async function publishEvents(
  events: unknown[],
  writer: Pick<BatchWriter, "deadLetter" | "ingest">,
  topics: TopicChecks,
  clientId: string,
): Promise<{ results: EventResult[]; stored: { topic: string; payload: Buffer }[] }> {
  const receivedAtMs = Date.now();
  const stored: { topic: string; payload: Buffer }[] = [];
  const results = await Promise.all(
    events.map(async (event, index): Promise<EventResult> => {
      const shape = checkShape(event, topics);
      const eventId = isObject(event) ? event.event_id : undefined;
      let outcome: WriteOutcome;
      if (!shape.ok) {
        const topic = isObject(event) && typeof event.topic === "string" ? event.topic : "";
        outcome = await writer.deadLetter({
          topic,
          clientId,
          payload: Buffer.from(JSON.stringify(event) ?? "null"),
          receivedAtMs,
          reason: shape.reason,
          detail: shape.detail,
        });
      } else {
        const { topic, payload: fields, event_id, timestamp, source } = shape.event;
        const payload = Buffer.from(
          JSON.stringify({ ...(fields as object), event_id, ts: timestamp, source }),
        );
        outcome = await writer.ingest({ topic, payload, clientId, receivedAtMs }, "default");
        if (outcome.status === "stored") stored.push({ topic, payload });
      }
      if (outcome.status === "stored") return { index, event_id: eventId, status: "accepted" };
      if (outcome.status === "duplicate") return { index, event_id: eventId, status: "duplicate" };
      return {
        index,
        event_id: eventId,
        status: "rejected",
        reason: outcome.reason,
        field: FIELD[outcome.reason],
        detail: outcome.detail,
      };
    }),
  );
  return { results, stored };
}
