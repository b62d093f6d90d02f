import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { type Identity, Mappings } from "../../bridge/mappings.ts";
import { decodePayload } from "../../bridge/sparkplug.ts";
import type { ParseResult, RejectReason } from "../../bridge/telemetry-message.ts";
import { deviceIdentity, profileShape } from "../../device-sim/device.ts";
import { runMarker, shapedBadKinds, shapedBadPayload } from "../../device-sim/faults.ts";
import { helpText, parseOptions, type SimOptions, UsageError } from "../../device-sim/options.ts";
import {
  identityWarning,
  type OpenProfile,
  openProfile,
  PROFILES,
} from "../../device-sim/profiles/index.ts";
import type { Profile } from "../../device-sim/profiles/profile.ts";
import { sparkplugB } from "../../device-sim/profiles/sparkplug-b.ts";
import { tasmota } from "../../device-sim/profiles/tasmota.ts";
import { Random } from "../../device-sim/random.ts";
import { Sensors } from "../../device-sim/sensors.ts";
import type { Shape } from "../../device-sim/shape.ts";
import type { SparkplugShape } from "../../device-sim/sparkplug-shape.ts";

const dir = await fs.mkdtemp(path.join(os.tmpdir(), "sim-profiles-"));
afterAll(() => fs.rm(dir, { recursive: true, force: true }));

/** The service's default MAX_PAYLOAD_BYTES. */
const MAX_PAYLOAD_BYTES = 64 * 1024;

/** What each profile's device dev-1 publishes, as its shipped mapping must store it. */
const EXPECTED: Record<
  string,
  { topic: string; deviceId: string; identity: Identity; eventId?: string }
> = {
  zigbee2mqtt: { topic: "zigbee2mqtt/dev-1", deviceId: "dev-1", identity: "none" },
  tasmota: { topic: "tele/dev-1/SENSOR", deviceId: "dev-1", identity: "device_time", eventId: "" },
  shelly: {
    topic: "dev-1/events/rpc",
    deviceId: "dev-1",
    identity: "event_id",
    eventId: "NotifyStatus",
  },
  homeassistant: {
    topic: "homeassistant/sensor/dev-1/state",
    deviceId: "sensor.dev-1",
    identity: "none",
  },
  owntracks: {
    topic: "owntracks/sim/dev-1",
    deviceId: "sim/dev-1",
    identity: "event_id",
    eventId: "location",
  },
  // Its event id is the edge node's seq, which every message moves on.
  "sparkplug-b": {
    topic: "spBv1.0/Sim/DDATA/dev-1/sensor",
    deviceId: "dev-1/sensor",
    identity: "event_id",
  },
};

function shapeOf(open: OpenProfile, seed = 1): Shape {
  const random = new Random(seed);
  return profileShape(
    open,
    { deviceId: "dev-1", login: undefined, random, sensors: new Sensors(random) },
    "r-1",
  );
}

/** The mapping file read afresh, as the service reads it. */
async function serviceMappings(profile: Profile): Promise<Mappings> {
  return Mappings.parse(await fs.readFile(profile.mappingsFile, "utf8"), profile.mappingsFile);
}

function read(mappings: Mappings, topic: string, payload: Buffer): ParseResult | undefined {
  return mappings.read({ topic, payload, clientId: "dev-1", receivedAtMs: 0 }, MAX_PAYLOAD_BYTES);
}

/** Connects a shape that sends BIRTHs, and reads them as the service does before its readings. */
function readBirths(mappings: Mappings, shape: Shape, timeMs: number): void {
  shape.nextWill?.(timeMs);
  for (const birth of shape.births?.(timeMs) ?? [])
    rowOf(read(mappings, birth.topic, birth.payload));
}

function rowOf(result: ParseResult | undefined) {
  if (!result?.ok) throw new Error(`refused: ${result ? result.detail : "no mapping reads it"}`);
  return result.row;
}

/** A tasmota.yaml like the shipped one, with its zone set to `zone`. */
async function tasmotaIn(zone: string): Promise<Profile> {
  const text = await fs.readFile(tasmota.mappingsFile, "utf8");
  const file = path.join(dir, `tasmota-${zone.replace("/", "-")}.yaml`);
  await fs.writeFile(file, text.replaceAll("zone: Europe/Berlin", `zone: ${zone}`));
  return { ...tasmota, mappingsFile: file };
}

