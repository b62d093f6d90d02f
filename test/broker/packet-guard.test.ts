import mqttPacket from "mqtt-packet";
import { describe, expect, it } from "vitest";
import { type OversizedPacket, PacketGuard } from "../../broker/packet-guard.ts";

function publish(topic: string, bytes: number): Buffer {
  return mqttPacket.generate({
    cmd: "publish",
    topic,
    payload: Buffer.alloc(bytes, 0x61),
    qos: 1,
    messageId: 1,
    retain: false,
    dup: false,
  });
}

/** Feeds `data` to a guard in pieces of `piece` bytes; what passed, and what was refused. */
async function feed(maxBytes: number, data: Buffer, piece: number) {
  const refused: OversizedPacket[] = [];
  const guard = new PacketGuard(maxBytes, (packet) => refused.push(packet));
  const passed: Buffer[] = [];
  guard.on("data", (chunk: Buffer) => passed.push(chunk));
  const error = new Promise<Error | undefined>((resolve) => {
    guard.on("error", resolve);
    guard.on("end", () => resolve(undefined));
  });
  for (let at = 0; at < data.length; at += piece) guard.write(data.subarray(at, at + piece));
  guard.end();
  return { passed: Buffer.concat(passed), refused, error: await error };
}

describe("PacketGuard", () => {
  it("passes packets up to the limit unchanged, however the bytes are split", async () => {
    const stream = Buffer.concat([
      publish("telemetry/a/env", 10),
      publish("telemetry/a/env", 200),
      publish("t", 1000 - 8),
    ]);
    expect(publish("t", 1000 - 8).length).toBe(1000);
    for (const piece of [1, 2, 3, 7, 64, stream.length]) {
      const { passed, refused, error } = await feed(1000, stream, piece);
      expect(error, `pieces of ${piece}`).toBeUndefined();
      expect(refused).toEqual([]);
      expect(passed.equals(stream)).toBe(true);
    }
  });

  it("stops at the first packet over the limit, naming its type, size and topic", async () => {
    const small = publish("telemetry/a/env", 10);
    const big = publish("telemetry/b/env", 5000);
    for (const piece of [1, 5, 40, 4096]) {
      const { passed, refused, error } = await feed(
        1000,
        Buffer.concat([small, big, small]),
        piece,
      );
      expect(error?.message).toMatch(/a 5022-byte packet is over MQTT_MAX_PACKET_BYTES \(1000\)/);
      // Nothing of the big packet's body passes beyond the piece that completed its header.
      expect(passed.length).toBeLessThan(small.length + piece + 4);
      // The topic is known when it arrived with the header.
      expect(refused).toEqual([
        { type: "publish", bytes: 5022, topic: piece === 4096 ? "telemetry/b/env" : undefined },
      ]);
    }
  });

  it("reads four-byte remaining lengths", async () => {
    const header = Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]);
    const { refused } = await feed(256 * 1024, header, header.length);
    expect(refused).toEqual([{ type: "publish", bytes: 1 + 4 + 268_435_455, topic: undefined }]);
  });
});
