import { randomUUID } from "node:crypto";
import fs from "node:fs";
import YAML from "yaml";
import { topicMatcher, validateFilter } from "../broker/topic-filter.ts";
import {
  decodePayload,
  parseSparkplugTopic,
  SparkplugAliases,
  SparkplugError,
} from "./sparkplug.ts";
import {
  deviceIdOf,
  eventIdRejection,
  jsonRejection,
  type ParseResult,
  parseIso,
  payloadText,
  type RawMessage,
  Rejection,
  sizeRejection,
  topicRejection,
} from "./telemetry-message.ts";
import { isTimeZone, zoneOffset } from "./time-zone.ts";

/**
 * Mappings say how to read what devices publish in their own shapes
 * (Zigbee2MQTT, Tasmota, Shelly, Home Assistant, OwnTracks, …): an ordered
 * list, in which the first entry whose topic filter matches a message reads
 * it. Topics no entry matches are read as the default shape.
 */

export const PAYLOAD_FORMATS = ["json", "scalar", "text", "sparkplug-b"] as const;
export type PayloadFormat = (typeof PAYLOAD_FORMATS)[number];

export const TIME_FORMATS = ["iso", "iso-local", "epoch-s", "epoch-ms", "epoch-us"] as const;
export type TimeFormat = (typeof TIME_FORMATS)[number];

const EPOCH_SCALE: Record<string, number> = { "epoch-s": 1000, "epoch-ms": 1, "epoch-us": 0.001 };
/** 1970 to 9999, as for the default shape. */
const MAX_TIME_MS = Date.UTC(10_000, 0, 1) - 1;

/** How rows from a mapping are told apart; the README's table explains each. */
export type Identity = "event_id" | "device_time" | "none";

/** A path into a JSON object: `params.ts` is `["params", "ts"]`. */
type FieldPath = readonly string[];

interface TimeField {
  path: FieldPath;
  format: TimeFormat;
  /** For iso-local: the zone's offset at a wall-clock time. */
  offset: ((wallClockMs: number) => number) | undefined;
}

interface Mapping {
  name: string;
  /** The MQTT filter it bridges: named levels become `+`. */
  filter: string;
  /** For each level of the filter: a literal, `+`, `#`, or the name of a captured level. */
  levels: readonly (string | { name: string })[];
  excluded: (topic: string) => boolean;
  /** Alternating literal text and level names, from `device_id: "{edge}-{device}"`. */
  deviceId: readonly (string | { name: string })[];
  payload: PayloadFormat;
  eventId: readonly FieldPath[];
  /** Where the row's time comes from; undefined: the time it was received. */
  time: TimeField | undefined;
  identity: Identity;
}

/** A mapping file that cannot be used: names the file, the entry and the reason. */
export class MappingError extends Error {
  override name = "MappingError";
}

const ENTRY_KEYS = ["name", "topic", "exclude", "device_id", "payload", "event_id", "time"];
const TIME_KEYS = ["field", "format", "zone"];
const NAMED_LEVEL = /^\{([A-Za-z_][A-Za-z0-9_]*)\}$/;
const TEMPLATE_PART = /\{([A-Za-z_][A-Za-z0-9_]*)\}/g;

function fieldPath(raw: unknown, what: string): FieldPath {
  if (typeof raw !== "string" || raw === "" || raw.split(".").includes("")) {
    throw new Error(`${what} must be a field path such as "params.ts"`);
  }
  return raw.split(".");
}