describe("each profile, read by its mapping", () => {
  it("covers every profile", () => {
    expect(PROFILES.map((profile) => profile.name).sort()).toEqual(Object.keys(EXPECTED).sort());
  });

  for (const profile of PROFILES) {
    const expected = EXPECTED[profile.name] as (typeof EXPECTED)[string];

    it(`${profile.name}: publishes on ${expected.topic}, read by its mapping as device ${expected.deviceId} at the time it stamped`, async () => {
      const open = openProfile(profile);
      expect(open.identity).toBe(expected.identity);
      const mappings = await serviceMappings(profile);
      expect(mappings.identityOf(expected.topic)).toBe(expected.identity);
      const shape = shapeOf(open);
      expect(shape.topic).toBe(expected.topic);
      expect(shape.storedDeviceId).toBe(expected.deviceId);

      const resolutionMs = profile.time?.resolutionMs ?? 1;
      const start = Date.UTC(2026, 0, 15, 6, 59, 30, 123);
      readBirths(mappings, shape, start - 60_000);
      // A winter and a summer day, a message every 7.3 s for a few minutes of each.
      for (const day of [0, 181]) {
        let previous = Number.NEGATIVE_INFINITY;
        for (let n = 0; n < 40; n++) {
          const instant = start + day * 86_400_000 + n * 7_300;
          const event = shape.event(n, instant, false);
          const row = rowOf(read(mappings, shape.topic, event.payload));
          expect(row.topic).toBe(expected.topic);
          expect(row.deviceId).toBe(expected.deviceId);
          if (expected.identity === "none") {
            expect(event.key).toBe(row.payload.toString());
            continue;
          }
          expect(row.timeMs).toBe(Math.floor(instant / resolutionMs) * resolutionMs);
          if (expected.eventId !== undefined) expect(row.eventId).toBe(expected.eventId);
          expect(event.key).toBe(`${expected.topic} ${row.timeMs}/${row.eventId}`);
          expect(row.timeMs).toBeGreaterThan(previous);
          previous = row.timeMs;
        }
      }
    });

    // Sparkplug B's malformed messages are its own: see below.
    if (profile.payload === "sparkplug-b") continue;
    const kinds = shapedBadKinds(profile);
    if (kinds.length === 0) {
      it(`${profile.name}: has no malformed message, since any bare value is stored`, () => {
        expect(profile.payload).toBe("bare value");
        expect(() => parseOptions(["--profile", profile.name, "--bad-rate", "0.1"], {})).toThrow(
          /takes no --bad-rate/,
        );
      });
      continue;
    }
    it(`${profile.name}: malformed messages (${kinds.join(", ")}) are each refused by the mapping, marked with the run`, async () => {
      const mappings = await serviceMappings(profile);
      const reasons: Record<string, RejectReason> = {
        not_json: "payload_not_json",
        oversized: "payload_too_large",
        no_time: "ts_missing",
        bad_time: "ts_invalid",
        no_event_id: "event_id_missing",
      };
      const random = new Random(3);
      const body = profile.device({
        deviceId: "dev-1",
        login: undefined,
        random,
        sensors: new Sensors(random),
      })(Date.now(), Math.floor(Date.now() / 1000)) as Record<string, unknown>;
      for (const kind of kinds) {
        const payload = shapedBadPayload(kind, body, profile, "r-1");
        expect(payload.includes(runMarker("r-1")), kind).toBe(true);
        // The marker must be in the 4 KiB a dead letter keeps.
        expect(payload.indexOf(runMarker("r-1")), kind).toBeLessThan(4096);
        const result = read(mappings, expected.topic, payload);
        expect(result?.ok, kind).toBe(false);
        expect(result?.ok === false && result.reason, kind).toBe(reasons[kind]);
      }
    });
  }
});

