import { batteryPercent } from "../sensors.ts";
import type { Profile } from "./profile.ts";

/** Zigbee2MQTT's state of a temperature and humidity sensor, which has no id and no time of its own. */
export const zigbee2mqtt: Profile = {
  name: "zigbee2mqtt",
  mappingsFile: "mappings/zigbee2mqtt.yaml",
  topicPattern: "zigbee2mqtt/<device id>",
  payload: "object",
  late: false,
  topic: (deviceId) => `zigbee2mqtt/${deviceId}`,
  device({ random, sensors }) {
    // Link quality (0–255) depends on how far the device sits from its router.
    const link = random.between(60, 220);
    return (instantMs) => {
      const { temperature, humidity, battery } = sensors.read(instantMs);
      return {
        battery: batteryPercent(battery),
        humidity,
        linkquality: Math.round(Math.min(255, Math.max(0, link + 8 * random.gaussian()))),
        temperature,
        voltage: Math.round(battery * 1000),
      };
    };
  },
};
