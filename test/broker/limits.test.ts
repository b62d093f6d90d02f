import fs from "node:fs/promises";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import mqttPacket from "mqtt-packet";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectDevice, publishAcked, rawConnect, reading } from "../helpers/device.ts";
import { portsOf, type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";
import { count } from "../helpers/writer.ts";

const db = await createTestDatabase("limits");
const pool = new pg.Pool({ connectionString: db.url });
const MiB = 1024 * 1024;
const LIMIT = 256 * 1024;
let service: ServiceProcess;
let port: number;
let httpPort: number;

async function peakRssMiB(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, "utf8");
  return Number(/^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1]) / 1024;
}

/**
 * Sends a PUBLISH whose header declares `bytes` of payload, then the
 * payload in 1 MiB writes until the service closes the connection.
 * Resolves with the bytes it managed to write.
 */
async function floodPublish(clientId: string, bytes: number): Promise<number> {
  const { socket } = await attempt(clientId, "127.0.0.1");
  const topic = `telemetry/${clientId}/env`;
  const header = mqttPacket.generate({
    cmd: "publish",
    topic,
    payload: Buffer.alloc(0),
    qos: 0,
    retain: false,
    dup: false,
  });
  // Rewrite the remaining length for the payload that follows.
  const remaining = 2 + Buffer.byteLength(topic) + bytes;
  const length: number[] = [];
  for (let left = remaining; ; ) {
    const digit = left % 128;
    left = Math.floor(left / 128);
    length.push(left > 0 ? digit | 0x80 : digit);
    if (left === 0) break;
  }
  const variable = header.subarray(2);
  const chunk = Buffer.alloc(MiB, 0x78);
  let written = 0;
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  let open = true;
  socket.once("close", () => {
    open = false;
  });
  socket.write(Buffer.concat([Buffer.from([header[0] as number, ...length]), variable]));
  while (open && written < bytes) {
    const ok = socket.write(chunk);
    written += chunk.length;
    if (!ok) {
      await Promise.race([new Promise((resolve) => socket.once("drain", resolve)), closed]);
    }
  }
  await Promise.race([closed, sleep(10_000)]);
  socket.destroy();
  return written;
}