describe("sparkplug-b: an edge node and its device", () => {
  const edge = () => shapeOf(openProfile(sparkplugB)) as SparkplugShape;
  const start = Date.UTC(2026, 4, 1, 12);

  it("sends NBIRTH (seq 0, its will's bdSeq) and DBIRTH, then DDATA by alias alone, read with each metric named", async () => {
    const mappings = await serviceMappings(sparkplugB);
    const shape = edge();
    const will = shape.nextWill(start);
    expect(will.topic).toBe("spBv1.0/Sim/NDEATH/dev-1");
    const [nodeBirth, deviceBirth, ...rest] = shape.births(start);
    expect(rest).toEqual([]);
    expect(nodeBirth?.topic).toBe("spBv1.0/Sim/NBIRTH/dev-1");
    expect(deviceBirth?.topic).toBe("spBv1.0/Sim/DBIRTH/dev-1/sensor");
    const node = rowOf(
      read(mappings, nodeBirth?.topic ?? "", nodeBirth?.payload ?? Buffer.alloc(0)),
    );
    expect(node).toMatchObject({ deviceId: "dev-1", eventId: "0", timeMs: start });
    expect(JSON.parse(node.payload.toString()).metrics).toEqual({
      bdSeq: 0,
      "Node Control/Rebirth": false,
    });
    expect(decodePayload(will.payload).metrics).toMatchObject([
      { name: "bdSeq", value: { value: 0 } },
    ]);
    const device = rowOf(
      read(mappings, deviceBirth?.topic ?? "", deviceBirth?.payload ?? Buffer.alloc(0)),
    );
    expect(device).toMatchObject({ deviceId: "dev-1/sensor", eventId: "1", timeMs: start + 1 });
    expect(JSON.parse(device.payload.toString()).datatypes).toEqual({
      Temperature: "Float",
      Humidity: "Float",
      Battery: "Int32",
    });

    const event = shape.event(0, start + 1_000, false);
    const sent = decodePayload(event.payload);
    expect(sent.metrics.map((metric) => [metric.name, metric.alias])).toEqual([
      [undefined, 10],
      [undefined, 11],
      [undefined, 12],
    ]);
    const row = rowOf(read(mappings, event.topic, event.payload));
    expect(row).toMatchObject({ deviceId: "dev-1/sensor", eventId: "2", timeMs: start + 1_000 });
    const { metrics } = JSON.parse(row.payload.toString());
    expect(Object.keys(metrics)).toEqual(["Temperature", "Humidity", "Battery"]);
    expect(metrics.Temperature).toBeGreaterThan(-30);
    expect(metrics.Humidity).toBeGreaterThanOrEqual(0);
    expect(Number.isInteger(metrics.Battery)).toBe(true);
    expect(event.key).toBe(`${event.topic} ${row.timeMs}/2`);
  });

  it("numbers its messages 0–255 and never repeats (timestamp, seq) on a topic, in a burst too", async () => {
    const mappings = await serviceMappings(sparkplugB);
    const shape = edge();
    readBirths(mappings, shape, start);
    const seqs: number[] = [];
    const keys = new Set<string>();
    // 600 readings due at one and the same millisecond.
    for (let n = 0; n < 600; n++) {
      const event = shape.event(n, start, false);
      const row = rowOf(read(mappings, event.topic, event.payload));
      seqs.push(Number(row.eventId));
      expect(keys.has(event.key)).toBe(false);
      keys.add(event.key);
    }
    expect(seqs.slice(0, 3)).toEqual([2, 3, 4]);
    expect(seqs[253]).toBe(255);
    expect(seqs[254]).toBe(0);
    expect(Math.max(...seqs)).toBe(255);
  });

  it("reborn on every connection: the next bdSeq, seq 0; a service that forgot its aliases dead-letters DDATA until then", async () => {
    const shape = edge();
    readBirths(await serviceMappings(sparkplugB), shape, start);
    const data = shape.event(0, start + 10, false);

    // The service restarts: it knows no alias of the edge node.
    const restarted = await serviceMappings(sparkplugB);
    const refused = read(restarted, data.topic, data.payload);
    expect(refused?.ok === false && refused.reason).toBe("sparkplug_alias_unknown");

    const will = shape.nextWill(start + 20);
    expect(decodePayload(will.payload).metrics[0]).toMatchObject({
      name: "bdSeq",
      value: { value: 1 },
    });
    const [nodeBirth, deviceBirth] = shape.births(start + 20);
    const node = rowOf(
      read(restarted, nodeBirth?.topic ?? "", nodeBirth?.payload ?? Buffer.alloc(0)),
    );
    expect(node.eventId).toBe("0");
    expect(JSON.parse(node.payload.toString()).metrics.bdSeq).toBe(1);
    rowOf(read(restarted, deviceBirth?.topic ?? "", deviceBirth?.payload ?? Buffer.alloc(0)));
    const after = shape.event(1, start + 30, false);
    expect(rowOf(read(restarted, after.topic, after.payload)).eventId).toBe("2");
  });

  it("malformed: bytes that are no Sparkplug payload, or DDATA with an alias no BIRTH declared, marked with the run", async () => {
    const mappings = await serviceMappings(sparkplugB);
    const shape = edge();
    readBirths(mappings, shape, start);
    const reasons = new Set<string>();
    for (let n = 0; n < 20; n++) {
      const payload = shape.bad(n, start + n);
      expect(payload.includes(runMarker("r-1"))).toBe(true);
      expect(payload.indexOf(runMarker("r-1"))).toBeLessThan(4096);
      const result = read(mappings, shape.topic, payload);
      expect(result?.ok).toBe(false);
      if (result?.ok === false) reasons.add(result.reason);
    }
    expect([...reasons].sort()).toEqual(["payload_not_sparkplug", "sparkplug_alias_unknown"]);
  });
});

