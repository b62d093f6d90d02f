import { DataType, MAX_SPARKPLUG_EDGE_NODES } from "../../bridge/sparkplug.ts";
import { batteryPercent } from "../sensors.ts";
import type { Profile } from "./profile.ts";
import { round } from "./profile.ts";

/** The Sparkplug group of every simulated edge node. */
export const SPARKPLUG_GROUP = "Sim";
/** The one device behind each edge node: its sensor. */
export const SPARKPLUG_DEVICE = "sensor";

/** The device's metrics as its DBIRTH declares them; DDATA sends them by alias alone. */
export const SPARKPLUG_METRICS = [
  { name: "Temperature", datatype: DataType.Float, alias: 10 },
  { name: "Humidity", datatype: DataType.Float, alias: 11 },
  { name: "Battery", datatype: DataType.Int32, alias: 12 },
] as const;

export type SparkplugMetricName = (typeof SPARKPLUG_METRICS)[number]["name"];

/**
 * A Sparkplug B edge node (the device id) with one device, its sensor:
 * NBIRTH and DBIRTH on every connection, then DDATA by alias, each stamped
 * in epoch milliseconds and numbered by the edge node's seq (0–255).
 */
export const sparkplugB: Profile = {
  name: "sparkplug-b",
  mappingsFile: "mappings/sparkplug-b.yaml",
  topicPattern: `spBv1.0/${SPARKPLUG_GROUP}/DDATA/<device id>/${SPARKPLUG_DEVICE}`,
  payload: "sparkplug-b",
  time: { field: ["timestamp"], form: "epoch milliseconds", resolutionMs: 1 },
  eventId: ["seq"],
  note: `each device an edge node with one device, ${SPARKPLUG_DEVICE}: on every connection NBIRTH (seq 0, the bdSeq of its NDEATH will) and DBIRTH, then DDATA by alias, seq 0–255 per edge node; --reconnect-rate drops a connection once nothing is in flight, and the rebirth comes first; --devices at most ${MAX_SPARKPLUG_EDGE_NODES.toLocaleString("en-US")}`,
  late: false,
  topic: (deviceId) => `spBv1.0/${SPARKPLUG_GROUP}/DDATA/${deviceId}/${SPARKPLUG_DEVICE}`,
  device({ sensors }) {
    return (instantMs): Record<SparkplugMetricName, number> => {
      const { temperature, humidity, battery } = sensors.read(instantMs);
      return {
        Temperature: round(temperature, 2),
        Humidity: round(humidity, 1),
        Battery: batteryPercent(battery),
      };
    };
  },
};
