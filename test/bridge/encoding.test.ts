import { describe, expect, it } from "vitest";
import { encodeRows } from "../../bridge/copy-binary.ts";
import { timestamp } from "../../bridge/timestamp.ts";
import { row } from "../helpers/writer.ts";

describe("timestamp", () => {
  it("writes ISO 8601 exactly as Date#toISOString does", () => {
    const samples = [0, 1, 999, 86_399_999, 86_400_000, Date.UTC(9999, 11, 31, 23, 59, 59, 999)];
    for (let i = 0; i < 10_000; i++) samples.push(Math.floor(Math.random() * Date.UTC(9999, 0, 1)));
    for (const ms of samples) expect(timestamp(ms)).toBe(new Date(ms).toISOString());
  });
});

describe("COPY binary rows", () => {
  /** Reads back each field of the stream `encodeRows` makes. */
  function decode(buffer: Buffer): Buffer[][] {
    expect(buffer.subarray(0, 11).toString("latin1")).toBe("PGCOPY\n\xff\r\n\0");
    const rows: Buffer[][] = [];
    let at = 19;
    for (let fields = buffer.readInt16BE(at); fields !== -1; fields = buffer.readInt16BE(at)) {
      at += 2;
      const row: Buffer[] = [];
      for (let f = 0; f < fields; f++) {
        const length = buffer.readInt32BE(at);
        row.push(buffer.subarray(at + 4, at + 4 + length));
        at += 4 + length;
      }
      rows.push(row);
    }
    expect(at + 2).toBe(buffer.length);
    return rows;
  }

  it("write timestamps as exact microseconds since 2000 from 1970 to 9999", () => {
    const samples = [0, 1, Date.UTC(2000, 0, 1) - 1, Date.UTC(2000, 0, 1), Date.UTC(9999, 11, 31)];
    for (let i = 0; i < 10_000; i++) samples.push(Math.floor(Math.random() * Date.UTC(9999, 0, 1)));
    const rows = samples.map((ms) => ({ ...row("t", 0, ms), receivedAtMs: ms + 1 }));
    const decoded = decode(encodeRows(rows));
    const micros = (ms: number) => (BigInt(ms) - BigInt(Date.UTC(2000, 0, 1))) * 1000n;
    decoded.forEach((fields, i) => {
      expect(fields[0]?.readBigInt64BE()).toBe(micros(samples[i] as number));
      expect(fields[5]?.readBigInt64BE()).toBe(micros((samples[i] as number) + 1));
    });
  });

  it("write text as UTF-8 and the payload's bytes after jsonb's version byte", () => {
    const payload = Buffer.from('{"event_id":"é\\t","ts":1,"note":"tab\there"}');
    const [fields] = decode(
      encodeRows([
        {
          topic: "telemetry/dév/a\tb",
          deviceId: "dév",
          eventId: "é𝄞",
          timeMs: 1,
          payload,
          receivedAtMs: 2,
          clientId: null,
        },
      ]),
    );
    expect(fields?.slice(1, 4).map((field) => field.toString())).toEqual([
      "telemetry/dév/a\tb",
      "dév",
      "é𝄞",
    ]);
    expect(fields?.[4]).toEqual(Buffer.concat([Buffer.from([1]), payload]));
  });
});