describe("device times", () => {
  it("tasmota writes the local time of the zone its mapping file names", async () => {
    for (const [zone, winter, summer] of [
      ["Europe/Berlin", "2026-01-15T08:00:00", "2026-07-15T09:00:00"],
      ["America/New_York", "2026-01-15T02:00:00", "2026-07-15T03:00:00"],
    ] as const) {
      const profile = await tasmotaIn(zone);
      const shape = shapeOf(openProfile(profile));
      const mappings = await serviceMappings(profile);
      for (const [instant, local] of [
        [Date.UTC(2026, 0, 15, 7, 0, 0, 400), winter],
        [Date.UTC(2026, 6, 15, 7, 0, 0, 400), summer],
      ] as const) {
        const { payload } = shape.event(0, instant, false);
        expect(JSON.parse(payload.toString()).Time, zone).toBe(local);
        expect(rowOf(read(mappings, shape.topic, payload)).timeMs, zone).toBe(instant - 400);
      }
    }
  });

  it("never repeat on a topic: a burst, or a wall clock going back or skipping an hour, moves the time on", async () => {
    const mappings = new Map(
      await Promise.all(
        PROFILES.filter((profile) => profile.time).map(
          async (profile) => [profile, await serviceMappings(profile)] as const,
        ),
      ),
    );
    // Berlin's clocks skip 02:00–03:00 on 29 March 2026 and go back over it on 25 October.
    const spring = Date.UTC(2026, 2, 29, 1, 0, 0);
    const autumn = Date.UTC(2026, 9, 25, 1, 0, 0);
    for (const [profile, reader] of mappings) {
      const shape = shapeOf(openProfile(profile));
      readBirths(reader, shape, spring - 60_000);
      const instants = [
        ...Array.from({ length: 5 }, () => spring - 1_000),
        ...Array.from({ length: 3 }, (_, n) => spring + n * 1_000),
        ...Array.from({ length: 4 }, (_, n) => autumn - 2_000 + n * 1_000),
        ...Array.from({ length: 20 }, () => autumn + 5_000),
      ];
      let previous = Number.NEGATIVE_INFINITY;
      for (const [n, instant] of instants.entries()) {
        const row = rowOf(read(reader, shape.topic, shape.event(n, instant, false).payload));
        expect(row.timeMs, `${profile.name} message ${n}`).toBeGreaterThan(previous);
        previous = row.timeMs;
      }
    }
  });

  it("owntracks: queued (late) locations lie before the first sent and never repeat", async () => {
    const profile = PROFILES.find((candidate) => candidate.name === "owntracks") as Profile;
    const shape = shapeOf(openProfile(profile));
    const start = Date.UTC(2026, 4, 1, 12);
    const keys = new Set<string>();
    // A location every 20 s for two hours, and as many queued ones an hour
    // old: past the first hour they fall within the run, and a third of them
    // on one and the same second.
    for (let n = 0; n < 720; n++) {
      const late = n % 2 === 1;
      const instant = start + n * 20_000 - (late ? 3_600_000 : 0);
      const { key } = shape.event(n, n % 3 === 0 && late ? start - 3_600_000 : instant, late);
      expect(keys.has(key), key).toBe(false);
      keys.add(key);
      if (late) expect(Number(key.split(" ")[1]?.split("/")[0])).toBeLessThan(start);
    }
  });
});

