import mqtt from "mqtt";
import type { Login, SimOptions } from "./options.ts";
import type { OpenProfile } from "./profiles/index.ts";
import type { DeviceContext } from "./profiles/profile.ts";
import { Random } from "./random.ts";
import { ConnectionRefused, refusalCode, SERVER_UNAVAILABLE } from "./refusal.ts";
import { Sensors } from "./sensors.ts";
import { DefaultShape, ProfileShape, type Shape, type ShapedEvent } from "./shape.ts";
import { SparkplugShape } from "./sparkplug-shape.ts";

const HOUR_MS = 3_600_000;

/** Counters shared by the whole fleet. */
export class FleetCounters {
  connected = 0;
  reconnects = 0;
  sent = 0;
  acked = 0;
  inflight = 0;
  errors = 0;
  uniqueSent = 0;
  uniqueAcked = 0;
  duplicatesSent = 0;
  badSent = 0;
  badAcked = 0;
  lateSent = 0;
  /** publish → PUBACK, milliseconds, QoS 1 only. */
  readonly latencies: number[] = [];
}

/**
 * Who device `index` is and how it logs in: the identity on its line of
 * --credentials; with --username, that identity when it is the only device
 * (a device identity may connect only as itself), otherwise a name of this
 * run logging in as it; without either, a name of this run, anonymous.
 */
export function deviceIdentity(
  options: SimOptions,
  index: number,
): { deviceId: string; login: Login | undefined } {
  const own = options.credentials?.[index];
  if (own) return { deviceId: own.username, login: own };
  if (options.login && options.devices === 1) {
    return { deviceId: options.login.username, login: options.login };
  }
  return { deviceId: `sim-${options.runId}-${index}`, login: options.login };
}

/** The shape of a profile's device: Sparkplug B's is an edge node's. */
export function profileShape(
  open: OpenProfile,
  context: DeviceContext,
  runId: string,
): ProfileShape {
  return open.profile.payload === "sparkplug-b"
    ? new SparkplugShape(open, context, runId)
    : new ProfileShape(open, context, runId);
}

/**
 * One simulated device: its own MQTT connection (persistent session, so the
 * client resends what was not acknowledged when it reconnects), its own
 * sensors and clock, the shape of its messages, and the faults it was asked
 * to inject.
 */
export class SimDevice {
  readonly deviceId: string;
  /** In the default shape, its event ids are this and a seq: the run id is in it, as an identity's device id outlives a run. */
  readonly eventPrefix: string;
  readonly shape: Shape;
  /**
   * The keys of the events the broker acknowledged (QoS 1) or that were
   * written out (QoS 0), with how many did: events without an id or a time
   * can share a key.
   */
  readonly delivered = new Map<string, number>();
  /** Keys of messages sent and not (yet) acknowledged. */
  readonly unacked = new Set<string>();
  private readonly random: Random;
  private readonly clockOffsetMs: number;
  private readonly login: Login | undefined;
  private client: mqtt.MqttClient | undefined;
  private seq = 0;
  private inflight = 0;
  private producing = false;
  private owed = 0;
  private timer: NodeJS.Timeout | undefined;
  private drained: (() => void) | undefined;
  /** A connection to drop once nothing is in flight (see publishNext). */
  private dropWhenIdle = false;
  /** Whether this connection's BIRTHs are sent, for a shape that has them: nothing goes before. */
  private born = false;
  private settle: ((refusal?: ConnectionRefused) => void) | undefined;
  private stopped = false;
  /** Publishes mqtt.js gave up on while disconnected, sent again once connected. */
  private readonly unsent: (() => void)[] = [];

