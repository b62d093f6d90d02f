import { batteryPercent } from "../sensors.ts";
import type { Profile } from "./profile.ts";
import { round } from "./profile.ts";

/** A Shelly H&T Gen3's status notifications over MQTT, stamped in epoch seconds to the hundredth. */
export const shelly: Profile = {
  name: "shelly",
  mappingsFile: "mappings/shelly.yaml",
  topicPattern: "<device id>/events/rpc",
  payload: "object",
  time: { field: ["params", "ts"], form: "epoch seconds", resolutionMs: 10 },
  eventId: ["method"],
  late: false,
  topic: (deviceId) => `${deviceId}/events/rpc`,
  device({ deviceId, sensors }) {
    return (instantMs, tick) => {
      const { temperature, humidity, battery } = sensors.read(instantMs);
      return {
        src: deviceId,
        dst: `${deviceId}/events`,
        method: "NotifyStatus",
        params: {
          ts: tick / 100,
          "temperature:0": {
            id: 0,
            tC: round(temperature, 1),
            tF: round(temperature * 1.8 + 32, 1),
          },
          "humidity:0": { id: 0, rh: round(humidity, 1) },
          "devicepower:0": {
            id: 0,
            battery: { V: round(battery, 2), percent: batteryPercent(battery) },
            external: { present: false },
          },
        },
      };
    };
  },
};