async function metrics(): Promise<string> {
  return (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
}

/** A CONNECT from `localAddress`: the CONNACK's code, or undefined when closed without one. */
function attempt(clientId: string, localAddress: string, keepalive?: number) {
  return rawConnect({ port, localAddress, clientId, keepalive });
}

/** A device storing a reading every 20 ms until stopped; resolves with how many were acknowledged. */
function honestDevice(name: string) {
  let stop = false;
  const done = (async () => {
    const device = await connectDevice(port, name);
    let n = 0;
    while (!stop) {
      await publishAcked(device, `telemetry/${name}/env`, reading(name, n++));
      await sleep(20);
    }
    await device.endAsync();
    return n;
  })();
  return {
    stop: () => {
      stop = true;
      return done;
    },
  };
}

beforeAll(async () => {
  service = await spawnService({
    DATABASE_URL: db.url,
    MQTT_PORT: "0",
    MQTT_CONNECT_TIMEOUT_MS: "1000",
    MQTT_MAX_CONNECTIONS: "40",
    MQTT_MAX_CONNECTIONS_PER_ADDRESS: "20",
    MQTT_CONNECT_RATE_PER_ADDRESS: "3",
    MQTT_MAX_KEEPALIVE_S: "600",
  });
  ({ mqtt: port, http: httpPort } = portsOf(service));
});
afterAll(async () => {
  service?.child.kill("SIGTERM");
  await service?.exited;
  await pool.end();
});

describe("limits at the edge", () => {
  it("closes a connection at a packet over MQTT_MAX_PACKET_BYTES, before buffering it", async () => {
    const pid = service.child.pid as number;
    const honest = honestDevice("steady");
    await sleep(300);
    const before = await peakRssMiB(pid);
    const written = await floodPublish("huge", 200 * MiB);
    const afterOne = await peakRssMiB(pid);
    await Promise.all(Array.from({ length: 10 }, (_, n) => floodPublish(`big-${n}`, 50 * MiB)));
    const afterTen = await peakRssMiB(pid);
    await sleep(300);
    const stored = await honest.stop();
    console.log(
      `peak RSS ${before.toFixed(0)} MiB before, ${afterOne.toFixed(0)} MiB after one 200 MiB publish ` +
        `(${(written / MiB).toFixed(0)} MiB written before the close), ${afterTen.toFixed(0)} MiB after ten 50 MiB publishes`,
    );
    expect(written).toBeLessThan(200 * MiB);
    expect(afterOne - before).toBeLessThan(LIMIT / MiB + 20);
    expect(afterTen - before).toBeLessThan(LIMIT / MiB + 20);
    expect(stored).toBeGreaterThan(5);
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'steady'"),
    ).toBe(stored);
    expect(
      await count(
        pool,
        "SELECT count(*) AS n FROM telemetry_rejected WHERE topic LIKE 'telemetry/big-%' OR topic = 'telemetry/huge/env'",
      ),
    ).toBe(0);
    const logged = service.output.filter((line) => line.includes("MQTT_MAX_PACKET_BYTES"));
    expect(logged.length).toBe(11);
    expect(JSON.parse(logged[0] as string)).toMatchObject({
      clientId: "huge",
      address: "127.0.0.1",
      type: "publish",
      topic: "telemetry/huge/env",
      bytes: 200 * MiB + 25,
      limit: LIMIT,
    });
    expect(await metrics()).toMatch(/^telemetry_bridge_oversized_packets_total 11$/m);
  });

  it("closes a connection that sends no CONNECT in time", async () => {
    const socket = net.connect({ port, host: "127.0.0.1" });
    const started = performance.now();
    await new Promise((resolve) => socket.once("close", resolve));
    const waited = performance.now() - started;
    expect(waited).toBeGreaterThan(800);
    expect(waited).toBeLessThan(3000);
  });

  it("refuses a keepalive of none or over MQTT_MAX_KEEPALIVE_S", async () => {
    for (const keepalive of [0, 601]) {
      const { code } = await attempt(`keepalive-${keepalive}`, "127.0.0.1", keepalive);
      expect(code, `keepalive ${keepalive}`).toBeUndefined();
    }
    const { code, socket } = await attempt("keepalive-ok", "127.0.0.1", 600);
    socket.destroy();
    expect(code).toBe(0);
  });

  it("caps connections per address and in all, and new connections per address per second", async () => {
    const held: net.Socket[] = [];
    const open = async (address: string, n: number) => {
      for (let i = 0; i < n; i++) {
        const { code, socket } = await attempt(`${address}-${i}`, address);
        expect(code, `${address} #${i}`).toBe(0);
        held.push(socket);
      }
    };
    await open("127.0.0.2", 20);
    expect((await attempt("over-address", "127.0.0.2")).code).toBeUndefined();
    await open("127.0.0.3", 20);
    expect((await attempt("over-total", "127.0.0.4")).code).toBeUndefined();
    for (const socket of held) socket.destroy();
    await sleep(200);

    // A burst of ten seconds' worth (30), then refused until tokens come back.
    const codes: (number | undefined)[] = [];
    for (let i = 0; i < 35; i++) {
      const { code, socket } = await attempt(`burst-${i}`, "127.0.0.5");
      codes.push(code);
      socket.destroy();
    }
    expect(codes.slice(0, 30).every((code) => code === 0)).toBe(true);
    expect(codes.slice(30).every((code) => code === undefined)).toBe(true);
    const text = await metrics();
    expect(text).toMatch(
      /^telemetry_bridge_connections_refused_total\{reason="address_connections"\} 1$/m,
    );
    expect(text).toMatch(/^telemetry_bridge_connections_refused_total\{reason="connections"\} 1$/m);
    expect(text).toMatch(
      /^telemetry_bridge_connections_refused_total\{reason="address_rate"\} 5$/m,
    );
  });
});