  constructor(
    index: number,
    private readonly options: SimOptions,
    private readonly counters: FleetCounters,
  ) {
    ({ deviceId: this.deviceId, login: this.login } = deviceIdentity(options, index));
    this.eventPrefix = `${this.deviceId}-${options.runId}-`;
    this.random = new Random(options.seed + index * 7919);
    const sensors = new Sensors(this.random);
    this.clockOffsetMs = this.random.between(-1, 1) * options.clockSkewS * 1000;
    this.shape = options.profile
      ? profileShape(
          options.profile,
          { deviceId: this.deviceId, login: this.login, random: this.random, sensors },
          options.runId,
        )
      : new DefaultShape(this.deviceId, this.eventPrefix, options, this.random, sensors);
  }

  /**
   * Connects and publishes until `count` messages or `durationS` seconds;
   * resolves when all are acknowledged, or on `abort()`. Rejects with
   * ConnectionRefused when the broker refuses the CONNECT for good.
   */
  run(): Promise<void> {
    const client = mqtt.connect(this.options.url, {
      clientId: this.deviceId,
      username: this.login?.username,
      password: this.login?.password,
      clean: false,
      protocolVersion: 4,
      reconnectPeriod: 1000,
      // A busy broker's CONNACK 3 is retried like a lost connection; the other refusals end the run.
      reconnectOnConnackError: true,
      connectTimeout: 30_000,
      will: this.nextWill(),
    });
    this.client = client;
    let connectedOnce = false;
    let connected = false;
    client.on("connect", () => {
      if (!connected) this.counters.connected++;
      if (connectedOnce) this.counters.reconnects++;
      connected = true;
      connectedOnce = true;
      for (const birth of this.shape.births?.(this.now()) ?? []) this.publishUnique(birth);
      this.born = true;
      for (const send of this.unsent.splice(0)) send();
    });
    client.on("close", () => {
      if (connected) this.counters.connected--;
      connected = false;
      this.born = false;
      // Each connection has its own will, which the next CONNECT carries.
      client.options.will = this.nextWill();
    });
    client.on("error", (error) => {
      const code = refusalCode(error);
      if (code === undefined || code === SERVER_UNAVAILABLE) this.counters.errors++;
      else this.stop(new ConnectionRefused(this.deviceId, code, this.options));
    });

    return new Promise<void>((resolve, reject) => {
      this.settle = (refusal) => (refusal ? reject(refusal) : resolve());
      client.once("connect", () => {
        this.producing = true;
        const intervalMs = 1000 / this.options.rate;
        const limit = this.options.count;
        const deadline = Date.now() + this.options.durationS * 1000;
        const tick = () => {
          const finished = limit !== undefined ? this.seq >= limit : Date.now() >= deadline;
          if (finished) {
            this.producing = false;
            this.timer = undefined;
            this.whenDrained(resolve);
            return;
          }
          if (this.holding()) this.owed++;
          else if (this.inflight < this.options.inflight || this.options.qos === 0)
            this.publishNext();
          else this.owed++;
          this.timer = setTimeout(tick, intervalMs);
        };
        // Spread devices over the first interval so they do not publish in step.
        this.timer = setTimeout(tick, this.random.next() * intervalMs);
      });
    }).then(() => client.endAsync());
  }

  /** Stops publishing and disconnects without waiting for acknowledgements; `run()` resolves. */
  abort(): void {
    this.stop();
  }

