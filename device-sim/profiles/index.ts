import { type Identity, MappingError, Mappings } from "../../bridge/mappings.ts";
import { MAX_SPARKPLUG_EDGE_NODES } from "../../bridge/sparkplug.ts";
import type { Login } from "../options.ts";
import { homeassistant } from "./homeassistant.ts";
import { owntracks } from "./owntracks.ts";
import { type Clock, epochClock, identityOf, type Profile } from "./profile.ts";
import { shelly } from "./shelly.ts";
import { sparkplugB } from "./sparkplug-b.ts";
import { tasmota } from "./tasmota.ts";
import { zigbee2mqtt } from "./zigbee2mqtt.ts";

/** Every profile --profile takes besides `default`, the service's own shape. */
export const PROFILES: readonly Profile[] = [
  zigbee2mqtt,
  tasmota,
  shelly,
  homeassistant,
  owntracks,
  sparkplugB,
];

/** A profile with its mapping file read: what a run needs of it. */
export interface OpenProfile {
  profile: Profile;
  mappings: Mappings;
  identity: Identity;
  clock: Clock | undefined;
}

const IDENTITIES: Record<Identity, string> = {
  event_id: "a row per (topic, time, event id)",
  device_time: "a row per (topic, time)",
  none: "neither id nor time: stored at least once",
};

/**
 * Reads the profile's mapping file, as the service will, and checks that it
 * reads the profile's messages as the profile expects: a MappingError names
 * the file otherwise.
 */
export function openProfile(profile: Profile): OpenProfile {
  const mappings = Mappings.load(profile.mappingsFile);
  const identity = identityOf(profile);
  const topic = profile.topic("sim-device", undefined);
  const read = mappings.identityOf(topic);
  if (read !== identity) {
    throw new MappingError(
      `${profile.mappingsFile} reads ${topic} ${read ? `as ${IDENTITIES[read]}` : "with no entry"}, and the ${profile.name} profile needs ${IDENTITIES[identity]}`,
    );
  }
  const clock =
    profile.time &&
    (profile.clock?.(profile.mappingsFile) ?? epochClock(profile.time.resolutionMs));
  return { profile, mappings, identity, clock };
}

/** The fastest --rate per device: a device never repeats a time on its topic. */
export function maxRate(profile: Profile): number | undefined {
  return profile.time && 1000 / profile.time.resolutionMs;
}

/** The most devices a run may have: the service keeps the aliases of so many Sparkplug B edge nodes. */
export function maxDevices(profile: Profile): number | undefined {
  return profile.payload === "sparkplug-b" ? MAX_SPARKPLUG_EDGE_NODES : undefined;
}

/** The flags that have no meaning for a profile's devices, and why. */
export function refusedFlags(profile: Profile): { flag: string; reason: string }[] {
  const refused = [
    {
      flag: "topic-prefix",
      reason: `its devices publish on ${profile.topicPattern}, which ${profile.mappingsFile} reads`,
    },
  ];
  if (profile.payload === "bare value") {
    refused.push({ flag: "bad-rate", reason: "its bare values are stored whatever they hold" });
  }
  if (!profile.time) {
    refused.push(
      { flag: "late-rate", reason: "its messages carry no time: rows take their receipt's" },
      { flag: "clock-skew", reason: "its messages carry no time: rows take their receipt's" },
    );
  } else if (!profile.late) {
    refused.push({ flag: "late-rate", reason: "its devices send each reading as they take it" });
  }
  return refused;
}

function timeNote(profile: Profile): string | undefined {
  if (!profile.time) return undefined;
  const { field, form, resolutionMs } = profile.time;
  const steps = resolutionMs >= 1000 ? "whole seconds" : `${resolutionMs} ms steps`;
  return `${field.join(".")}: ${form}, in ${steps}, never repeated by a device (one due too soon is stamped a step later): --rate at most ${maxRate(profile)}`;
}

/** The profiles' part of --help: topics, the MAPPINGS_FILE each needs, identities and limits. */
export function profilesHelp(): string[] {
  const width = Math.max(...PROFILES.map((profile) => profile.name.length)) + 2;
  const indent = " ".repeat(width + 2);
  return [
    "Profiles (--profile): what each device publishes, and the MAPPINGS_FILE of the service that stores it",
    `  ${"default".padEnd(width)}<topic prefix>/<device id>/env, JSON with event_id and ts: the service's own shape, no MAPPINGS_FILE`,
    ...PROFILES.flatMap((profile) => {
      const notes = [IDENTITIES[identityOf(profile)], timeNote(profile)].filter(Boolean);
      const refused = refusedFlags(profile).map(({ flag }) => `--${flag}`);
      return [
        `  ${profile.name.padEnd(width)}${profile.topicPattern}  MAPPINGS_FILE=${profile.mappingsFile}`,
        `${indent}${notes.join("; ")}`,
        ...(profile.note ? [`${indent}${profile.note}`] : []),
        `${indent}not with ${refused.join(", ")}`,
      ];
    }),
  ];
}

/**
 * A device identity publishes only as the device its topic is stored under:
 * says so when the profile's mapping stores a device that logs in as itself
 * as another (a gateway identity, allowed to publish there, can).
 */
export function identityWarning(
  { profile, mappings }: OpenProfile,
  deviceId: string,
  login: Login | undefined,
): string | undefined {
  if (login?.username !== deviceId) return undefined;
  const stored = mappings.deviceOf(profile.topic(deviceId, login));
  if (stored === deviceId) return undefined;
  return `warning: ${profile.mappingsFile} stores ${deviceId}'s messages as device ${stored}, for which a device identity may not publish: log in as gateway identities allowed to publish on ${profile.topicPattern}`;
}

/** The line a run of a profile starts with: what the service needs to store it. */
export function startLine(open: OpenProfile): string {
  const { profile, identity } = open;
  return `profile ${profile.name}: ${profile.topicPattern}, ${IDENTITIES[identity]}; the service stores it with MAPPINGS_FILE=${profile.mappingsFile}`;
}
