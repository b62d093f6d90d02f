import { batteryPercent } from "../sensors.ts";
import type { Profile } from "./profile.ts";
import { round } from "./profile.ts";

/** OwnTracks' locations of a phone, stamped in epoch seconds; it sends those it queued offline once back. */
export const owntracks: Profile = {
  name: "owntracks",
  mappingsFile: "mappings/owntracks.yaml",
  topicPattern: "owntracks/<--username, or sim>/<device id>",
  payload: "object",
  time: { field: ["tst"], form: "epoch seconds", resolutionMs: 1000 },
  eventId: ["_type"],
  late: true,
  // The app's default topic names the user it logs in as.
  topic: (deviceId, login) => `owntracks/${login?.username ?? "sim"}/${deviceId}`,
  device({ deviceId, random, sensors }) {
    // A phone wandering about its own town, somewhere in Europe.
    let lat = random.between(36, 60);
    let lon = random.between(-9, 30);
    const tid = deviceId.slice(-2);
    return (instantMs, tick) => {
      const { battery } = sensors.read(instantMs);
      lat += 0.0005 * random.gaussian();
      lon += 0.0008 * random.gaussian();
      return {
        _type: "location",
        tid,
        lat: round(lat, 6),
        lon: round(lon, 6),
        acc: Math.round(random.between(3, 30)),
        batt: batteryPercent(battery),
        bs: 1,
        conn: random.chance(0.7) ? "w" : "m",
        tst: tick,
      };
    };
  },
};