  private stop(refusal?: ConnectionRefused): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.client?.end(true);
    this.settle?.(refusal);
  }

  /** Whether messages wait: for a connection to drop, or for the BIRTHs of the next one. */
  private holding(): boolean {
    return this.dropWhenIdle || (this.shape.births !== undefined && !this.born);
  }

  private whenDrained(done: () => void): void {
    if (this.inflight === 0) done();
    else this.drained = done;
  }

  private publishNext(): void {
    if (this.random.chance(this.options.badRate)) {
      const payload = this.shape.bad(this.seq, this.now());
      this.counters.badSent++;
      this.publish(this.shape.topic, payload, undefined, () => {
        this.counters.badAcked++;
      });
    } else {
      this.publishEvent();
    }
    if (this.random.chance(this.options.reconnectRate)) {
      // A device that sends BIRTHs on connecting must send them before
      // anything else, which mqtt.js's resending of unacknowledged messages
      // would precede: it drops the connection once they are acknowledged.
      if (this.shape.births) {
        this.dropWhenIdle = true;
        this.dropIfIdle();
      } else {
        this.dropConnection();
      }
    }
  }

  private dropIfIdle(): void {
    if (!this.dropWhenIdle || this.inflight > 0) return;
    this.dropWhenIdle = false;
    // The connection is as good as gone: nothing more goes before the next one's BIRTHs.
    this.born = false;
    // mqtt.js hands packets to the socket on the next tick (QoS 0's are "sent" before): let them go first.
    setImmediate(() => this.dropConnection());
  }

  /** Drops the connection the hard way: no DISCONNECT, unacknowledged messages stay queued. */
  private dropConnection(): void {
    this.client?.stream.destroy();
  }

  private nextWill(): mqtt.IClientOptions["will"] {
    const will = this.shape.nextWill?.(this.now());
    return will && { ...will, qos: 1, retain: false };
  }

  private publishEvent(): void {
    const seq = this.seq++;
    let timeMs = this.now();
    const late = this.random.chance(this.options.lateRate);
    if (late) {
      timeMs -= this.random.between(1, 72) * HOUR_MS;
      this.counters.lateSent++;
    }
    const event = this.shape.event(seq, timeMs, late);
    this.publishUnique(event, () => {
      if (this.producing && this.random.chance(this.options.dupRate)) {
        // The application sends an acknowledged event again, as after a lost ack in its own queue.
        this.counters.duplicatesSent++;
        this.publish(event.topic, event.payload, event.key, () => {});
      }
    });
  }

  /** Publishes an event that is to be stored once; `then` runs once it is delivered. */
  private publishUnique({ topic, payload, key }: ShapedEvent, then?: () => void): void {
    this.counters.uniqueSent++;
    this.publish(topic, payload, key, () => {
      this.delivered.set(key, (this.delivered.get(key) ?? 0) + 1);
      this.counters.uniqueAcked++;
      then?.();
    });
  }

  private publish(
    topic: string,
    payload: Buffer,
    key: string | undefined,
    onAcked: () => void,
  ): void {
    if (!this.client) return;
    this.counters.sent++;
    this.inflight++;
    this.counters.inflight++;
    if (key !== undefined) this.unacked.add(key);
    this.send(
      this.client,
      topic,
      payload,
      () => {
        if (key !== undefined) this.unacked.delete(key);
        onAcked();
      },
      performance.now(),
    );
  }

  private send(
    client: mqtt.MqttClient,
    topic: string,
    payload: Buffer,
    onAcked: () => void,
    sentAt: number,
  ): void {
    const qos = this.options.qos;
    client.publish(topic, payload, { qos }, (error) => {
      if (error && qos === 1 && !this.stopped) {
        // mqtt.js fails the publishes it queued while resending its session
        // when the connection drops again meanwhile (and, until it reconnects,
        // any new one): send them again once connected, as a device that
        // keeps its readings until they are acknowledged does.
        this.counters.errors++;
        const again = () => this.send(client, topic, payload, onAcked, sentAt);
        if (client.connected) again();
        else this.unsent.push(again);
        return;
      }
      this.inflight--;
      this.counters.inflight--;
      if (error) {
        this.counters.errors++;
      } else {
        this.counters.acked++;
        if (qos === 1) this.counters.latencies.push(performance.now() - sentAt);
        onAcked();
      }
      this.dropIfIdle();
      if (
        this.owed > 0 &&
        this.producing &&
        !this.holding() &&
        this.inflight < this.options.inflight
      ) {
        this.owed--;
        this.publishNext();
      }
      if (this.inflight === 0 && this.drained) {
        const done = this.drained;
        this.drained = undefined;
        done();
      }
    });
  }

  private now(): number {
    return Date.now() + this.clockOffsetMs;
  }
}
