import mqttPacket from "mqtt-packet";
import type { Random } from "../../device-sim/random.ts";

/**
 * Inputs a hostile or broken client could send: MQTT frames (valid ones
 * from mqtt-packet, then corrupted), JSON payloads for telemetry topics,
 * and bodies for POST /publish. Everything is drawn from a `Random`, so a
 * seed gives the same inputs again.
 */

/** Text that trips up encoders: astral and combining characters, bidi controls, lone surrogates, NUL. */
const ODD_TEXT = [
  "a",
  "fuzz",
  "é",
  "e\u0301",
  "漢字",
  "😀",
  "👩‍👩‍👧",
  "\u202e",
  "\u200b",
  "\ufeff",
  "\u2028",
  "\ud800",
  "\udfff",
  "\u0000",
  "\u0007",
  "\u001f",
  "\\",
  '"',
  "'",
  "%s",
  "$(x)",
  "\r\n",
  " ",
  "\ufffd",
  "\uffff",
  "𝕏",
  "__proto__",
];

/** Number literals JavaScript, JSON parsers and PostgreSQL disagree about. */
const ODD_NUMBERS = [
  "0",
  "-0",
  "1e308",
  "-1e308",
  "1e400",
  "-1e400",
  "5e-324",
  "1e-400",
  "9007199254740993",
  "123456789012345678901234567890123456789012345678901234567890",
  "0.1",
  "-0.0e-0",
  "1E+2",
  "253402300800000",
  "1795468173501",
  "-1",
  "0.5",
];

/** Byte sequences that are not UTF-8: overlong, surrogates, past U+10FFFF, truncated, stray continuation. */
const INVALID_UTF8 = [
  [0xc0, 0xaf],
  [0xe0, 0x80, 0xaf],
  [0xed, 0xa0, 0x80],
  [0xed, 0xbf, 0xbf],
  [0xf4, 0x90, 0x80, 0x80],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
  [0xff],
  [0xfe],
  [0x80],
  [0xe2, 0x82],
  [0xf0, 0x9f, 0x98],
];

function oddText(rng: Random, pieces = rng.int(0, 12)): string {
  let text = "";
  for (let i = 0; i < pieces; i++) text += rng.pick(ODD_TEXT);
  return text;
}

/** `oddText` fit for an MQTT topic level: no wildcard, separator or NUL. */
function oddLevel(rng: Random): string {
  let level = oddText(rng, rng.int(1, 6));
  for (const forbidden of ["+", "#", "/", "\u0000"]) level = level.replaceAll(forbidden, "_");
  return level;
}

/** A JSON value as text, shaped by what a device might send by mistake or on purpose. */
function jsonValue(rng: Random, depth = 0): string {
  switch (rng.int(0, depth > 4 ? 3 : 6)) {
    case 0:
      return rng.chance(0.6) ? rng.pick(ODD_NUMBERS) : String(rng.int(-1e9, 1e9) / 7);
    case 1:
      return JSON.stringify(oddText(rng));
    case 2:
      return rng.pick(["true", "false", "null"]);
    case 3:
      return JSON.stringify("x".repeat(rng.int(0, 4000)));
    case 4: {
      const items = Array.from({ length: rng.int(0, 5) }, () => jsonValue(rng, depth + 1));
      return `[${items.join(",")}]`;
    }
    default: {
      const fields = Array.from(
        { length: rng.int(0, 6) },
        () => `${JSON.stringify(oddText(rng, rng.int(0, 3)))}:${jsonValue(rng, depth + 1)}`,
      );
      return `{${fields.join(",")}}`;
    }
  }
}

/** Nesting deeper than recursive code can follow; `leaf` sits at the bottom. */
function deepJson(rng: Random, depth: number, leaf = rng.pick(['"\\u0000"', "1", "{}"])) {
  return rng.chance(0.5)
    ? `${"[".repeat(depth)}${leaf}${"]".repeat(depth)}`
    : `${'{"a":'.repeat(depth)}${leaf}${"}".repeat(depth)}`;
}