function compileEntry(raw: unknown, index: number): Mapping {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new Error("must be a mapping with at least a topic");
  }
  const entry = raw as Record<string, unknown>;
  const unknownKey = Object.keys(entry).find((key) => !ENTRY_KEYS.includes(key));
  if (unknownKey) throw new Error(`unknown key "${unknownKey}" (known: ${ENTRY_KEYS.join(", ")})`);
  const name = entry.name === undefined ? `#${index + 1}` : String(entry.name);

  if (typeof entry.topic !== "string")
    throw new Error('topic is required, such as "tele/{device}/SENSOR"');
  const levels = entry.topic.split("/").map((level) => {
    const named = NAMED_LEVEL.exec(level);
    if (named) return { name: named[1] as string };
    if (level.includes("{") || level.includes("}")) {
      throw new Error(`topic level "${level}" must be a whole {name}`);
    }
    return level;
  });
  const filter = levels.map((level) => (typeof level === "string" ? level : "+")).join("/");
  const problem = validateFilter(filter);
  if (problem) throw new Error(`topic "${entry.topic}" ${problem}`);
  const names = levels.flatMap((level) => (typeof level === "string" ? [] : [level.name]));
  const repeated = names.find((level, i) => names.indexOf(level) !== i);
  if (repeated) throw new Error(`topic names the level {${repeated}} twice`);

  const exclude = entry.exclude ?? [];
  if (!Array.isArray(exclude) || exclude.some((item) => typeof item !== "string")) {
    throw new Error("exclude must be a list of MQTT topic filters");
  }
  for (const item of exclude as string[]) {
    const bad = validateFilter(item);
    if (bad) throw new Error(`exclude "${item}" ${bad}`);
  }

  const template = entry.device_id ?? (names.includes("device") ? "{device}" : undefined);
  if (typeof template !== "string") {
    throw new Error('device_id is required when the topic has no {device} level, such as "{node}"');
  }
  const deviceId: (string | { name: string })[] = [];
  let at = 0;
  for (const match of template.matchAll(TEMPLATE_PART)) {
    if (!names.includes(match[1] as string)) {
      throw new Error(`device_id uses {${match[1]}}, which the topic does not name`);
    }
    if (match.index > at) deviceId.push(template.slice(at, match.index));
    deviceId.push({ name: match[1] as string });
    at = match.index + match[0].length;
  }
  if (at < template.length) deviceId.push(template.slice(at));
  if (!deviceId.some((part) => typeof part !== "string")) {
    throw new Error(`device_id "${template}" must use a level of the topic, such as {device}`);
  }

  const payload = entry.payload ?? "json";
  if (!PAYLOAD_FORMATS.includes(payload as PayloadFormat)) {
    throw new Error(`payload must be one of ${PAYLOAD_FORMATS.join(", ")} (got "${payload}")`);
  }

  const rawEventId = entry.event_id;
  const eventId =
    rawEventId === undefined
      ? []
      : Array.isArray(rawEventId)
        ? rawEventId.map((item, i) => fieldPath(item, `event_id[${i}]`))
        : [fieldPath(rawEventId, "event_id")];
  if (Array.isArray(rawEventId) && eventId.length === 0) {
    throw new Error("event_id must name at least one field");
  }

  let time: TimeField | undefined;
  if (entry.time !== undefined && entry.time !== "received") {
    if (entry.time === null || typeof entry.time !== "object" || Array.isArray(entry.time)) {
      throw new Error('time must be "received" or { field, format, zone }');
    }
    const spec = entry.time as Record<string, unknown>;
    const unknownTimeKey = Object.keys(spec).find((key) => !TIME_KEYS.includes(key));
    if (unknownTimeKey) throw new Error(`time has an unknown key "${unknownTimeKey}"`);
    const format = spec.format as TimeFormat;
    if (!TIME_FORMATS.includes(format)) {
      throw new Error(
        `time.format must be one of ${TIME_FORMATS.join(", ")} (got "${spec.format}")`,
      );
    }
    if ((format === "iso-local") !== (spec.zone !== undefined)) {
      throw new Error("time.zone is required with iso-local, and only with it");
    }
    if (spec.zone !== undefined && (typeof spec.zone !== "string" || !isTimeZone(spec.zone))) {
      throw new Error(`time.zone "${spec.zone}" is not a time zone such as Europe/Berlin`);
    }
    time = {
      path: fieldPath(spec.field, "time.field"),
      format,
      offset: typeof spec.zone === "string" ? zoneOffset(spec.zone) : undefined,
    };
  }
  if (eventId.length > 0 && !time) {
    throw new Error(
      "event_id needs a time from the payload: a row's identity includes its time, and a redelivery is received at another",
    );
  }
  if ((payload === "scalar" || payload === "text") && (eventId.length > 0 || time)) {
    throw new Error(`a ${payload} payload has no fields: event_id and time cannot be read from it`);
  }

  return {
    name,
    filter,
    levels,
    excluded: topicMatcher(exclude as string[]),
    deviceId,
    payload: payload as PayloadFormat,
    eventId,
    time,
    identity: eventId.length > 0 ? "event_id" : time ? "device_time" : "none",
  };
}

