import mqtt from "mqtt";
import { badPayload, pickBadKind } from "./faults.ts";
import type { SimOptions } from "./options.ts";
import { Random } from "./random.ts";
import { Sensors } from "./sensors.ts";

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
 * One simulated device: its own MQTT connection (persistent session, so the
 * client resends what was not acknowledged when it reconnects), its own
 * sensors and clock, and the faults it was asked to inject.
 */
export class SimDevice {
  readonly deviceId: string;
  /** Events the broker acknowledged (QoS 1) or that were written out (QoS 0). */
  readonly delivered = new Set<string>();
  private readonly random: Random;
  private readonly sensors: Sensors;
  private readonly clockOffsetMs: number;
  private readonly topic: string;
  private client: mqtt.MqttClient | undefined;
  private seq = 0;
  private inflight = 0;
  private producing = false;
  private owed = 0;
  private timer: NodeJS.Timeout | undefined;
  private drained: (() => void) | undefined;

  constructor(
    index: number,
    private readonly options: SimOptions,
    private readonly counters: FleetCounters,
  ) {
    this.deviceId = `sim-${options.runId}-${index}`;
    this.topic = `${options.topicPrefix}/${this.deviceId}/env`;
    this.random = new Random(options.seed + index * 7919);
    this.sensors = new Sensors(this.random);
    this.clockOffsetMs = this.random.between(-1, 1) * options.clockSkewS * 1000;
  }

  /** Events this device has published so far: event ids run from 0 to this, excluded. */
  get published(): number {
    return this.seq;
  }

  /** Connects and publishes until `count` messages or `durationS` seconds; resolves when all are acknowledged. */
  run(): Promise<void> {
    const client = mqtt.connect(this.options.url, {
      clientId: this.deviceId,
      clean: false,
      protocolVersion: 4,
      reconnectPeriod: 1000,
      connectTimeout: 30_000,
    });
    this.client = client;
    let connectedOnce = false;
    let connected = false;
    client.on("connect", () => {
      if (!connected) this.counters.connected++;
      if (connectedOnce) this.counters.reconnects++;
      connected = true;
      connectedOnce = true;
    });
    client.on("close", () => {
      if (connected) this.counters.connected--;
      connected = false;
    });
    client.on("error", () => {
      this.counters.errors++;
    });

    return new Promise<void>((resolve) => {
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
          if (this.inflight < this.options.inflight || this.options.qos === 0) this.publishNext();
          else this.owed++;
          this.timer = setTimeout(tick, intervalMs);
        };
        // Spread devices over the first interval so they do not publish in step.
        this.timer = setTimeout(tick, this.random.next() * intervalMs);
      });
    }).then(() => client.endAsync());
  }

  /** Stops publishing and disconnects without waiting for acknowledgements. */
  abort(): void {
    if (this.timer) clearTimeout(this.timer);
    this.client?.end(true);
  }

  private whenDrained(done: () => void): void {
    if (this.inflight === 0) done();
    else this.drained = done;
  }

  private publishNext(): void {
    if (this.random.chance(this.options.badRate)) {
      const payload = badPayload(pickBadKind(this.random), this.seq, this.now());
      this.counters.badSent++;
      this.publish(payload, () => {
        this.counters.badAcked++;
      });
    } else {
      this.publishEvent();
    }
    if (this.random.chance(this.options.reconnectRate)) {
      // Drop the connection the hard way: no DISCONNECT, unacknowledged messages stay queued.
      this.client?.stream.destroy();
    }
  }

  private publishEvent(): void {
    const seq = this.seq++;
    const eventId = `${this.deviceId}-${seq}`;
    let timeMs = this.now();
    if (this.random.chance(this.options.lateRate)) {
      timeMs -= this.random.between(1, 72) * HOUR_MS;
      this.counters.lateSent++;
    }
    const payload = Buffer.from(
      JSON.stringify({
        event_id: eventId,
        ts: new Date(timeMs).toISOString(),
        seq,
        device: this.deviceId,
        ...this.sensors.read(timeMs),
      }),
    );
    this.counters.uniqueSent++;
    this.publish(payload, () => {
      this.delivered.add(eventId);
      this.counters.uniqueAcked++;
      if (this.producing && this.random.chance(this.options.dupRate)) {
        // The application sends an acknowledged event again, as after a lost ack in its own queue.
        this.counters.duplicatesSent++;
        this.publish(payload, () => {});
      }
    });
  }

  private publish(payload: Buffer, onAcked: () => void): void {
    const client = this.client;
    if (!client) return;
    const qos = this.options.qos;
    const sentAt = performance.now();
    this.counters.sent++;
    this.inflight++;
    this.counters.inflight++;
    client.publish(this.topic, payload, { qos }, (error) => {
      this.inflight--;
      this.counters.inflight--;
      if (error) {
        this.counters.errors++;
      } else {
        this.counters.acked++;
        if (qos === 1) this.counters.latencies.push(performance.now() - sentAt);
        onAcked();
      }
      if (this.owed > 0 && this.producing && this.inflight < this.options.inflight) {
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
