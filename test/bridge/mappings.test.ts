import fs from "node:fs";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../bridge/config.ts";
import { bridgedTopics, MappingError, Mappings } from "../../bridge/mappings.ts";
import type { ParseResult } from "../../bridge/telemetry-message.ts";

function read(mappings: Mappings, topic: string, payload: string): ParseResult | undefined {
  return mappings.read(
    { topic, payload: Buffer.from(payload), clientId: "c", receivedAtMs: 1_700_000_000_000 },
    65536,
  );
}

describe("Mappings.parse", () => {
  it("names the file, the entry and the reason of a mapping it cannot use", () => {
    const cases: [string, RegExp][] = [
      ["not: [a list", /^m\.yaml: not valid YAML: /],
      ["topic: a/{device}", /^m\.yaml: must be a list of mappings/],
      ["- name: x", /^m\.yaml: entry 1 \(x\): topic is required/],
      ["- topic: a/{device}\n  tpoic: b", /^m\.yaml: entry 1: unknown key "tpoic"/],
      ["- topic: a/{device}\n- topic: a/#/b", /^m\.yaml: entry 2: topic "a\/#\/b" has #/],
      ["- topic: a/dev{device}", /entry 1: topic level "dev\{device\}" must be a whole \{name\}/],
      [
        "- topic: a/{node}",
        /entry 1: device_id is required when the topic has no \{device\} level/,
      ],
      [
        "- topic: a/{node}\n  device_id: '{dev}'",
        /device_id uses \{dev\}, which the topic does not name/,
      ],
      ["- topic: a/{device}/{device}", /names the level \{device\} twice/],
      ["- topic: a/{device}\n  payload: xml", /payload must be one of json, scalar, text/],
      [
        "- topic: a/{device}\n  time: { field: t, format: iso-local, zone: Mars/Base }",
        /time\.zone "Mars\/Base" is not a time zone/,
      ],
      [
        "- topic: a/{device}\n  time: { field: t, format: iso-local }",
        /time\.zone is required with iso-local/,
      ],
      [
        "- topic: a/{device}\n  time: { field: t, format: epoch-ns }",
        /time\.format must be one of/,
      ],
      [
        "- topic: a/{device}\n  time: { field: 'a..b', format: iso }",
        /time\.field must be a field path/,
      ],
      ["- topic: a/{device}\n  event_id: id", /event_id needs a time from the payload/],
      [
        "- topic: a/{device}\n  payload: scalar\n  time: { field: t, format: iso }",
        /a scalar payload has no fields/,
      ],
      ["- topic: a/{device}\n  exclude: a/b", /exclude must be a list of MQTT topic filters/],
    ];
    for (const [text, message] of cases) {
      expect(() => Mappings.parse(text, "m.yaml"), text).toThrow(MappingError);
      expect(() => Mappings.parse(text, "m.yaml"), text).toThrow(message);
    }
  });

  it("stops the configuration with one line naming MAPPINGS_FILE", () => {
    expect(() => loadConfig({ MAPPINGS_FILE: "no/such/file.yaml" })).toThrow(
      /^MAPPINGS_FILE no\/such\/file\.yaml: cannot be read \(ENOENT\)$/,
    );
  });

  it("loads every shipped example", () => {
    for (const file of fs.readdirSync("mappings")) {
      expect(Mappings.load(`mappings/${file}`).filters.length, file).toBeGreaterThan(0);
    }
  });
});

describe("Mappings.read", () => {
  const mappings = Mappings.parse(
    [
      "- topic: site/{site}/{device}/reading",
      "  exclude: [site/test/#]",
      "  device_id: '{site}-{device}'",
      "  event_id: [meta.id, seq]",
      "  time: { field: meta.at, format: epoch-us }",
      "- topic: text/{device}",
      "  payload: text",
    ].join("\n"),
    "m.yaml",
  );

  it("takes the first match, its levels, fields and time", () => {
    const result = read(
      mappings,
      "site/north/d7/reading",
      '{"meta":{"id":"x","at":1700000000123456},"seq":4}',
    );
    expect(result).toMatchObject({
      ok: true,
      row: { deviceId: "north-d7", eventId: "x/4", timeMs: 1_700_000_000_123 },
    });
    expect(read(mappings, "site/test/d7/reading", "{}")).toBeUndefined();
    expect(read(mappings, "elsewhere/d7", "{}")).toBeUndefined();
  });

  it("dead-letters what a mapping cannot read, with the reason", () => {
    const reason = (payload: string) =>
      (read(mappings, "site/n/d/reading", payload) as { reason?: string }).reason;
    expect(reason('{"meta":{"at":1},"seq":1}')).toBe("event_id_missing");
    expect(reason('{"meta":{"id":{"a":1},"at":1},"seq":1}')).toBe("event_id_invalid");
    expect(reason('{"meta":{"id":"x"},"seq":1}')).toBe("ts_missing");
    expect(reason('{"meta":{"id":"x","at":"soon"},"seq":1}')).toBe("ts_invalid");
    expect(reason("[1]")).toBe("payload_not_object");
    expect(read(mappings, "site//d/reading", "{}")).toMatchObject({ reason: "topic_invalid" });
  });

  it("stores text as {value}, and refuses what jsonb cannot hold", () => {
    const text = read(mappings, "text/t1", "hello\tworld");
    expect(text).toMatchObject({ ok: true, row: { deviceId: "t1" } });
    expect(JSON.parse((text as { row: { payload: Buffer } }).row.payload.toString())).toEqual({
      value: "hello\tworld",
    });
    expect(read(mappings, "text/t1", "a\u0000b")).toMatchObject({
      reason: "payload_nul_character",
    });
  });

  it("bridges the mappings' filters, and names a mapped topic's device for the ACL", () => {
    const topics = bridgedTopics(["telemetry/#"], mappings);
    expect(topics.filters).toEqual(["telemetry/#", "site/+/+/reading", "text/+"]);
    expect(topics.bridged("text/t1")).toBe(true);
    expect(topics.bridged("other/x")).toBe(false);
    // An excluded topic is brokered, not stored.
    expect(topics.bridged("site/test/d7/reading")).toBe(false);
    expect(topics.deviceOf("site/north/d7/reading")).toBe("north-d7");
    expect(topics.deviceOf("telemetry/dev-1/env")).toBe("dev-1");
  });
});