function valueAt(body: unknown, path: FieldPath): unknown {
  let value = body;
  for (const key of path) {
    if (value === null || typeof value !== "object" || !Object.hasOwn(value, key)) return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return value;
}

/** The captured levels of `topic`, or undefined when the mapping's filter does not match it. */
function capture(mapping: Mapping, topic: string): Map<string, string> | undefined {
  const parts = topic.split("/");
  const { levels } = mapping;
  // As for MQTT wildcards, a `$` topic is matched only by a filter that names its first level.
  if (topic.startsWith("$") && levels[0] !== parts[0]) return undefined;
  const captured = new Map<string, string>();
  for (const [i, level] of levels.entries()) {
    if (level === "#") return captured;
    const part = parts[i];
    if (part === undefined) return undefined;
    if (typeof level === "string") {
      if (level !== "+" && level !== part) return undefined;
    } else {
      captured.set(level.name, part);
    }
  }
  return parts.length === levels.length ? captured : undefined;
}

function readTime(time: TimeField, body: unknown): number | Rejection {
  const raw = valueAt(body, time.path);
  const field = time.path.join(".");
  if (raw === undefined) return new Rejection("ts_missing", `payload has no ${field}`);
  let ms: number | undefined;
  if (time.format === "iso" || time.format === "iso-local") {
    ms = typeof raw === "string" ? parseIso(raw, time.offset) : undefined;
  } else if (typeof raw === "number" && Number.isFinite(raw)) {
    ms = Math.round(raw * (EPOCH_SCALE[time.format] as number));
  }
  if (ms === undefined || ms < 0 || ms > MAX_TIME_MS) {
    return new Rejection("ts_invalid", `${field} must be ${time.format} (1970–9999)`);
  }
  return ms;
}

function readEventId(mapping: Mapping, body: unknown): string | Rejection {
  const parts: string[] = [];
  for (const path of mapping.eventId) {
    const value = valueAt(body, path);
    if (value === undefined)
      return new Rejection("event_id_missing", `payload has no ${path.join(".")}`);
    if (typeof value !== "string" && !(typeof value === "number" && Number.isSafeInteger(value))) {
      return new Rejection("event_id_invalid", `${path.join(".")} must be a string or an integer`);
    }
    parts.push(String(value));
  }
  const eventId = parts.join("/");
  return eventIdRejection(eventId) ?? eventId;
}

interface Stored {
  /** The JSON object stored: the payload's own, or `{"value": …}`. */
  value: unknown;
  /** Its text and bytes: for a JSON object, the payload exactly as received. */
  text: string;
  bytes: Buffer;
}

function wrapped(value: unknown): Stored {
  const text = JSON.stringify({ value });
  return { value: { value }, text, bytes: Buffer.from(text) };
}

function readPayload(format: PayloadFormat, text: string, raw: Buffer): Stored | Rejection {
  if (format === "text") return wrapped(text);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    if (format === "json") return new Rejection("payload_not_json", (error as Error).message);
    // A bare word such as `on` or `unavailable` is a string value.
    return wrapped(text.trim());
  }
  if (format === "scalar") return wrapped(value);
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return new Rejection("payload_not_object", "payload must be a JSON object");
  }
  return { value, text, bytes: raw };
}

/** A validated mapping file, compiled for the ingest path. */
export class Mappings {
  /** Each Sparkplug B edge node's metric names, by the aliases its BIRTHs declared. */
  private sparkplug: SparkplugAliases | undefined;

  private constructor(private readonly list: readonly Mapping[]) {}

  /** Reads `text` (YAML) from `file`; a problem is a MappingError naming the file, entry and reason. */
  static parse(text: string, file: string): Mappings {
    let document: unknown;
    try {
      document = YAML.parse(text);
    } catch (error) {
      throw new MappingError(`${file}: not valid YAML: ${(error as Error).message.split("\n")[0]}`);
    }
    if (!Array.isArray(document) || document.length === 0) {
      throw new MappingError(`${file}: must be a list of mappings, each with at least a topic`);
    }
    return new Mappings(
      document.map((entry, index) => {
        try {
          return compileEntry(entry, index);
        } catch (error) {
          const name = (entry as { name?: unknown } | null)?.name;
          throw new MappingError(
            `${file}: entry ${index + 1}${typeof name === "string" ? ` (${name})` : ""}: ${(error as Error).message}`,
          );
        }
      }),
    );
  }

  static load(file: string): Mappings {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (error) {
      throw new MappingError(`${file}: cannot be read (${(error as NodeJS.ErrnoException).code})`);
    }
    return Mappings.parse(text, file);
  }

  /** The MQTT filters to bridge, in addition to BRIDGE_TOPICS. */
  get filters(): string[] {
    return this.list.map((mapping) => mapping.filter);
  }

  private match(topic: string): { mapping: Mapping; levels: Map<string, string> } | undefined {
    for (const mapping of this.list) {
      const levels = capture(mapping, topic);
      if (levels && !mapping.excluded(topic)) return { mapping, levels };
    }
    return undefined;
  }

  /** Whether a mapping reads `topic`: its filter matches, and no exclude of the entry does. */
  reads(topic: string): boolean {
    return this.match(topic) !== undefined;
  }

  /** The device a mapped topic names, or undefined for a topic no mapping reads. */
  deviceOf(topic: string): string | undefined {
    const matched = this.match(topic);
    if (!matched) return undefined;
    return matched.mapping.deviceId
      .map((part) => (typeof part === "string" ? part : matched.levels.get(part.name)))
      .join("");
  }