describe("--profile", () => {
  it("is read with its mapping file; default is the service's own shape", () => {
    expect(parseOptions([], {})?.profile).toBeUndefined();
    expect(parseOptions(["--profile", "default"], {})?.profile).toBeUndefined();
    const options = parseOptions(["--profile", "shelly", "--rate", "100", "--inflight", "4"], {});
    expect(options?.profile?.profile.name).toBe("shelly");
    expect(options?.profile?.identity).toBe("event_id");
  });

  it("refuses what a profile's devices cannot do, with a line naming the flag", () => {
    const cases: [string[], RegExp][] = [
      [["--profile", "zigbee"], /^--profile must be one of default, zigbee2mqtt, tasmota/],
      [
        ["--profile", "tasmota", "--rate", "2"],
        /^--rate 2: a tasmota device sends at most 1 message a second/,
      ],
      [["--profile", "owntracks", "--rate", "1.5"], /at most 1 message a second/],
      [["--profile", "shelly", "--rate", "101"], /at most 100 messages a second/],
      [["--profile", "tasmota", "--late-rate", "0.1"], /^--profile tasmota takes no --late-rate/],
      [
        ["--profile", "zigbee2mqtt", "--late-rate", "0.1"],
        /takes no --late-rate: its messages carry no time/,
      ],
      [["--profile", "homeassistant", "--clock-skew", "5"], /takes no --clock-skew/],
      [["--profile", "homeassistant", "--bad-rate", "0.1"], /takes no --bad-rate/],
      [
        ["--profile", "sparkplug-b", "--late-rate", "0.1"],
        /^--profile sparkplug-b takes no --late-rate/,
      ],
      [
        ["--profile", "sparkplug-b", "--devices", "10001"],
        /^--devices 10001: a sparkplug-b device is an edge node, and the service keeps the aliases of at most 10,000/,
      ],
      [["--profile", "sparkplug-b", "--rate", "1001"], /at most 1000 messages a second/],
      [
        ["--profile", "shelly", "--topic-prefix", "x"],
        /takes no --topic-prefix: its devices publish on <device id>\/events\/rpc/,
      ],
    ];
    for (const [argv, message] of cases) {
      expect(() => parseOptions(argv, {})).toThrow(UsageError);
      expect(() => parseOptions(argv, {})).toThrow(message);
    }
    // The faults that make sense for a profile are taken.
    expect(
      parseOptions(
        [
          ...["--profile", "owntracks", "--late-rate", "0.1", "--clock-skew", "60"],
          ...["--dup-rate", "0.1", "--bad-rate", "0.1", "--reconnect-rate", "0.1"],
        ],
        {},
      )?.lateRate,
    ).toBe(0.1);
  });

  it("warns where a device logging in as itself would publish for another device", () => {
    const warning = (argv: string[]) => {
      const options = parseOptions([...argv, "--run-id", "r1"], {}) as SimOptions;
      const { deviceId, login } = deviceIdentity(options, 0);
      return identityWarning(options.profile as OpenProfile, deviceId, login);
    };
    const asItself = ["--username", "dev-1", "--password", "x", "--devices", "1"];
    expect(warning(["--profile", "owntracks", ...asItself])).toBe(
      "warning: mappings/owntracks.yaml stores dev-1's messages as device dev-1/dev-1, for which a device identity may not publish: log in as gateway identities allowed to publish on owntracks/<--username, or sim>/<device id>",
    );
    expect(warning(["--profile", "homeassistant", ...asItself])).toMatch(/as device sensor\.dev-1/);
    expect(warning(["--profile", "tasmota", ...asItself])).toBeUndefined();
    // Several devices logging in as one identity publish for others, as a gateway does.
    expect(
      warning([
        "--profile",
        "owntracks",
        "--username",
        "alice",
        "--password",
        "x",
        "--devices",
        "3",
      ]),
    ).toBeUndefined();
  });

  it("refuses a mapping file that no longer reads the profile as it sends", async () => {
    const file = path.join(dir, "tasmota-received.yaml");
    await fs.writeFile(file, "- topic: tele/{device}/SENSOR\n");
    expect(() => openProfile({ ...tasmota, mappingsFile: file })).toThrow(
      /tasmota-received.yaml reads tele\/sim-device\/SENSOR as neither id nor time: stored at least once, and the tasmota profile needs a row per \(topic, time\)/,
    );
  });

  it("is documented in --help, with each profile's topic and MAPPINGS_FILE", () => {
    const help = helpText();
    expect(help).toMatch(/^ {2}--profile .*\(default: default\)$/m);
    for (const profile of PROFILES) {
      expect(help).toContain(
        `  ${profile.name.padEnd(15)}${profile.topicPattern}  MAPPINGS_FILE=${profile.mappingsFile}`,
      );
    }
  });
});
