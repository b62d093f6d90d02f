/**
 * CPU per message of reading it (validation and mapping), in this process:
 * the default shape against one message of each shipped mapping.
 */
import { Mappings } from "../bridge/mappings.ts";
import { DataType, encodePayload, type SparkplugMetric, scalarValue } from "../bridge/sparkplug.ts";
import { parseTelemetry, type RawMessage } from "../bridge/telemetry-message.ts";

const MAX_PAYLOAD_BYTES = 64 * 1024;
const ROUNDS = 5;

function sparkplug(timestamp: number, seq: number, metrics: SparkplugMetric[]): Buffer {
  return Buffer.from(encodePayload({ timestamp, seq, metrics }));
}

/** One message as each ecosystem sends it, with the file that reads it. */
const SAMPLES: {
  label: string;
  file?: string;
  topic: string;
  payload: string | Buffer;
  /** Messages read first, once. */
  before?: [string, Buffer][];
}[] = [
  {
    label: "default shape",
    topic: "telemetry/device-17/env",
    payload: JSON.stringify({
      event_id: "2b7e1516-28ae-4d2a-a6f7-15d2b7e15162",
      ts: "2026-03-01T12:00:00.123Z",
      temperature: 21.53,
      humidity: 48.2,
      battery: 97,
    }),
  },
  {
    label: "zigbee2mqtt",
    file: "mappings/zigbee2mqtt.yaml",
    topic: "zigbee2mqtt/kitchen_sensor",
    payload: '{"temperature":21.5,"humidity":48,"battery":97,"linkquality":120}',
  },
  {
    label: "tasmota (zone-less time)",
    file: "mappings/tasmota.yaml",
    topic: "tele/tasmota_A1B2C3/SENSOR",
    payload: '{"Time":"2026-03-01T13:00:00","ENERGY":{"Total":12.345,"Power":45,"Voltage":230}}',
  },
  {
    label: "shelly (float seconds)",
    file: "mappings/shelly.yaml",
    topic: "shellyplus1pm-a8032ab1c2d3/events/rpc",
    payload:
      '{"src":"shellyplus1pm-a8032ab1c2d3","method":"NotifyStatus","params":{"ts":1772366400.52,"switch:0":{"apower":45.1}}}',
  },
  {
    label: "homeassistant (bare value)",
    file: "mappings/homeassistant-statestream.yaml",
    topic: "homeassistant/sensor/living_room_temperature/state",
    payload: "21.5",
  },
  {
    label: "sparkplug-b (DDATA by alias)",
    file: "mappings/sparkplug-b.yaml",
    topic: "spBv1.0/Plant1/DDATA/gw-7/Press-3",
    payload: sparkplug(1772366400000, 2, [
      { alias: 10, value: scalarValue(DataType.Float, 21.5) },
      { alias: 11, value: scalarValue(DataType.Int32, 1200) },
    ]),
    // The names the DDATA's aliases stand for.
    before: [
      ["spBv1.0/Plant1/NBIRTH/gw-7", sparkplug(1772366399000, 0, [])],
      [
        "spBv1.0/Plant1/DBIRTH/gw-7/Press-3",
        sparkplug(1772366399500, 1, [
          {
            name: "Temperature",
            alias: 10,
            datatype: DataType.Float,
            value: scalarValue(DataType.Float, 21),
          },
          {
            name: "Pressure",
            alias: 11,
            datatype: DataType.Int32,
            value: scalarValue(DataType.Int32, 1100),
          },
        ]),
      ],
    ],
  },
  {
    label: "owntracks",
    file: "mappings/owntracks.yaml",
    topic: "owntracks/alice/phone",
    payload: '{"_type":"location","tid":"ph","lat":52.52,"lon":13.405,"batt":81,"tst":1772366400}',
  },
];

export interface ReadingResult {
  label: string;
  microseconds: number;
  perDefault: number;
}

/** The best of ROUNDS rounds of `iterations` reads, in µs per message. */
function measure(read: (message: RawMessage) => unknown, message: RawMessage, iterations: number) {
  let best = Number.POSITIVE_INFINITY;
  for (let round = 0; round < ROUNDS; round++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) {
      if (!read(message)) throw new Error("no result");
    }
    best = Math.min(best, Number(process.hrtime.bigint() - start) / 1000 / iterations);
  }
  return best;
}

export function benchReading(iterations: number): ReadingResult[] {
  const results = SAMPLES.map(({ label, file, topic, payload, before = [] }) => {
    const raw = (on: string, bytes: string | Buffer): RawMessage => ({
      topic: on,
      payload: Buffer.from(bytes),
      clientId: "bench",
      receivedAtMs: Date.now(),
    });
    const message = raw(topic, payload);
    const mappings = file ? Mappings.load(file) : undefined;
    const read = mappings
      ? (m: RawMessage) => mappings.read(m, MAX_PAYLOAD_BYTES)
      : (m: RawMessage) => parseTelemetry(m, MAX_PAYLOAD_BYTES);
    for (const [on, bytes] of before) read(raw(on, bytes));
    const first = read(message);
    if (!first?.ok) throw new Error(`${label}: the sample is not read: ${JSON.stringify(first)}`);
    return { label, microseconds: measure(read, message, iterations) };
  });
  const base = results[0]?.microseconds ?? Number.NaN;
  return results.map((result) => ({ ...result, perDefault: result.microseconds / base }));
}