function eventIdField(rng: Random): string | undefined {
  switch (rng.int(0, 9)) {
    case 0:
      return undefined;
    case 1:
      return rng.pick(['""', "12", "null", "[]", "{}", "true"]);
    case 2:
      return JSON.stringify("x".repeat(rng.int(128, 140)));
    case 3:
      return JSON.stringify(oddText(rng, rng.int(1, 4)));
    case 4:
      return JSON.stringify("😀".repeat(rng.int(120, 130)));
    default:
      return JSON.stringify(`fuzz-${rng.next().toString(36)}`);
  }
}

/**
 * A `ts`: mostly around now, else malformed or out of range. Valid times
 * far from now come from a few fixed days, so a run creates a handful of
 * partitions rather than one per random day.
 */
function tsField(rng: Random): string | undefined {
  const now = Date.now();
  switch (rng.int(0, 9)) {
    case 0:
      return undefined;
    case 1:
      return rng.pick(ODD_NUMBERS);
    case 2:
      return JSON.stringify(
        rng.pick([
          "2026-02-30T00:00:00Z",
          "2026-11-23T24:00:00Z",
          "2026-11-23T10:00:00+24:00",
          "2026-11-23T10:00:00",
          "1970-01-01T00:00:00Z",
          "9999-12-31T23:59:59.999Z",
          "now",
          "",
          "2026-11-23T10:00:00.123456789012345678901234567890Z",
          "+002026-11-23T10:00:00Z",
          "２０２６-11-23T10:00:00Z",
        ]),
      );
    case 3:
      return rng.pick(["true", "null", "[]", "{}", '"1795468173501"']);
    case 4:
      return JSON.stringify(new Date(now + rng.int(-3_600_000, 3_600_000)).toISOString());
    default:
      return String(now + rng.int(-3_600_000, 60_000));
  }
}

/** A device's reading as JSON text, with every field liable to be missing, mistyped or odd. */
function readingJson(rng: Random): string {
  const fields: string[] = [];
  const eventId = eventIdField(rng);
  if (eventId !== undefined) fields.push(`"event_id":${eventId}`);
  const ts = tsField(rng);
  if (ts !== undefined) fields.push(`"ts":${ts}`);
  for (let i = rng.int(0, 4); i > 0; i--) {
    fields.push(`${JSON.stringify(oddText(rng, rng.int(1, 3)))}:${jsonValue(rng, 1)}`);
  }
  if (rng.chance(0.1)) fields.push(`"event_id":${eventIdField(rng) ?? '"dup"'}`);
  for (let i = fields.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [fields[i], fields[j]] = [fields[j] as string, fields[i] as string];
  }
  return `{${fields.join(",")}}`;
}

/** A telemetry payload: mostly reading-shaped JSON, also non-objects, deep nesting, bad UTF-8, noise. */
export function telemetryPayload(rng: Random): Buffer {
  switch (rng.int(0, 11)) {
    case 0:
      return Buffer.from(jsonValue(rng));
    case 1: {
      const depth = rng.int(100, 30_000);
      const payload = `{"event_id":"deep-${rng.next()}","ts":${Date.now()},"a":${deepJson(rng, depth)}}`;
      return Buffer.from(payload);
    }
    case 2: {
      const text = Buffer.from(readingJson(rng));
      const at = rng.int(0, text.length);
      return Buffer.concat([
        text.subarray(0, at),
        Buffer.from(rng.pick(INVALID_UTF8)),
        text.subarray(at),
      ]);
    }
    case 3:
      return rng.bytes(rng.int(0, 300));
    case 4:
      return Buffer.from(
        `{"event_id":"big-${rng.next()}","ts":${Date.now()},"s":"${"y".repeat(rng.int(60_000, 70_000))}"}`,
      );
    case 5:
      return mutate(rng, Buffer.from(readingJson(rng)));
    case 6:
      return Buffer.from(rng.pick(["", " ", "\ufeff{}", "{}garbage", "{", "}", "[]", "null"]));
    default:
      return Buffer.from(readingJson(rng));
  }
}

