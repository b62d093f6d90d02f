import type { Profile } from "./profile.ts";

/** Home Assistant's statestream of a temperature sensor's state: a bare value. */
export const homeassistant: Profile = {
  name: "homeassistant",
  mappingsFile: "mappings/homeassistant-statestream.yaml",
  topicPattern: "homeassistant/sensor/<device id>/state",
  payload: "bare value",
  late: false,
  topic: (deviceId) => `homeassistant/sensor/${deviceId}/state`,
  device:
    ({ sensors }) =>
    (instantMs) =>
      sensors.read(instantMs).temperature,
};
