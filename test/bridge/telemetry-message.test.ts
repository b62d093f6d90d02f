import { describe, expect, it } from "vitest";
import {
  MAX_JSON_DEPTH,
  nestsDeeperThan,
  parseTelemetry,
  parseTimestamp,
  type RawMessage,
} from "../../bridge/telemetry-message.ts";

function message(payload: string | Buffer, topic = "telemetry/dev-1/env"): RawMessage {
  return {
    topic,
    payload: typeof payload === "string" ? Buffer.from(payload) : payload,
    clientId: "dev-1",
    receivedAtMs: 1_700_000_000_000,
  };
}

function reason(payload: string | Buffer, topic?: string): string | undefined {
  const result = parseTelemetry(message(payload, topic), 1024);
  return result.ok ? undefined : result.reason;
}

describe("nestsDeeperThan", () => {
  const depth = (json: string) => {
    const value = JSON.parse(json);
    for (let levels = 0; ; levels++) if (!nestsDeeperThan(value, levels)) return levels;
  };

  it("counts the levels of arrays and objects", () => {
    expect(depth("1")).toBe(0);
    expect(depth('{"a":[1,{"b":[]}],"c":{}}')).toBe(4);
    expect(depth('["[[[[", {"{{": "]]"}]')).toBe(2);
    expect(depth(`${"[".repeat(1000)}${"]".repeat(1000)}`)).toBe(1000);
    const deep = JSON.parse(`${"[".repeat(100_000)}${"]".repeat(100_000)}`);
    expect(nestsDeeperThan(deep, 64)).toBe(true);
  });
});

describe("parseTimestamp", () => {
  it("reads epoch milliseconds and ISO 8601 with a zone", () => {
    expect(parseTimestamp(1_700_000_000_123)).toBe(1_700_000_000_123);
    expect(parseTimestamp("2026-03-01T12:00:00Z")).toBe(Date.UTC(2026, 2, 1, 12));
    expect(parseTimestamp("2026-03-01T12:00:00.5+02:00")).toBe(Date.UTC(2026, 2, 1, 10, 0, 0, 500));
    expect(parseTimestamp("2026-03-01 12:00-0130")).toBe(Date.UTC(2026, 2, 1, 13, 30));
    expect(parseTimestamp("2026-03-01T12:00:00.123456Z")).toBe(Date.UTC(2026, 2, 1, 12, 0, 0, 123));
  });

  it("refuses timestamps without a zone, impossible dates and non-timestamps", () => {
    for (const bad of [
      "2026-03-01T12:00:00",
      "2026-02-30T00:00:00Z",
      "2026-13-01T00:00:00Z",
      "2026-03-01T24:00:00Z",
      "yesterday",
      "",
      Number.NaN,
      Number.POSITIVE_INFINITY,
      9e15,
      -1,
      "1969-12-31T23:59:59Z",
      "10000-01-01T00:00:00Z",
      true,
      null,
      {},
    ]) {
      expect(parseTimestamp(bad), String(bad)).toBeUndefined();
    }
  });
});

