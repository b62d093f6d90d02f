import { Transform, type TransformCallback } from "node:stream";

/** What is known of a packet refused for its size when the refusal is made. */
export interface OversizedPacket {
  /** The packet type's name, e.g. "publish". */
  type: string;
  /** Its size as its fixed header declares it, header included. */
  bytes: number;
  /** A PUBLISH's topic, when its first bytes arrived with the header. */
  topic: string | undefined;
}

const TYPES = [
  "reserved",
  "connect",
  "connack",
  "publish",
  "puback",
  "pubrec",
  "pubrel",
  "pubcomp",
  "subscribe",
  "suback",
  "unsubscribe",
  "unsuback",
  "pingreq",
  "pingresp",
  "disconnect",
  "auth",
];
const PUBLISH = 3;
const TOPIC_LOGGED_BYTES = 256;

/**
 * Passes a connection's bytes through while reading each MQTT fixed header
 * (the type byte and the remaining length, MQTT 3.1.1 §2.2), and stops at
 * the first packet whose declared size is over `maxBytes`, before its body
 * is read: the connection costs at most what the socket had buffered, not
 * the packet. aedes and mqtt-packet have no limit of their own and buffer a
 * packet whole.
 *
 * A header that is malformed (a remaining length of more than four bytes)
 * is passed on as it is: mqtt-packet refuses it.
 */
export class PacketGuard extends Transform {
  /** Body bytes of the current packet still to pass. */
  private remaining = 0;
  /** Reading a fixed header: its type byte, then the length bytes so far. */
  private type = -1;
  private length = 0;
  private lengthBytes = 0;
  private stopped = false;

  constructor(
    private readonly maxBytes: number,
    private readonly onOversized: (packet: OversizedPacket) => void,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.stopped) {
      callback();
      return;
    }
    let at = 0;
    while (at < chunk.length) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, chunk.length - at);
        this.remaining -= take;
        at += take;
        continue;
      }
      const byte = chunk[at++] as number;
      if (this.type < 0) {
        this.type = byte >> 4;
        continue;
      }
      this.length += (byte & 0x7f) * 128 ** this.lengthBytes;
      this.lengthBytes++;
      if (byte & 0x80 && this.lengthBytes < 4) continue;
      const bytes = 1 + this.lengthBytes + this.length;
      if (bytes > this.maxBytes) {
        this.stopped = true;
        this.onOversized({
          type: TYPES[this.type] ?? "unknown",
          bytes,
          topic: this.type === PUBLISH ? topicOf(chunk.subarray(at)) : undefined,
        });
        callback(new PacketTooLargeError(bytes, this.maxBytes));
        return;
      }
      this.remaining = this.length;
      this.type = -1;
      this.length = 0;
      this.lengthBytes = 0;
    }
    callback(null, chunk);
  }
}

export class PacketTooLargeError extends Error {
  override name = "PacketTooLargeError";
  constructor(bytes: number, maxBytes: number) {
    super(`a ${bytes}-byte packet is over MQTT_MAX_PACKET_BYTES (${maxBytes})`);
  }
}

/** A PUBLISH's topic from the start of its variable header, when it is all there. */
function topicOf(body: Buffer): string | undefined {
  if (body.length < 2) return undefined;
  const length = body.readUInt16BE(0);
  if (body.length < 2 + length) return undefined;
  return body.subarray(2, 2 + Math.min(length, TOPIC_LOGGED_BYTES)).toString("utf8");
}
