import {
  badPayload,
  pickBadKind,
  type ShapedBadKind,
  shapedBadKinds,
  shapedBadPayload,
} from "./faults.ts";
import type { SimOptions } from "./options.ts";
import type { OpenProfile } from "./profiles/index.ts";
import type { DeviceContext } from "./profiles/profile.ts";
import type { Random } from "./random.ts";
import type { Sensors } from "./sensors.ts";

/** An event as a device publishes it, where, and the key --verify finds its row by. */
export interface ShapedEvent {
  topic: string;
  payload: Buffer;
  key: string;
}

/** An MQTT will: what the broker publishes for a device whose connection is lost. */
export interface Will {
  topic: string;
  payload: Buffer;
}

/** What one simulated device publishes: where, its events and its malformed messages. */
export interface Shape {
  /** Where its readings and malformed messages go. */
  readonly topic: string;
  /** Every topic it publishes rows on: its readings', and its BIRTHs' where it sends them. */
  readonly topics: readonly string[];
  /** The device_id the service stores its readings under. */
  readonly storedDeviceId: string;
  event(seq: number, timeMs: number, late: boolean): ShapedEvent;
  bad(seq: number, timeMs: number): Buffer;
  /** The will of its next connection, numbered for it: a Sparkplug B edge node's NDEATH. */
  nextWill?(timeMs: number): Will;
  /** What it sends first on every connection, before any reading: a Sparkplug B edge node's BIRTHs. */
  births?(timeMs: number): ShapedEvent[];
}

/**
 * The service's own shape: `<prefix>/<device id>/env`, JSON with an
 * event_id that carries the run and a seq, and ts; its key is the event id.
 */
export class DefaultShape implements Shape {
  readonly topic: string;
  readonly topics: readonly string[];
  readonly storedDeviceId: string;

  constructor(
    private readonly deviceId: string,
    private readonly eventPrefix: string,
    private readonly options: SimOptions,
    private readonly random: Random,
    private readonly sensors: Sensors,
  ) {
    this.topic = `${options.topicPrefix}/${deviceId}/env`;
    this.topics = [this.topic];
    this.storedDeviceId = deviceId;
  }

  event(seq: number, timeMs: number): ShapedEvent {
    const eventId = `${this.eventPrefix}${seq}`;
    const payload = Buffer.from(
      JSON.stringify({
        event_id: eventId,
        ts: new Date(timeMs).toISOString(),
        seq,
        device: this.deviceId,
        ...this.sensors.read(timeMs),
      }),
    );
    return { topic: this.topic, payload, key: eventId };
  }

  bad(seq: number, timeMs: number): Buffer {
    return badPayload(pickBadKind(this.random), this.options.runId, seq, timeMs);
  }
}

/**
 * A device of a profile: its messages, stamped so that it never sends two
 * with the same time on its topic, and keyed as the profile's mapping reads
 * them.
 */
export class ProfileShape implements Shape {
  readonly topic: string;
  readonly topics: readonly string[];
  readonly storedDeviceId: string;
  protected readonly message: (instantMs: number, tick: number) => unknown;
  protected readonly random: Random;
  private readonly badKinds: ShapedBadKind[];
  private firstTick: number | undefined;
  private lastTick: number | undefined;
  private readonly lateTicks = new Set<number>();

  constructor(
    protected readonly open: OpenProfile,
    context: DeviceContext,
    protected readonly runId: string,
  ) {
    const { profile, mappings } = open;
    this.topic = profile.topic(context.deviceId, context.login);
    this.topics = [this.topic];
    this.storedDeviceId = mappings.deviceOf(this.topic) as string;
    this.message = profile.device(context);
    this.random = context.random;
    this.badKinds = shapedBadKinds(profile);
  }

  event(_seq: number, timeMs: number, late: boolean): ShapedEvent {
    const payload = Buffer.from(JSON.stringify(this.message(timeMs, this.stamp(timeMs, late))));
    return { topic: this.topic, payload, key: this.keyOf(this.topic, payload) };
  }

  bad(_seq: number, timeMs: number): Buffer {
    const kind = this.random.pick(this.badKinds);
    const body = this.message(timeMs, this.open.clock?.tickOf(timeMs) ?? 0);
    return shapedBadPayload(kind, body as Record<string, unknown>, this.open.profile, this.runId);
  }

  /**
   * The tick an event taken at `instantMs` is stamped with: at the earliest
   * the one after the last (a burst, or a wall clock going back, would
   * repeat it); a late event's lies before the first and is used once.
   */
  protected stamp(instantMs: number, late: boolean): number {
    const clock = this.open.clock;
    if (!clock) return 0;
    const tick = clock.tickOf(instantMs);
    if (late) {
      let lateTick = this.firstTick === undefined ? tick : Math.min(tick, this.firstTick - 1);
      while (this.lateTicks.has(lateTick)) lateTick--;
      this.lateTicks.add(lateTick);
      return lateTick;
    }
    const next = this.lastTick === undefined ? tick : Math.max(tick, clock.after(this.lastTick));
    this.firstTick ??= next;
    this.lastTick = next;
    return next;
  }

  /**
   * What tells its row apart as the service reads it: topic, time and event
   * id, or, with neither, the payload stored.
   */
  protected keyOf(topic: string, payload: Buffer): string {
    const read = this.open.mappings.read(
      { topic, payload, clientId: null, receivedAtMs: 0 },
      Number.POSITIVE_INFINITY,
    );
    if (!read?.ok) {
      throw new Error(
        `${this.open.profile.mappingsFile} refuses a message of the ${this.open.profile.name} profile on ${topic}: ${read ? read.detail : "no entry reads it"}`,
      );
    }
    return this.open.identity === "none"
      ? read.row.payload.toString()
      : `${topic} ${read.row.timeMs}/${read.row.eventId}`;
  }
}