/** A topic under `telemetry/` for `device`, now and then malformed, too long or not bridged. */
export function telemetryTopic(rng: Random, device: string): string {
  switch (rng.int(0, 9)) {
    case 0:
      return rng.pick(["telemetry", "telemetry/", "telemetry//env", "fuzz/other", "telemetryx/a"]);
    case 1:
      return `telemetry/${device}/${"l".repeat(rng.int(900, 2000))}`;
    case 2:
      return `telemetry/${device}/${oddLevel(rng)}`;
    default:
      return `telemetry/${device}/${rng.pick(["env", "power", "a/b/c"])}`;
  }
}

const QOS = [0, 1, 2] as const;

function topicFilter(rng: Random, prefix: string): string {
  return rng.pick([
    "#",
    "+",
    "telemetry/#",
    `telemetry/${prefix}/+`,
    "$SYS/#",
    "a/#/b",
    "a+/b",
    "",
    "/",
    `commands/${prefix}/#`,
    oddLevel(rng),
  ]);
}

function publishTopic(rng: Random, prefix: string): string {
  return rng.chance(0.8)
    ? telemetryTopic(rng, prefix)
    : rng.pick(["$SYS/x", "a/+/b", "#", "", `fuzz/${oddLevel(rng)}`, "telemetry/\u0000/x"]);
}

/** A packet of any MQTT type, with fields at and beyond their edges. */
function randomPacket(rng: Random, clientId: string): mqttPacket.Packet {
  const messageId = rng.pick([0, 1, rng.int(1, 65535), 65535]);
  switch (rng.int(0, 14)) {
    case 0:
      return {
        cmd: "connect",
        protocolId: rng.pick(["MQTT", "MQIsdp"] as const),
        protocolVersion: rng.pick([3, 4, 4, 5] as const),
        clean: rng.chance(0.7),
        clientId: rng.chance(0.9) ? clientId : "",
        keepalive: rng.pick([0, 1, 30, 600, 3601, 65535]),
        ...(rng.chance(0.3) ? { username: oddText(rng, 2) } : {}),
        ...(rng.chance(0.2) ? { password: rng.bytes(rng.int(0, 40)) } : {}),
        ...(rng.chance(0.3)
          ? {
              will: {
                topic: publishTopic(rng, clientId),
                payload: telemetryPayload(rng),
                qos: rng.pick(QOS),
                retain: rng.chance(0.2),
              },
            }
          : {}),
      };
    case 1:
      return { cmd: "connack", returnCode: rng.int(0, 5), sessionPresent: rng.chance(0.5) };
    case 2:
    case 3:
    case 4: {
      const qos = rng.pick(QOS);
      return {
        cmd: "publish",
        topic: publishTopic(rng, clientId),
        payload: telemetryPayload(rng),
        qos,
        retain: rng.chance(0.1),
        dup: rng.chance(0.1),
        ...(qos > 0 ? { messageId } : {}),
      };
    }
    case 5:
      return { cmd: "puback", messageId };
    case 6:
      return { cmd: "pubrec", messageId };
    case 7:
      return { cmd: "pubrel", messageId };
    case 8:
      return { cmd: "pubcomp", messageId };
    case 9:
      return {
        cmd: "subscribe",
        messageId,
        subscriptions: Array.from({ length: rng.int(1, 4) }, () => ({
          topic: topicFilter(rng, clientId),
          qos: rng.pick(QOS),
        })),
      };
    case 10:
      return { cmd: "suback", messageId, granted: [rng.pick([0, 1, 2, 128])] };
    case 11:
      return {
        cmd: "unsubscribe",
        messageId,
        unsubscriptions: Array.from({ length: rng.int(1, 3) }, () => topicFilter(rng, clientId)),
      };
    case 12:
      return { cmd: "unsuback", messageId, granted: [] };
    case 13:
      return { cmd: rng.pick(["pingreq", "pingresp", "disconnect"] as const) };
    default:
      return { cmd: "auth", reasonCode: rng.pick([0, 0x18, 0x19]) };
  }
}

