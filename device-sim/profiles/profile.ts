import type { Identity } from "../../bridge/mappings.ts";
import type { Login } from "../options.ts";
import type { Random } from "../random.ts";
import type { Sensors } from "../sensors.ts";

/** A path into a JSON object: `params.ts` is `["params", "ts"]`. */
export type FieldPath = readonly string[];

/** What a profile's device is made of. */
export interface DeviceContext {
  deviceId: string;
  login: Login | undefined;
  random: Random;
  sensors: Sensors;
}

/**
 * How a profile's devices write times, in ticks: whole units of the finest
 * time their messages carry (seconds, hundredths, a wall clock's seconds).
 */
export interface Clock {
  /** The tick a device writes at an instant. */
  tickOf(instantMs: number): number;
  /** The first tick after `tick` that a device can write: a wall clock skips some. */
  after(tick: number): number;
}

/** Ticks of `resolutionMs` since the epoch. */
export function epochClock(resolutionMs: number): Clock {
  return { tickOf: (instantMs) => Math.floor(instantMs / resolutionMs), after: (tick) => tick + 1 };
}

/**
 * Devices of one ecosystem, publishing on the topics and in the shape that a
 * mapping file of `mappings/` reads. `payload` says how their messages are
 * encoded and can be malformed.
 */
export interface Profile {
  readonly name: string;
  /** The service's MAPPINGS_FILE for it, relative to the repository (where npm runs). */
  readonly mappingsFile: string;
  /** Its topic with placeholders, for --help. */
  readonly topicPattern: string;
  /**
   * JSON objects; bare values, in which no field can be missing or garbled;
   * or Sparkplug B protobuf, sent by an edge node that declares its metrics
   * in BIRTHs on every connection and names them by alias in DATA.
   */
  readonly payload: "object" | "bare value" | "sparkplug-b";
  /** Where its messages carry their time, in what form (for --help), and its finest step; none: stored at their receipt. */
  readonly time?: { field: FieldPath; form: string; resolutionMs: number };
  /** Where its messages carry what tells two of the same time apart. */
  readonly eventId?: FieldPath;
  /** What else --help says of it. */
  readonly note?: string;
  /** Whether its devices send, once back online, readings they queued (--late-rate). */
  readonly late: boolean;
  topic(deviceId: string, login: Login | undefined): string;
  /** Its clock, when the mapping file decides it (a zone); otherwise an epochClock of its resolution. */
  clock?(mappingsFile: string): Clock;
  /**
   * A device's message of the readings taken at `instantMs`, stamped with
   * `tick` when it carries a time; for sparkplug-b, its metrics' values by name.
   */
  device(context: DeviceContext): (instantMs: number, tick: number) => unknown;
}

/** How the service tells the profile's rows apart: what its mapping must read. */
export function identityOf(profile: Profile): Identity {
  return profile.eventId ? "event_id" : profile.time ? "device_time" : "none";
}

/** A reading rounded to the decimals a device reports. */
export function round(value: number, decimals: number): number {
  const scale = 10 ** decimals;
  return Math.round(value * scale) / scale;
}