  /** How rows of `topic` are told apart, or undefined for a topic no mapping reads. */
  identityOf(topic: string): Identity | undefined {
    return this.match(topic)?.mapping.identity;
  }

  /**
   * A Sparkplug B message as JSON, its metrics named: a BIRTH declares the
   * names of its aliases, which later DATA messages use alone. A DATA
   * message with an alias no BIRTH declared (such as one sent before this
   * process started) is refused whole, so that no reading is stored
   * without its name; its raw bytes stay in the dead letter.
   */
  private readSparkplug(topic: string, bytes: Buffer): Stored | Rejection {
    const parts = parseSparkplugTopic(topic);
    if (parts === undefined || parts.type === "STATE") {
      return new Rejection("topic_invalid", "not a Sparkplug B edge node or device topic");
    }
    try {
      this.sparkplug ??= new SparkplugAliases();
      const { document, unresolvedAliases } = this.sparkplug.ingest(parts, decodePayload(bytes));
      if (unresolvedAliases.length > 0) {
        return new Rejection(
          "sparkplug_alias_unknown",
          `${parts.type} uses aliases ${unresolvedAliases.join(", ")}, which no BIRTH of ${parts.edgeNode} declared since this process started; the edge node has to send its BIRTH again`,
        );
      }
      const text = JSON.stringify(document);
      return { value: document, text, bytes: Buffer.from(text) };
    } catch (error) {
      if (error instanceof SparkplugError) {
        return new Rejection("payload_not_sparkplug", error.message);
      }
      throw error;
    }
  }

  /** Reads a message by the first mapping that matches it; undefined when none does. */
  read(message: RawMessage, maxPayloadBytes: number): ParseResult | undefined {
    const matched = this.match(message.topic);
    if (!matched) return undefined;
    const { mapping, levels } = matched;
    const { topic } = message;
    const deviceParts: string[] = [];
    for (const part of mapping.deviceId) {
      if (typeof part === "string") {
        deviceParts.push(part);
        continue;
      }
      const level = levels.get(part.name) as string;
      if (level === "")
        return new Rejection("topic_invalid", `topic level {${part.name}} is empty`);
      deviceParts.push(level);
    }
    const badTopic = topicRejection(topic);
    if (badTopic) return badTopic;
    let stored: Stored | Rejection;
    if (mapping.payload === "sparkplug-b") {
      stored =
        sizeRejection(message.payload, maxPayloadBytes) ??
        this.readSparkplug(topic, message.payload);
    } else {
      const text = payloadText(message.payload, maxPayloadBytes);
      stored =
        typeof text === "string" ? readPayload(mapping.payload, text, message.payload) : text;
    }
    if (stored instanceof Rejection) return stored;
    const badJson = jsonRejection(stored.value, stored.text);
    if (badJson) return badJson;

    let timeMs = message.receivedAtMs;
    if (mapping.time) {
      const time = readTime(mapping.time, stored.value);
      if (time instanceof Rejection) return time;
      timeMs = time;
    }
    let eventId: string;
    if (mapping.identity === "event_id") {
      const id = readEventId(mapping, stored.value);
      if (id instanceof Rejection) return id;
      eventId = id;
    } else {
      // Identified by (topic, device time), or by nothing: every message is a new row.
      eventId = mapping.identity === "device_time" ? "" : randomUUID();
    }
    return {
      ok: true,
      row: {
        topic,
        deviceId: deviceParts.join(""),
        eventId,
        timeMs,
        payload: stored.bytes,
        receivedAtMs: message.receivedAtMs,
        clientId: message.clientId,
      },
    };
  }
}

/** What is bridged, and which device a bridged topic speaks for. */
export interface BridgedTopics {
  /** BRIDGE_TOPICS, then the mappings' filters. */
  filters: readonly string[];
  /** Whether a topic is stored: BRIDGE_TOPICS match it, or a mapping reads it (not excluded). */
  bridged(topic: string): boolean;
  /** The mapping's device for a mapped topic; else the topic's second level. */
  deviceOf(topic: string): string;
}

export function bridgedTopics(bridgeTopics: readonly string[], mappings?: Mappings): BridgedTopics {
  const byDefault = topicMatcher(bridgeTopics);
  return {
    filters: [...bridgeTopics, ...(mappings?.filters ?? [])],
    bridged: mappings ? (topic) => byDefault(topic) || mappings.reads(topic) : byDefault,
    deviceOf: mappings ? (topic) => mappings.deviceOf(topic) ?? deviceIdOf(topic) : deviceIdOf,
  };
}
