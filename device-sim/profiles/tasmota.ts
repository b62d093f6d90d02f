import fs from "node:fs";
import YAML from "yaml";
import { MappingError } from "../../bridge/mappings.ts";
import { wallClock, zoneOffset } from "../../bridge/time-zone.ts";
import type { Clock, Profile } from "./profile.ts";
import { round } from "./profile.ts";

const SENSOR_TOPIC = "tele/{device}/SENSOR";

/** The zone the mapping file reads Tasmota's zone-less times in. */
function zoneOf(file: string): string {
  const entries: unknown = YAML.parse(fs.readFileSync(file, "utf8"));
  const entry = Array.isArray(entries)
    ? (entries as { topic?: unknown; time?: { zone?: unknown } }[]).find(
        (item) => item?.topic === SENSOR_TOPIC,
      )
    : undefined;
  const zone = entry?.time?.zone;
  if (typeof zone !== "string") {
    throw new MappingError(`${file}: no entry reads ${SENSOR_TOPIC} with a time.zone`);
  }
  return zone;
}

/** A wall clock in `zone`: ticks are its seconds, written as if they were UTC. */
function zoneClock(zone: string): Clock {
  const wallClockAt = wallClock(zone);
  const tickOf = (instantMs: number): number => wallClockAt(instantMs) / 1000;
  // The mapping's own reading of a wall-clock time.
  const offset = zoneOffset(zone);
  return {
    tickOf,
    // A time that clocks skip when they go forward is read as the instant an
    // hour later, whose own time a device will write too: step past it.
    after: (tick) => {
      const wallMs = (tick + 1) * 1000;
      return tickOf(wallMs - offset(wallMs) * 60_000);
    },
  };
}

/** Dew point by the Magnus formula, as Tasmota reports it beside temperature and humidity. */
function dewPoint(celsius: number, humidity: number): number {
  const gamma = Math.log(Math.max(humidity, 1) / 100) + (17.62 * celsius) / (243.12 + celsius);
  return (243.12 * gamma) / (17.62 - gamma);
}

/** Tasmota's telemetry of an SI7021 sensor every TelePeriod, stamped with its local time and no zone. */
export const tasmota: Profile = {
  name: "tasmota",
  mappingsFile: "mappings/tasmota.yaml",
  topicPattern: "tele/<device id>/SENSOR",
  payload: "object",
  time: { field: ["Time"], form: "local time in the zone the file names", resolutionMs: 1000 },
  late: false,
  topic: (deviceId) => `tele/${deviceId}/SENSOR`,
  clock: (file) => zoneClock(zoneOf(file)),
  device({ sensors }) {
    return (instantMs, tick) => {
      const { temperature, humidity } = sensors.read(instantMs);
      return {
        Time: new Date(tick * 1000).toISOString().slice(0, 19),
        SI7021: {
          Temperature: round(temperature, 1),
          Humidity: round(humidity, 1),
          DewPoint: round(dewPoint(temperature, humidity), 1),
        },
        TempUnit: "C",
      };
    };
  },
};
