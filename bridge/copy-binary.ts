import type { TelemetryRow } from "./telemetry-message.ts";

/**
 * PostgreSQL's binary COPY format for `telemetry (time, topic, device_id,
 * event_id, payload, received_at)`: each row is a field count, then each
 * field as a byte length and its bytes. Nothing is escaped and no timestamp
 * is printed or parsed, and the payload's bytes are copied as received.
 */

const SIGNATURE = Buffer.from("PGCOPY\n\xff\r\n\0", "latin1");
/** Signature, flags and header extension length. */
const HEADER_BYTES = SIGNATURE.length + 8;
const TRAILER = -1;
const FIELDS = 6;
/** The jsonb binary input format's version byte, before the JSON text. */
const JSONB_VERSION = 1;
/** timestamptz is microseconds since 2000-01-01 UTC. */
const PG_EPOCH_MS = Date.UTC(2000, 0, 1);
const TWO_32 = 2 ** 32;
/** Field count, six field lengths, two timestamps and the jsonb version. */
const FIXED_ROW_BYTES = 2 + FIELDS * 4 + 2 * 8 + 1;

/** UTF-8 takes at most 3 bytes per UTF-16 code unit. */
function maxBytes(text: string): number {
  return text.length * 3;
}

function writeTimestamp(buffer: Buffer, offset: number, ms: number): number {
  // ms × 1000 can pass 2^53 for distant years; multiply the two 32-bit halves apart.
  const relative = ms - PG_EPOCH_MS;
  const high = Math.floor(relative / TWO_32);
  const low = (relative - high * TWO_32) * 1000;
  const carry = Math.floor(low / TWO_32);
  let at = buffer.writeInt32BE(8, offset);
  at = buffer.writeInt32BE(high * 1000 + carry, at);
  return buffer.writeUInt32BE(low - carry * TWO_32, at);
}

function writeText(buffer: Buffer, offset: number, text: string): number {
  const length = buffer.write(text, offset + 4);
  buffer.writeInt32BE(length, offset);
  return offset + 4 + length;
}

/** One COPY … WITH (FORMAT binary) stream holding `rows`. */
export function encodeRows(rows: readonly TelemetryRow[]): Buffer {
  let size = HEADER_BYTES + 2;
  for (const row of rows) {
    size +=
      FIXED_ROW_BYTES +
      maxBytes(row.topic) +
      maxBytes(row.deviceId) +
      maxBytes(row.eventId) +
      row.payload.length;
  }
  const buffer = Buffer.allocUnsafe(size);
  SIGNATURE.copy(buffer, 0);
  let at = buffer.writeInt32BE(0, SIGNATURE.length);
  at = buffer.writeInt32BE(0, at);
  for (const row of rows) {
    at = buffer.writeInt16BE(FIELDS, at);
    at = writeTimestamp(buffer, at, row.timeMs);
    at = writeText(buffer, at, row.topic);
    at = writeText(buffer, at, row.deviceId);
    at = writeText(buffer, at, row.eventId);
    at = buffer.writeInt32BE(row.payload.length + 1, at);
    at = buffer.writeUInt8(JSONB_VERSION, at);
    at += row.payload.copy(buffer, at);
    at = writeTimestamp(buffer, at, row.receivedAtMs);
  }
  at = buffer.writeInt16BE(TRAILER, at);
  return buffer.subarray(0, at);
}