/** A valid CONNECT for `clientId`, as a device would send it. */
export function connectFrame(clientId: string, keepalive = 30): Buffer {
  return mqttPacket.generate({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 4,
    clean: true,
    clientId,
    keepalive,
  });
}

/** A packet mqtt-packet generated, unless it refuses the fields, then noise. */
export function validFrame(rng: Random, clientId: string): Buffer {
  const packet = randomPacket(rng, clientId);
  try {
    return mqttPacket.generate(packet, { protocolVersion: rng.chance(0.1) ? 5 : 4 });
  } catch {
    return rng.bytes(rng.int(1, 64));
  }
}

/** The remaining length of MQTT 3.1.1 §2.2.3, as its variable-length bytes. */
function encodeLength(length: number): number[] {
  const bytes: number[] = [];
  for (let left = length; ; ) {
    const digit = left % 128;
    left = Math.floor(left / 128);
    bytes.push(left > 0 ? digit | 0x80 : digit);
    if (left === 0) return bytes;
  }
}

/** Where a frame's remaining-length field ends (at most four bytes after the type byte). */
function headerEnd(frame: Buffer): number {
  let at = 1;
  while (at < Math.min(frame.length, 5) && (frame[at] as number) & 0x80) at++;
  return Math.min(at + 1, frame.length);
}

/** One corruption of `frame`: bits, bytes, lengths, cuts, splices, or noise. */
export function mutate(rng: Random, frame: Buffer, other: Buffer = frame): Buffer {
  const copy = Buffer.from(frame);
  if (copy.length === 0) return rng.bytes(rng.int(1, 32));
  switch (rng.int(0, 9)) {
    case 0:
      for (let i = rng.int(1, 8); i > 0; i--) {
        const at = rng.int(0, copy.length - 1);
        copy[at] = (copy[at] as number) ^ (1 << rng.int(0, 7));
      }
      return copy;
    case 1:
      for (let i = rng.int(1, 4); i > 0; i--) copy[rng.int(0, copy.length - 1)] = rng.int(0, 255);
      return copy;
    case 2:
      return copy.subarray(0, rng.int(0, copy.length - 1));
    case 3: {
      const declared = rng.pick([
        0, 1, 2, 127, 128, 16_383, 16_384, 262_000, 2_097_151, 268_435_455,
      ]);
      const field = rng.chance(0.15) ? [0xff, 0xff, 0xff, 0xff, 0x7f] : encodeLength(declared);
      return Buffer.concat([
        copy.subarray(0, 1),
        Buffer.from(field),
        copy.subarray(headerEnd(copy)),
      ]);
    }
    case 4:
      return Buffer.concat([
        copy.subarray(0, rng.int(0, copy.length)),
        other.subarray(rng.int(0, other.length)),
      ]);
    case 5:
      return rng.bytes(rng.int(1, 256));
    case 6: {
      const at = rng.int(0, copy.length);
      return Buffer.concat([copy.subarray(0, at), rng.bytes(rng.int(1, 16)), copy.subarray(at)]);
    }
    case 7: {
      const at = rng.int(0, copy.length - 1);
      const end = rng.int(at, copy.length);
      return Buffer.concat([copy.subarray(0, end), copy.subarray(at, end), copy.subarray(end)]);
    }
    case 8:
      copy[0] = rng.chance(0.5)
        ? rng.int(0, 15) << 4
        : ((copy[0] as number) & 0xf0) | rng.int(0, 15);
      return copy;
    default: {
      const at = rng.int(0, copy.length - 1);
      return Buffer.concat([copy.subarray(0, at), copy.subarray(rng.int(at, copy.length))]);
    }
  }
}

