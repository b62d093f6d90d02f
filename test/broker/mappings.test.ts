import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import {
  DataType,
  encodePayload,
  type SparkplugMetric,
  scalarValue,
} from "../../bridge/sparkplug.ts";
import { IdentityStore } from "../../storage/identities.ts";
import { connectDevice, publishAcked } from "../helpers/device.ts";
import { runCommand } from "../helpers/run-command.ts";
import { type BrokeredService, startTestService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("mappings");
const pool = new pg.Pool({ connectionString: db.url });
afterAll(() => pool.end());

interface StoredRow {
  topic: string;
  device_id: string;
  event_id: string;
  time: string;
  payload: unknown;
}

/** Publishes each [topic, payload] at QoS 1 through a service reading `file`; returns the rows of `prefix`. */
async function ingest(
  file: string,
  messages: [string, string | Buffer][],
  topicPattern: string,
): Promise<StoredRow[]> {
  const service: BrokeredService = await startTestService(db.url, { MAPPINGS_FILE: file });
  try {
    const device = await connectDevice(service.mqttPort, `fixtures-${file}`);
    for (const [topic, payload] of messages) await publishAcked(device, topic, payload);
    await device.endAsync();
  } finally {
    await service.close();
  }
  const { rows } = await pool.query<StoredRow>(
    `SELECT topic, device_id, event_id, to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS time, payload
       FROM telemetry WHERE topic LIKE $1 ORDER BY time, topic, event_id`,
    [topicPattern],
  );
  return rows;
}

async function rejected(topicPattern: string): Promise<Record<string, number>> {
  const { rows } = await pool.query<{ reason: string; n: number }>(
    "SELECT reason, sum(occurrences)::int AS n FROM telemetry_rejected WHERE topic LIKE $1 GROUP BY reason",
    [topicPattern],
  );
  return Object.fromEntries(rows.map((row) => [row.reason, row.n]));
}

describe("shipped mappings", () => {
  it("zigbee2mqtt: device readings by friendly name, stored at least once; bridge messages not stored", async () => {
    const before = Date.now();
    const reading = '{"temperature":21.5,"humidity":48,"battery":97,"linkquality":120}';
    const rows = await ingest(
      "mappings/zigbee2mqtt.yaml",
      [
        ["zigbee2mqtt/kitchen_sensor", reading],
        ["zigbee2mqtt/hall_door", '{"contact":false,"battery":100,"voltage":3025}'],
        [
          "zigbee2mqtt/plug_tv",
          '{"state":"ON","power":62.3,"energy":1.21,"update":{"state":"idle"}}',
        ],
        // A redelivery after a lost PUBACK: without an id or a time, a second row.
        ["zigbee2mqtt/kitchen_sensor", reading],
        ["zigbee2mqtt/bridge/state", '{"state":"online"}'],
        ["zigbee2mqtt/bridge", "online"],
        ["zigbee2mqtt/bridge/info", '{"version":"1.40.0","coordinator":{"type":"zStack3x0"}}'],
        ["zigbee2mqtt/bridge/logging", '{"level":"info","message":"MQTT publish"}'],
        ["zigbee2mqtt/kitchen_sensor/availability", '{"state":"online"}'],
        ["zigbee2mqtt/kitchen_sensor/set", '{"state":"ON"}'],
      ],
      "zigbee2mqtt/%",
    );
    expect(rows.map((row) => [row.device_id, row.payload])).toEqual(
      expect.arrayContaining([
        ["kitchen_sensor", JSON.parse(reading)],
        ["hall_door", { contact: false, battery: 100, voltage: 3025 }],
        ["plug_tv", { state: "ON", power: 62.3, energy: 1.21, update: { state: "idle" } }],
      ]),
    );
    expect(rows).toHaveLength(4);
    expect(rows.filter((row) => row.device_id === "kitchen_sensor")).toHaveLength(2);
    for (const row of rows) {
      expect(Date.parse(row.time)).toBeGreaterThanOrEqual(before - 1);
      expect(row.event_id).toMatch(/^[0-9a-f-]{36}$/);
    }
    expect(await rejected("zigbee2mqtt/%")).toEqual({});
  });

  it("tasmota: a zone-less local Time read in the configured zone; a redelivery stored once", async () => {
    const summer =
      '{"Time":"2024-05-01T14:03:10","ENERGY":{"TotalStartTime":"2023-11-02T09:00:00","Total":12.345,"Yesterday":0.51,"Today":0.22,"Power":45,"ApparentPower":60,"ReactivePower":40,"Factor":0.75,"Voltage":230,"Current":0.26}}';
    const winter =
      '{"Time":"2024-01-15T08:00:00","AM2301":{"Temperature":19.4,"Humidity":51.2,"DewPoint":9.1},"TempUnit":"C"}';
    const state =
      '{"Time":"2024-05-01T14:03:10","Uptime":"0T01:00:04","UptimeSec":3604,"Heap":25,"SleepMode":"Dynamic","Sleep":50,"LoadAvg":19,"MqttCount":1,"POWER":"ON","Wifi":{"AP":1,"SSId":"home","RSSI":78,"Signal":-61}}';
    const rows = await ingest(
      "mappings/tasmota.yaml",
      [
        ["tele/tasmota_A1B2C3/SENSOR", summer],
        ["tele/tasmota_A1B2C3/SENSOR", summer],
        ["tele/tasmota_D4E5F6/SENSOR", winter],
        ["tele/tasmota_A1B2C3/STATE", state],
        ["tele/tasmota_A1B2C3/SENSOR", '{"Time":"yesterday"}'],
        ["tele/tasmota_A1B2C3/SENSOR", '{"ENERGY":{"Power":1}}'],
      ],
      "tele/%",
    );
    expect(rows.map((row) => [row.topic, row.device_id, row.event_id, row.time])).toEqual([
      ["tele/tasmota_D4E5F6/SENSOR", "tasmota_D4E5F6", "", "2024-01-15T07:00:00.000Z"],
      ["tele/tasmota_A1B2C3/SENSOR", "tasmota_A1B2C3", "", "2024-05-01T12:03:10.000Z"],
      ["tele/tasmota_A1B2C3/STATE", "tasmota_A1B2C3", "", "2024-05-01T12:03:10.000Z"],
    ]);
    expect(rows[1]?.payload).toEqual(JSON.parse(summer));
    expect(await rejected("tele/%")).toEqual({ ts_invalid: 1, ts_missing: 1 });
  });

  it("shelly: float epoch seconds to the millisecond, the method in the id", async () => {
    const status = JSON.stringify({
      src: "shellyplus1pm-a8032ab1c2d3",
      dst: "shellyplus1pm-a8032ab1c2d3/events",
      method: "NotifyStatus",
      params: { ts: 1714572190.52, "switch:0": { id: 0, apower: 45.1, current: 0.21 } },
    });
    const event = JSON.stringify({
      src: "shellyplus1pm-a8032ab1c2d3",
      dst: "shellyplus1pm-a8032ab1c2d3/events",
      method: "NotifyEvent",
      params: {
        ts: 1714572190.52,
        events: [{ component: "input:0", id: 0, event: "single_push", ts: 1714572190.52 }],
      },
    });
    const ht = JSON.stringify({
      src: "shellyhtg3-84fce63ad204",
      dst: "shellyhtg3-84fce63ad204/events",
      method: "NotifyFullStatus",
      params: {
        ts: 1714572000.0,
        "temperature:0": { id: 0, tC: 21.3, tF: 70.3 },
        "humidity:0": { id: 0, rh: 44.2 },
      },
    });
    const rows = await ingest(
      "mappings/shelly.yaml",
      [
        ["shellyplus1pm-a8032ab1c2d3/events/rpc", status],
        ["shellyplus1pm-a8032ab1c2d3/events/rpc", event],
        ["shellyplus1pm-a8032ab1c2d3/events/rpc", status],
        ["shellyhtg3-84fce63ad204/events/rpc", ht],
        [
          "shellyplus1pm-a8032ab1c2d3/status/switch:0",
          '{"id":0,"source":"init","output":false,"apower":0.0}',
        ],
      ],
      "shelly%",
    );
    expect(rows.map((row) => [row.device_id, row.event_id, row.time])).toEqual(
      expect.arrayContaining([
        ["shellyhtg3-84fce63ad204", "NotifyFullStatus", "2024-05-01T14:00:00.000Z"],
        ["shellyplus1pm-a8032ab1c2d3", "NotifyEvent", "2024-05-01T14:03:10.520Z"],
        ["shellyplus1pm-a8032ab1c2d3", "NotifyStatus", "2024-05-01T14:03:10.520Z"],
      ]),
    );
    expect(rows).toHaveLength(4);
    const generic = rows.find((row) => row.topic.endsWith("/status/switch:0"));
    expect(generic).toMatchObject({
      device_id: "shellyplus1pm-a8032ab1c2d3",
      payload: { output: false },
    });
  });

  it("homeassistant-statestream: bare values as {value}, entity ids as devices, ESPHome too", async () => {
    const rows = await ingest(
      "mappings/homeassistant-statestream.yaml",
      [
        ["homeassistant/sensor/living_room_temperature/state", "21.5"],
        ["homeassistant/light/kitchen/state", "on"],
        ["homeassistant/binary_sensor/front_door/state", "off"],
        ["homeassistant/sensor/outdoor_humidity/state", "unavailable"],
        ["homeassistant/sensor/living_room_temperature/unit_of_measurement", '"°C"'],
        ["livingroom/sensor/temperature/state", "22.25"],
        ["livingroom/switch/relay/state", "ON"],
      ],
      "%/state",
    );
    expect(rows.map((row) => [row.device_id, row.payload]).sort()).toEqual(
      [
        ["binary_sensor.front_door", { value: "off" }],
        ["light.kitchen", { value: "on" }],
        ["livingroom", { value: 22.25 }],
        ["livingroom", { value: "ON" }],
        ["sensor.living_room_temperature", { value: 21.5 }],
        ["sensor.outdoor_humidity", { value: "unavailable" }],
      ].sort(),
    );
  });

  it("owntracks: tst in epoch seconds, (topic, tst, _type) as identity", async () => {
    const location =
      '{"_type":"location","tid":"ph","lat":52.5200,"lon":13.4050,"acc":12,"alt":34,"batt":81,"bs":1,"conn":"w","tst":1714572190,"vel":0}';
    const rows = await ingest(
      "mappings/owntracks.yaml",
      [
        ["owntracks/alice/phone", location],
        ["owntracks/alice/phone", location],
        ["owntracks/alice/phone", '{"_type":"lwt","tst":1714572190}'],
        [
          "owntracks/bob/tablet",
          '{"_type":"location","tid":"tb","lat":48.1374,"lon":11.5755,"tst":1714572000,"batt":55}',
        ],
        [
          "owntracks/alice/phone/event",
          '{"_type":"transition","event":"enter","desc":"home","tst":1714572191}',
        ],
      ],
      "owntracks/%",
    );
    expect(rows.map((row) => [row.device_id, row.event_id, row.time])).toEqual([
      ["bob/tablet", "location", "2024-05-01T14:00:00.000Z"],
      ["alice/phone", "location", "2024-05-01T14:03:10.000Z"],
      ["alice/phone", "lwt", "2024-05-01T14:03:10.000Z"],
    ]);
  });

  it("sparkplug-b: metrics named by their BIRTH's aliases, (topic, timestamp, seq) as identity", async () => {
    const T = Date.UTC(2024, 4, 1, 14);
    const metric = (
      name: string | undefined,
      alias: number,
      datatype: number,
      value: number | boolean,
    ) => ({
      ...(name === undefined ? {} : { name, datatype }),
      alias,
      value: scalarValue(datatype, value),
    });
    const message = (timestamp: number, seq: number, metrics: SparkplugMetric[]) =>
      Buffer.from(encodePayload({ timestamp, seq, metrics }));
    const node = "spBv1.0/Plant1/NBIRTH/gw-7";
    const device = (type: string, name = "Press-3") => `spBv1.0/Plant1/${type}/gw-7/${name}`;
    const ddata = message(T + 2000, 2, [
      metric(undefined, 10, DataType.Float, 22.25),
      metric(undefined, 12, DataType.Int16, -7),
    ]);
    const rows = await ingest(
      "mappings/sparkplug-b.yaml",
      [
        [node, message(T, 0, [metric("Uptime", 1, DataType.Int32, 100)])],
        [
          device("DBIRTH"),
          message(T + 1000, 1, [
            metric("Temperature", 10, DataType.Float, 21.5),
            metric("Running", 11, DataType.Boolean, true),
            metric("Count", 12, DataType.Int16, -5),
          ]),
        ],
        [device("DDATA"), ddata],
        [device("DDATA"), ddata],
        // Aliases are per device: Press-4 sent no DBIRTH.
        [
          device("DDATA", "Press-4"),
          message(T + 2500, 3, [metric(undefined, 10, DataType.Float, 1)]),
        ],
        [
          "spBv1.0/Plant1/NDATA/gw-7",
          message(T + 3000, 4, [metric(undefined, 1, DataType.Int32, 160)]),
        ],
        [device("DDATA"), Buffer.from([0x12, 0xff, 0x01])],
        [
          "spBv1.0/Plant1/NCMD/gw-7",
          message(T + 3500, 0, [metric("Node Control/Rebirth", 0, DataType.Boolean, true)]),
        ],
        // A rebirth gives new aliases.
        [node, message(T + 4000, 0, [metric("Uptime", 1, DataType.Int32, 200)])],
        [device("DBIRTH"), message(T + 4100, 1, [metric("Temperature", 20, DataType.Float, 23)])],
        [device("DDATA"), message(T + 5000, 2, [metric(undefined, 20, DataType.Float, 23.5)])],
        [
          "spBv1.0/Plant1/NDEATH/gw-7",
          message(T + 6000, 0, [metric("bdSeq", 0, DataType.Int64, 0)]),
        ],
      ],
      "spBv1.0/%",
    );
    const metrics = (row: StoredRow) =>
      (row.payload as { metrics: Record<string, unknown> }).metrics;
    expect(
      rows.map((row) => [row.topic.split("/")[2], row.device_id, row.event_id, metrics(row)]),
    ).toEqual([
      ["NBIRTH", "gw-7", "0", { Uptime: 100 }],
      ["DBIRTH", "gw-7/Press-3", "1", { Temperature: 21.5, Running: true, Count: -5 }],
      ["DDATA", "gw-7/Press-3", "2", { Temperature: 22.25, Count: -7 }],
      ["NDATA", "gw-7", "4", { Uptime: 160 }],
      ["NBIRTH", "gw-7", "0", { Uptime: 200 }],
      ["DBIRTH", "gw-7/Press-3", "1", { Temperature: 23 }],
      ["DDATA", "gw-7/Press-3", "2", { Temperature: 23.5 }],
      ["NDEATH", "gw-7", expect.stringMatching(/^[0-9a-f-]{36}$/), { bdSeq: 0 }],
    ]);
    expect(rows[2]?.time).toBe("2024-05-01T14:00:02.000Z");
    expect(await rejected("spBv1.0/%")).toEqual({
      sparkplug_alias_unknown: 1,
      payload_not_sparkplug: 1,
    });
  });

  it("with credentials, a device publishes only as its mapped self; a gateway for others where its rules allow", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-mappings-"));
    const file = path.join(dir, "fleet.yaml");
    await fs.writeFile(
      file,
      [
        await fs.readFile("mappings/zigbee2mqtt.yaml", "utf8"),
        await fs.readFile("mappings/tasmota.yaml", "utf8"),
      ].join("\n"),
    );
    const store = new IdentityStore(pool);
    const secrets = new Map<string, string>();
    for (const [id, role] of [
      ["z2m-gw", "gateway"],
      ["tasmota_AAA", "device"],
      ["tasmota_BBB", "device"],
    ] as const) {
      secrets.set(id, (await store.add([id], role)).get(id) as string);
    }
    await store.addRule("z2m-gw", {
      permission: "allow",
      action: "publish",
      pattern: "zigbee2mqtt/#",
    });
    const service = await startTestService(db.url, {
      MAPPINGS_FILE: file,
      ALLOW_ANONYMOUS: "false",
    });
    const time = '{"Time":"2024-07-01T12:00:00","SI7021":{"Temperature":24}}';
    try {
      const as = (id: string) =>
        connectDevice(service.mqttPort, id, { username: id, password: secrets.get(id) });
      const gateway = await as("z2m-gw");
      const own = await as("tasmota_AAA");
      const spoofer = await as("tasmota_BBB");
      await publishAcked(gateway, "zigbee2mqtt/lamp_auth", '{"state":"ON"}');
      await publishAcked(own, "tele/tasmota_AAA/SENSOR", time);
      // Both acknowledged, neither stored: dead-lettered as not_authorized.
      await publishAcked(spoofer, "tele/tasmota_AAA/SENSOR", time.replace("12:00", "12:01"));
      await publishAcked(gateway, "tele/tasmota_AAA/SENSOR", time.replace("12:00", "12:02"));
      await Promise.all([gateway, own, spoofer].map((client) => client.endAsync()));
    } finally {
      await service.close();
      await fs.rm(dir, { recursive: true });
    }
    const { rows } = await pool.query(
      `SELECT device_id, time FROM telemetry
        WHERE topic IN ('zigbee2mqtt/lamp_auth', 'tele/tasmota_AAA/SENSOR') ORDER BY device_id`,
    );
    expect(rows).toEqual([
      { device_id: "lamp_auth", time: expect.any(Date) },
      { device_id: "tasmota_AAA", time: new Date("2024-07-01T10:00:00Z") },
    ]);
    const { rows: denied } = await pool.query(
      `SELECT client_id FROM telemetry_rejected
        WHERE reason = 'not_authorized' AND topic = 'tele/tasmota_AAA/SENSOR' ORDER BY client_id`,
    );
    expect(denied.map((row) => row.client_id)).toEqual(["tasmota_BBB", "z2m-gw"]);
  });

  it("takes an HTTP event on a mapped topic by its own id and time, with the mapping's device", async () => {
    const service = await startTestService(db.url, { MAPPINGS_FILE: "mappings/tasmota.yaml" });
    try {
      const response = await fetch(`http://127.0.0.1:${service.httpPort}/publish`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          topic: "tele/tasmota_HTTP/SENSOR",
          event_id: "h-1",
          timestamp: "2024-06-01T10:00:00Z",
          payload: { Power: 12 },
        }),
      });
      expect(response.status, await response.text()).toBe(200);
    } finally {
      await service.close();
    }
    const { rows } = await pool.query(
      "SELECT device_id, event_id, time, payload FROM telemetry WHERE topic = 'tele/tasmota_HTTP/SENSOR'",
    );
    expect(rows).toEqual([
      {
        device_id: "tasmota_HTTP",
        event_id: "h-1",
        time: new Date("2024-06-01T10:00:00Z"),
        payload: { Power: 12, event_id: "h-1", ts: "2024-06-01T10:00:00Z" },
      },
    ]);
  });

  it("finds a mapped topic's rows with GET /events?topic=, by the device its mapping names", async () => {
    const service = await startTestService(db.url, { MAPPINGS_FILE: "mappings/shelly.yaml" });
    try {
      const device = await connectDevice(service.mqttPort, "shelly-events");
      const topic = "shellyplus2pm-30c6f7a1b2c3/events/rpc";
      await publishAcked(
        device,
        topic,
        '{"method":"NotifyStatus","params":{"ts":1714572300.25,"cover:0":{"current_pos":40}}}',
      );
      await device.endAsync();
      const response = await fetch(
        `http://127.0.0.1:${service.httpPort}/events?topic=${encodeURIComponent(topic)}`,
      );
      expect(await response.json()).toMatchObject({
        count: 1,
        events: [{ device_id: "shellyplus2pm-30c6f7a1b2c3", event_id: "NotifyStatus" }],
      });
    } finally {
      await service.close();
    }
  });

  it("reads a fixture sent with mosquitto_pub, and leaves default topics as they were", async () => {
    const service = await startTestService(db.url, { MAPPINGS_FILE: "mappings/tasmota.yaml" });
    try {
      const publish = (topic: string, message: string) =>
        runCommand("mosquitto_pub", [
          "-p",
          String(service.mqttPort),
          "-q",
          "1",
          "-t",
          topic,
          "-m",
          message,
        ]);
      const sent = await publish(
        "tele/tasmota_CLI/SENSOR",
        '{"Time":"2024-06-01T00:30:00","SI7021":{"Temperature":23.1}}',
      );
      expect(sent.code, sent.stderr).toBe(0);
      const ts = Date.now();
      const plain = await publish(
        "telemetry/plain-1/env",
        JSON.stringify({ event_id: "p-1", ts, t: 1 }),
      );
      expect(plain.code, plain.stderr).toBe(0);
    } finally {
      await service.close();
    }
    const { rows } = await pool.query(
      `SELECT device_id, event_id, time FROM telemetry
        WHERE topic IN ('tele/tasmota_CLI/SENSOR', 'telemetry/plain-1/env') ORDER BY topic`,
    );
    expect(rows).toEqual([
      { device_id: "tasmota_CLI", event_id: "", time: new Date("2024-05-31T22:30:00Z") },
      { device_id: "plain-1", event_id: "p-1", time: expect.any(Date) },
    ]);
  });
});
