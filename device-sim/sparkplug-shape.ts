import {
  DataType,
  encodePayload,
  type SparkplugMetric,
  type SparkplugPayload,
  scalarValue,
} from "../bridge/sparkplug.ts";
import { runMarker } from "./faults.ts";
import type { OpenProfile } from "./profiles/index.ts";
import type { DeviceContext } from "./profiles/profile.ts";
import {
  SPARKPLUG_DEVICE,
  SPARKPLUG_GROUP,
  SPARKPLUG_METRICS,
  type SparkplugMetricName,
} from "./profiles/sparkplug-b.ts";
import { ProfileShape, type ShapedEvent, type Will } from "./shape.ts";

/** seq and bdSeq count 0 to 255, then start again. */
const SEQ_WRAP = 256;
/** An alias no BIRTH of the simulator declares. */
const UNDECLARED_ALIAS = 99;

/** Malformed messages of an edge node: bytes that are no payload, and a DDATA with an alias no BIRTH declared. */
export const SPARKPLUG_BAD_KINDS = ["not_sparkplug", "alias_unknown"] as const;
export type SparkplugBadKind = (typeof SPARKPLUG_BAD_KINDS)[number];

/**
 * A Sparkplug B edge node and its one device, as the specification has them
 * behave: on every connection an NBIRTH (seq 0, with the bdSeq of that
 * connection's will) and a DBIRTH declaring each metric's name, datatype and
 * alias, then DDATA by alias alone. Every message of the edge node takes the
 * next seq, and a time a millisecond after the last at the earliest, so no
 * two of its messages share (timestamp, seq) on any topic.
 */
export class SparkplugShape extends ProfileShape {
  override readonly topics: readonly string[];
  private readonly nodeBirthTopic: string;
  private readonly deviceBirthTopic: string;
  private readonly deathTopic: string;
  private seq = 0;
  private bdSeq = -1;

  constructor(open: OpenProfile, context: DeviceContext, runId: string) {
    super(open, context, runId);
    const edge = context.deviceId;
    const node = `spBv1.0/${SPARKPLUG_GROUP}`;
    this.nodeBirthTopic = `${node}/NBIRTH/${edge}`;
    this.deviceBirthTopic = `${node}/DBIRTH/${edge}/${SPARKPLUG_DEVICE}`;
    this.deathTopic = `${node}/NDEATH/${edge}`;
    this.topics = [this.nodeBirthTopic, this.deviceBirthTopic, this.topic];
  }

  /** The NDEATH the broker publishes when this connection is lost: the next bdSeq, which the NBIRTH repeats. */
  nextWill(timeMs: number): Will {
    this.bdSeq = (this.bdSeq + 1) % SEQ_WRAP;
    return {
      topic: this.deathTopic,
      payload: this.encode({ timestamp: Math.floor(timeMs), metrics: [this.bdSeqMetric()] }),
    };
  }

  births(timeMs: number): ShapedEvent[] {
    this.seq = 0;
    const node: SparkplugPayload = {
      ...this.next(timeMs),
      metrics: [
        this.bdSeqMetric(),
        {
          name: "Node Control/Rebirth",
          datatype: DataType.Boolean,
          value: scalarValue(DataType.Boolean, false),
        },
      ],
    };
    const values = this.readings(timeMs);
    const device: SparkplugPayload = {
      ...this.next(timeMs),
      metrics: SPARKPLUG_METRICS.map(({ name, datatype, alias }) => ({
        name,
        alias,
        datatype,
        value: scalarValue(datatype, values[name]),
      })),
    };
    return [this.shaped(this.nodeBirthTopic, node), this.shaped(this.deviceBirthTopic, device)];
  }

  override event(_seq: number, timeMs: number, _late: boolean): ShapedEvent {
    return this.shaped(this.topic, this.data(timeMs));
  }

  /** A malformed message marked with the run, in a field that survives being cut short. */
  override bad(_seq: number, timeMs: number): Buffer {
    const marked = { ...this.data(timeMs), uuid: runMarker(this.runId).toString() };
    if (this.random.pick(SPARKPLUG_BAD_KINDS) === "alias_unknown") {
      const [first] = marked.metrics;
      return this.encode({ ...marked, metrics: [{ ...first, alias: UNDECLARED_ALIAS }] });
    }
    // Cut off in the body that follows the marker, as by a truncated write.
    const whole = this.encode({ ...marked, body: Buffer.alloc(16) });
    return whole.subarray(0, whole.length - 8);
  }

  /** A DDATA of the readings at `timeMs`: each metric by its alias, its datatype the DBIRTH's. */
  private data(timeMs: number): SparkplugPayload & { metrics: SparkplugMetric[] } {
    const values = this.readings(timeMs);
    return {
      ...this.next(timeMs),
      metrics: SPARKPLUG_METRICS.map(({ name, datatype, alias }) => ({
        alias,
        value: scalarValue(datatype, values[name]),
      })),
    };
  }

  private readings(timeMs: number): Record<SparkplugMetricName, number> {
    return this.message(timeMs, 0) as Record<SparkplugMetricName, number>;
  }

  /** The edge node's next seq, and its next time. */
  private next(timeMs: number): { timestamp: number; seq: number } {
    const seq = this.seq;
    this.seq = (seq + 1) % SEQ_WRAP;
    return { timestamp: this.stamp(timeMs, false), seq };
  }

  private bdSeqMetric(): SparkplugMetric {
    return {
      name: "bdSeq",
      datatype: DataType.UInt64,
      value: scalarValue(DataType.UInt64, this.bdSeq),
    };
  }

  private shaped(topic: string, payload: SparkplugPayload): ShapedEvent {
    const bytes = this.encode(payload);
    return { topic, payload: bytes, key: this.keyOf(topic, bytes) };
  }

  private encode(payload: SparkplugPayload): Buffer {
    return Buffer.from(encodePayload(payload));
  }
}