const CONTENT_TYPES = [
  "application/json",
  "application/json; charset=utf-8",
  "application/json; charset=latin1",
  "application/json; charset=utf-16",
  "APPLICATION/JSON",
  "application/json;;;=",
  "text/plain",
  "text/plain; charset=utf-8",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=x",
  "application/octet-stream",
  "application/xml",
  "*/*",
  "json",
  "",
];

export interface HttpFuzzRequest {
  /** Undefined: no Content-Type header at all. */
  contentType: string | undefined;
  body: Buffer;
  /** Sends the fuzz identity's credentials. */
  authenticated: boolean;
  /** An Authorization header refused before any secret is checked. */
  malformedAuthorization: string | undefined;
}

/** An event for POST /publish, its fields liable to be missing, mistyped or odd. */
function eventJson(rng: Random, device: string): string {
  const fields: string[] = [];
  if (rng.chance(0.9)) {
    fields.push(
      `"topic":${rng.chance(0.85) ? JSON.stringify(telemetryTopic(rng, device)) : jsonValue(rng, 3)}`,
    );
  }
  const eventId = eventIdField(rng);
  if (eventId !== undefined) fields.push(`"event_id":${eventId}`);
  const ts = tsField(rng);
  if (ts !== undefined) fields.push(`"timestamp":${ts}`);
  if (rng.chance(0.3)) fields.push(`"source":${jsonValue(rng, 3)}`);
  if (rng.chance(0.8))
    fields.push(`"payload":${rng.chance(0.7) ? readingJson(rng) : jsonValue(rng)}`);
  return `{${fields.join(",")}}`;
}

function httpBody(rng: Random, device: string): string | Buffer {
  switch (rng.int(0, 11)) {
    case 0:
      return rng.bytes(rng.int(0, 2000));
    case 1:
      return jsonValue(rng);
    case 2: {
      const depth = rng.pick([100, 1000, 5000, 20_000, rng.int(1, 150_000)]);
      return rng.chance(0.5)
        ? deepJson(rng, depth)
        : `{"topic":"telemetry/${device}/env","event_id":"deep-${rng.next()}","timestamp":"${new Date().toISOString()}","payload":{"a":${deepJson(rng, depth)}}}`;
    }
    case 3:
      return `{"topic":"telemetry/${device}/env","event_id":"huge","timestamp":"${new Date().toISOString()}","payload":{"s":"${"z".repeat(rng.pick([70_000, 900_000, 1_100_000]))}"}}`;
    case 4: {
      const events = Array.from({ length: rng.pick([0, 1, 3, 20]) }, () => eventJson(rng, device));
      return `{"events":[${events.join(",")}]}`;
    }
    case 5:
      return `{"events":${rng.pick(['"x"', "{}", "null", `[${"1,".repeat(5000)}1]`, "[[]]"])}}`;
    case 6:
      return mutate(rng, Buffer.from(eventJson(rng, device)));
    case 7: {
      const text = Buffer.from(eventJson(rng, device));
      const at = rng.int(0, text.length);
      return Buffer.concat([
        text.subarray(0, at),
        Buffer.from(rng.pick(INVALID_UTF8)),
        text.subarray(at),
      ]);
    }
    default:
      return eventJson(rng, device);
  }
}

/** A request for POST /publish: body, content type and credentials all drawn from `rng`. */
export function httpRequest(rng: Random, device: string): HttpFuzzRequest {
  const body = httpBody(rng, device);
  return {
    contentType: rng.chance(0.7)
      ? "application/json"
      : rng.chance(0.9)
        ? rng.pick(CONTENT_TYPES)
        : undefined,
    body: Buffer.isBuffer(body) ? body : Buffer.from(body),
    authenticated: rng.chance(0.2),
    malformedAuthorization: rng.chance(0.05)
      ? rng.pick(["Basic", "Basic !!!", "Digest x", "Bearer", "basic Og==", "x".repeat(9000)])
      : undefined,
  };
}