describe("parseTelemetry", () => {
  it("keeps the payload bytes as received and takes device_id from the topic", () => {
    const text = '{ "event_id": "e-1",\n "ts": "2026-03-01T12:00:00Z", "temp": 21.5 }';
    const result = parseTelemetry(message(text, "telemetry/sensor-7/room/3"), 1024);
    expect(result).toEqual({
      ok: true,
      row: {
        topic: "telemetry/sensor-7/room/3",
        deviceId: "sensor-7",
        eventId: "e-1",
        timeMs: Date.UTC(2026, 2, 1, 12),
        payload: Buffer.from(text),
        receivedAtMs: 1_700_000_000_000,
        clientId: "dev-1",
      },
    });
  });

  it("names the reason for each kind of malformed message", () => {
    const ok = '"ts": 1700000000000';
    expect(reason(`{"event_id":"a",${ok}}`)).toBeUndefined();
    expect(reason(`{"event_id":"a",${ok}}`, "telemetry")).toBe("topic_invalid");
    expect(reason(`{"event_id":"a",${ok}}`, "telemetry//x")).toBe("topic_invalid");
    expect(reason(`{"event_id":"a",${ok}}`, `telemetry/d/${"x".repeat(1100)}`)).toBe(
      "topic_invalid",
    );
    expect(reason(`{"event_id":"${"a".repeat(2000)}",${ok}}`)).toBe("payload_too_large");
    expect(reason(Buffer.from([0x7b, 0xff, 0x7d]))).toBe("payload_not_utf8");
    expect(reason("not json")).toBe("payload_not_json");
    expect(reason("[1,2]")).toBe("payload_not_object");
    expect(reason("null")).toBe("payload_not_object");
    expect(reason(`{${ok}}`)).toBe("event_id_missing");
    expect(reason(`{"event_id":42,${ok}}`)).toBe("event_id_invalid");
    expect(reason(`{"event_id":"",${ok}}`)).toBe("event_id_invalid");
    expect(reason(`{"event_id":"${"x".repeat(129)}",${ok}}`)).toBe("event_id_invalid");
    expect(reason(`{"event_id":"a\\u0000b",${ok}}`)).toBe("event_id_invalid");
    expect(reason(`{"event_id":"a\\ud800",${ok}}`)).toBe("event_id_invalid");
    expect(reason(`{"event_id":"a",${ok}}`, "telemetry/d/\ud800")).toBe("topic_invalid");
    expect(reason(`{"event_id":"a"}`)).toBe("ts_missing");
    expect(reason(`{"event_id":"a","ts":"noon"}`)).toBe("ts_invalid");
    expect(reason(`{"event_id":"a",${ok},"note":"x\\u0000"}`)).toBe("payload_nul_character");
    expect(reason(`{"event_id":"a",${ok},"k\\u0000":1}`)).toBe("payload_nul_character");
  });

  it("refuses arrays and objects nested deeper than the limit", () => {
    const nested = (depth: number) =>
      `{"event_id":"a","ts":0,"v":${"[".repeat(depth - 1)}${"]".repeat(depth - 1)}}`;
    expect(reason(nested(MAX_JSON_DEPTH))).toBeUndefined();
    expect(reason(nested(MAX_JSON_DEPTH + 1))).toBe("payload_too_deep");
    expect(reason(`{"event_id":"a","ts":0,"v":"${"[{".repeat(200)}"}`)).toBeUndefined();
  });

  it("counts event_id length in characters, not UTF-16 units", () => {
    expect(reason(`{"event_id":"${"😀".repeat(128)}","ts":0}`)).toBeUndefined();
    expect(reason(`{"event_id":"${"😀".repeat(129)}","ts":0}`)).toBe("event_id_invalid");
  });

  it("refuses the escapes jsonb cannot store, wherever they are", () => {
    const ok = '"event_id":"a","ts":0';
    expect(reason(`{${ok},"k":"\\ud800"}`)).toBe("payload_lone_surrogate");
    expect(reason(`{${ok},"k":"x\\uDC00y"}`)).toBe("payload_lone_surrogate");
    expect(reason(`{${ok},"\\ud83d":1}`)).toBe("payload_lone_surrogate");
    // A later duplicate key hides the value from JSON.parse, not from PostgreSQL.
    expect(reason(`{${ok},"a":"\\u0000","a":1}`)).toBe("payload_nul_character");
    expect(reason(`{${ok},"k":"\\\\\\u0000"}`)).toBe("payload_nul_character");
    expect(reason(`{${ok},"k":"\\ud83d\\ude00 \\u00e9 \\\\ud800"}`)).toBeUndefined();
  });

  it("accepts an escaped backslash before u0000, which is not a NUL", () => {
    expect(reason(`{"event_id":"a","ts":0,"path":"C:\\\\u0000"}`)).toBeUndefined();
  });
});
