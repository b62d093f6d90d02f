import { once } from "node:events";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Random } from "../../device-sim/random.ts";
import { IdentityStore } from "../../storage/identities.ts";
import {
  connectDevice,
  type Device,
  publishAcked,
  rawConnect,
  reading,
} from "../helpers/device.ts";
import {
  connectFrame,
  httpRequest,
  mutate,
  telemetryPayload,
  telemetryTopic,
  validFrame,
} from "../helpers/fuzz-inputs.ts";
import { seedFrom } from "../helpers/random.ts";
import { portsOf, type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";
import { count } from "../helpers/writer.ts";

const SEED = seedFrom("FUZZ_SEED");
/** FUZZ_SECONDS runs longer (or shorter) than the 20 s of the suite. */
const FUZZ_MS = fuzzSeconds() * 1000;
const CONNECT_TIMEOUT_MS = 1000;
/** Also the cap per address, so the idle connections fill their address's share exactly. */
const IDLE_SOCKETS = 30;
const HONEST = ["honest-0", "honest-1", "honest-2"];
const FUZZ_DEVICE = "fuzz-device";
/** Addresses the frame lanes connect from, one each, away from the devices on 127.0.0.1. */
const FRAME_ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
const IDLE_ADDRESS = "127.0.0.9";
const HTTP_LANES = 2;
/** HTTP_BODY_LIMIT_BYTES, the service's default. */
const HTTP_BODY_LIMIT = 1024 * 1024;
/**
 * Growth of the service's RSS allowed over the run. What the lanes can make
 * it hold at once is small (a packet under MQTT_MAX_PACKET_BYTES per
 * connection, a body under HTTP_BODY_LIMIT_BYTES per request); the rest is
 * V8 growing its heap under this much garbage: 80–130 MiB in 20 s runs,
 * levelling off at about 140 MiB in a 90 s one.
 */
const RSS_GROWTH_LIMIT_MIB = 192;

const db = await createTestDatabase("fuzz");
const pool = new pg.Pool({ connectionString: db.url });
let service: ServiceProcess;
let port: number;
let httpPort: number;
let fuzzSecret: string;

function fuzzSeconds(): number {
  const raw = process.env.FUZZ_SECONDS;
  if (raw === undefined || raw === "") return 20;
  const seconds = Number(raw);
  if (!(seconds > 0)) throw new Error(`FUZZ_SECONDS must be a number of seconds, not ${raw}`);
  return seconds;
}

async function procStatus(pid: number, field: "VmRSS" | "VmHWM"): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, "utf8");
  return Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status)?.[1]) / 1024;
}

async function openFiles(pid: number): Promise<number> {
  return (await fs.readdir(`/proc/${pid}/fd`)).length;
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const line = text.split("\n").find((candidate) => candidate.startsWith(`${name} `));
  return Number(line?.split(" ")[1] ?? 0);
}

/** What the service did wrong with an input; the input is kept in a file to send again. */
interface Finding {
  what: string;
  file: string;
}

let reproducers: string | undefined;

async function keep(findings: Finding[], what: string, name: string, input: Buffer) {
  reproducers ??= await fs.mkdtemp(path.join(os.tmpdir(), `telemetry-bridge-fuzz-${SEED}-`));
  const file = path.join(reproducers, name);
  await fs.writeFile(file, input);
  findings.push({ what, file });
}

type Outcome = "acked" | "refused" | "closed" | "timeout";

/** Publishes once and reports how it ended: PUBACK (or written, at QoS 0), refused by mqtt.js, connection closed, or nothing. */
function publishOutcome(
  device: Device,
  topic: string,
  payload: Buffer,
  qos: 0 | 1,
  timeoutMs: number,
): Promise<Outcome> {
  return new Promise((resolve) => {
    const finish = (outcome: Outcome) => {
      device.off("close", onClose);
      clearTimeout(timer);
      resolve(outcome);
    };
    const onClose = () => finish("closed");
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    device.once("close", onClose);
    device.publish(topic, payload, { qos }, (error) => finish(error ? "refused" : "acked"));
  });
}

/** A device publishing QoS 1 readings, four in flight, until stopped; each acknowledged id is kept. */
function honestDevice(name: string) {
  const acked = new Set<string>();
  let stop = false;
  const done = (async () => {
    const device = await connectDevice(port, name);
    const lost = new Promise<never>((_, reject) =>
      device.once("close", () => {
        if (!stop) reject(new Error(`${name} lost its connection`));
      }),
    );
    let n = 0;
    const lane = async () => {
      while (!stop) {
        const id = n++;
        await publishAcked(device, `telemetry/${name}/env`, reading(name, id));
        acked.add(`${name}-${id}`);
      }
    };
    await Promise.race([Promise.all([lane(), lane(), lane(), lane()]), lost]);
    await device.endAsync();
  })();
  // A lost connection surfaces when the device is stopped.
  done.catch(() => {});
  return {
    acked,
    stop: () => {
      stop = true;
      return done;
    },
  };
}

interface Tally {
  sessions: number;
  frames: number;
  closedByServer: number;
  payloads: number;
  disconnects: number;
  bodies: number;
  /** Bodies over the limit whose connection was closed before they were all sent. */
  cutOff: number;
  statuses: Map<number, number>;
}

/** One raw connection: maybe a valid CONNECT, then valid and corrupted frames, in pieces. */
async function frameSession(rng: Random, address: string, clientId: string, tally: Tally) {
  const socket = net.connect({ port, host: "127.0.0.1", localAddress: address });
  socket.on("error", () => {});
  // Reading starts here and goes on: whatever the service answers is drained.
  const answered = new Promise<void>((resolve) => socket.once("data", () => resolve()));
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  await Promise.race([once(socket, "connect"), closed]);
  tally.sessions++;
  if (rng.chance(0.6)) {
    socket.write(connectFrame(clientId, rng.pick([1, 30, 600])));
    await Promise.race([answered, closed, sleep(300)]);
  }
  for (let i = rng.int(1, 8); i > 0 && !socket.destroyed; i--) {
    const frame = validFrame(rng, clientId);
    const sent = rng.chance(0.2) ? frame : mutate(rng, frame, validFrame(rng, clientId));
    for (let at = 0; at < sent.length; ) {
      const end = rng.chance(0.7) ? sent.length : rng.int(at + 1, sent.length);
      socket.write(sent.subarray(at, end));
      at = end;
    }
    tally.frames++;
    if (rng.chance(0.3)) await sleep(rng.int(0, 20));
  }
  await Promise.race([closed, sleep(rng.int(10, 150))]);
  if (socket.destroyed || socket.readableEnded) tally.closedByServer++;
  socket.destroy();
}

async function frameLane(rng: Random, lane: number, until: number, tally: Tally) {
  const address = FRAME_ADDRESSES[lane] as string;
  for (let session = 0; Date.now() < until; session++) {
    await frameSession(rng, address, `fuzz-${lane}-${session}`, tally);
  }
}

/**
 * Publishes random payloads on telemetry topics, anonymously or as the
 * fuzz identity. A bridged topic's bad payload is dead-lettered and
 * acknowledged, never a reason to disconnect; the identity is also
 * disconnected for publishing where it may not too often.
 */
async function payloadLane(
  rng: Random,
  until: number,
  authenticated: boolean,
  tally: Tally,
  findings: Finding[],
) {
  const device = authenticated ? FUZZ_DEVICE : "fuzz-anonymous";
  const login = authenticated ? { username: FUZZ_DEVICE, password: fuzzSecret } : {};
  const own = (topic: string) => topic.startsWith(`telemetry/${FUZZ_DEVICE}/`);
  let client: Device | undefined;
  /** Publishes since the last PUBACK: whichever closed the connection is among them. */
  let unconfirmed: { n: number; topic: string; payload: Buffer }[] = [];
  for (let n = 0; Date.now() < until; n++) {
    client ??= await connectDevice(port, authenticated ? FUZZ_DEVICE : `${device}-${n}`, login);
    const topic = telemetryTopic(rng, device);
    const payload = telemetryPayload(rng);
    const qos = rng.chance(0.8) ? 1 : 0;
    tally.payloads++;
    unconfirmed.push({ n, topic, payload });
    const outcome = await publishOutcome(client, topic, payload, qos, 15_000);
    if (outcome === "closed") {
      tally.disconnects++;
      client = undefined;
      if (!authenticated || unconfirmed.every((sent) => own(sent.topic))) {
        for (const sent of unconfirmed) {
          await keep(
            findings,
            `MQTT: ${device} disconnected after a ${sent.payload.length}-byte payload on ${JSON.stringify(sent.topic.slice(0, 80))}`,
            `mqtt-${device}-${sent.n}.payload`,
            sent.payload,
          );
        }
      }
      unconfirmed = [];
    } else if (outcome === "timeout") {
      await keep(
        findings,
        `MQTT: no PUBACK within 15 s for a ${payload.length}-byte payload on ${JSON.stringify(topic.slice(0, 80))}`,
        `mqtt-${device}-${n}.payload`,
        payload,
      );
    } else if (outcome === "refused") {
      unconfirmed.pop();
    } else if (qos === 1) {
      unconfirmed = [];
    }
  }
  await client?.endAsync();
}

async function httpLane(
  rng: Random,
  lane: number,
  until: number,
  tally: Tally,
  findings: Finding[],
) {
  const basic = `Basic ${Buffer.from(`${FUZZ_DEVICE}:${fuzzSecret}`).toString("base64")}`;
  for (let n = 0; Date.now() < until; n++) {
    const request = httpRequest(rng, rng.chance(0.5) ? FUZZ_DEVICE : "fuzz-http");
    const headers: Record<string, string> = {};
    if (request.contentType !== undefined) headers["content-type"] = request.contentType;
    if (request.authenticated) headers.authorization = basic;
    else if (request.malformedAuthorization) headers.authorization = request.malformedAuthorization;
    const what = `HTTP: POST /publish, ${request.body.length} bytes as ${JSON.stringify(request.contentType)}`;
    tally.bodies++;
    try {
      const response = await fetch(`http://127.0.0.1:${httpPort}/publish`, {
        method: "POST",
        headers,
        body: request.body,
        signal: AbortSignal.timeout(15_000),
      });
      const answer = await response.text();
      tally.statuses.set(response.status, (tally.statuses.get(response.status) ?? 0) + 1);
      if (response.status >= 500) {
        await keep(
          findings,
          `${what}: ${response.status} ${answer.slice(0, 200)}`,
          `http-${lane}-${n}.body`,
          request.body,
        );
      }
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause?.code;
      // Refused at the body limit, the request may be cut off while it is still being sent.
      if (request.body.length > HTTP_BODY_LIMIT && (cause === "EPIPE" || cause === "ECONNRESET")) {
        tally.cutOff++;
        continue;
      }
      await keep(
        findings,
        `${what}: no answer (${(error as Error).message})`,
        `http-${lane}-${n}.body`,
        request.body,
      );
    }
  }
}

/** A connection that never completes a CONNECT: silent, half a fixed header, or half a CONNECT. */
async function idleSocket(
  kind: number,
): Promise<{ socket: net.Socket; closedAt: Promise<number> }> {
  const socket = net.connect({ port, host: "127.0.0.1", localAddress: IDLE_ADDRESS });
  socket.on("error", () => {});
  const closedAt = new Promise<number>((resolve) =>
    socket.once("close", () => resolve(performance.now())),
  );
  await Promise.race([once(socket, "connect"), closedAt]);
  const connect = connectFrame(`idle-${kind}`);
  if (kind % 3 === 1) socket.write(connect.subarray(0, 1));
  if (kind % 3 === 2) socket.write(connect.subarray(0, connect.length - 3));
  return { socket, closedAt };
}

beforeAll(async () => {
  fuzzSecret = (await new IdentityStore(pool).add([FUZZ_DEVICE], "device")).get(
    FUZZ_DEVICE,
  ) as string;
  service = await spawnService({
    DATABASE_URL: db.url,
    MQTT_PORT: "0",
    MQTT_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
    MQTT_MAX_CONNECTIONS_PER_ADDRESS: String(IDLE_SOCKETS),
  });
  ({ mqtt: port, http: httpPort } = portsOf(service));
});
afterAll(async () => {
  service?.child.kill("SIGTERM");
  await service?.exited;
  await pool.end();
});

describe("fuzzing the service", () => {
  it("survives corrupted MQTT frames, random payloads and HTTP bodies while devices store exactly once", {
    timeout: FUZZ_MS + 40_000,
  }, async () => {
    console.log(`fuzz seed ${SEED}: FUZZ_SEED=${SEED} repeats these inputs`);
    const pid = service.child.pid as number;
    const rng = new Random(SEED);
    const tally: Tally = {
      sessions: 0,
      frames: 0,
      closedByServer: 0,
      payloads: 0,
      disconnects: 0,
      bodies: 0,
      cutOff: 0,
      statuses: new Map(),
    };
    const findings: Finding[] = [];
    const honest = HONEST.map(honestDevice);
    await sleep(500);
    const baseline = await procStatus(pid, "VmRSS");
    let peak = baseline;
    const sampler = setInterval(() => {
      procStatus(pid, "VmRSS").then(
        (rss) => {
          peak = Math.max(peak, rss);
        },
        () => {},
      );
    }, 200);

    const until = Date.now() + FUZZ_MS;
    const lanes = [
      ...FRAME_ADDRESSES.map((_, lane) => frameLane(rng.fork(), lane, until, tally)),
      payloadLane(rng.fork(), until, false, tally, findings),
      payloadLane(rng.fork(), until, true, tally, findings),
      ...Array.from({ length: HTTP_LANES }, (_, lane) =>
        httpLane(rng.fork(), lane, until, tally, findings),
      ),
    ];
    const exited = service.exited.then((code) => {
      throw new Error(
        `the service exited (${code}) while fuzzed:\n${service.output.slice(-30).join("\n")}`,
      );
    });
    await Promise.race([Promise.all(lanes), exited]);
    await Promise.race([Promise.all(honest.map((device) => device.stop())), exited]);
    clearInterval(sampler);
    const highWater = await procStatus(pid, "VmHWM");
    const after = await procStatus(pid, "VmRSS");

    const statuses = [...tally.statuses].sort(([a], [b]) => a - b);
    console.log(
      `fuzz seed ${SEED}: ${tally.frames} MQTT frames on ${tally.sessions} connections ` +
        `(${tally.closedByServer} closed by the service), ${tally.payloads} payloads ` +
        `(${tally.disconnects} disconnects), ${tally.bodies} HTTP bodies ` +
        `(${statuses.map(([status, n]) => `${status}×${n}`).join(" ")}, ${tally.cutOff} cut off at the limit); ` +
        `honest ${honest.map((device) => device.acked.size).join("+")} acknowledged; ` +
        `RSS ${baseline.toFixed(0)} MiB before, peak ${peak.toFixed(0)} MiB ` +
        `(VmHWM ${highWater.toFixed(0)} MiB), ${after.toFixed(0)} MiB after`,
    );
    const letters = await pool.query<{ reason: string; n: string }>(
      "SELECT reason, count(*) AS n FROM telemetry_rejected GROUP BY reason ORDER BY reason",
    );
    console.log(
      `fuzz seed ${SEED}: dead letters ${letters.rows.map((row) => `${row.reason}×${row.n}`).join(" ")}`,
    );
    expect(
      findings.map((finding) => `${finding.what} (input in ${finding.file})`),
      `FUZZ_SEED=${SEED}`,
    ).toEqual([]);
    expect(service.child.exitCode).toBeNull();
    expect(tally.frames).toBeGreaterThan(500);
    expect(tally.payloads).toBeGreaterThan(100);
    expect(tally.bodies).toBeGreaterThan(100);
    // The high-water mark also holds what fell between two samples.
    expect(Math.max(peak, highWater) - baseline).toBeLessThan(RSS_GROWTH_LIMIT_MIB);

    const { rows } = await pool.query<{ event_id: string; copies: string }>(
      "SELECT event_id, count(*) AS copies FROM telemetry WHERE device_id = ANY($1) GROUP BY event_id",
      [HONEST],
    );
    const sent = honest.flatMap((device) => [...device.acked]).sort();
    expect(sent.length).toBeGreaterThan(100);
    expect(rows.filter((row) => Number(row.copies) !== 1)).toEqual([]);
    expect(rows.map((row) => row.event_id).sort()).toEqual(sent);
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry_rejected WHERE client_id = ANY($1)", [
        HONEST,
      ]),
    ).toBe(0);
    expect((await fetch(`http://127.0.0.1:${httpPort}/health`)).status).toBe(200);
  });

  it("dead-letters JSON nested thousands deep, storing what other devices sent beside it", async () => {
    const sender = await connectDevice(port, "deep-sender");
    const witness = await connectDevice(port, "deep-witness");
    const depth = 20_000;
    const ts = Date.now();
    // With a NUL at the bottom, searching the parsed value for it overflowed
    // the stack and ended the service; without, PostgreSQL's jsonb input did,
    // and failed the whole batch.
    const deep = ['"\\u0000"', "1"].map((leaf, n) =>
      publishOutcome(
        sender,
        "telemetry/deep-sender/env",
        Buffer.from(
          `{"event_id":"deep-${n}","ts":${ts},"a":${"[".repeat(depth)}${leaf}${"]".repeat(depth)}}`,
        ),
        1,
        10_000,
      ),
    );
    const beside = Array.from({ length: 8 }, (_, n) =>
      publishOutcome(
        witness,
        "telemetry/deep-witness/env",
        Buffer.from(reading("deep-witness", n)),
        1,
        10_000,
      ),
    );
    expect(await Promise.all(deep)).toEqual(["acked", "acked"]);
    expect(await Promise.all(beside)).toEqual(beside.map(() => "acked"));
    await Promise.all([sender.endAsync(), witness.endAsync()]);
    expect(service.child.exitCode).toBeNull();
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'deep-witness'"),
    ).toBe(8);
    expect(
      await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'deep-sender'"),
    ).toBe(0);
    expect(
      await count(
        pool,
        "SELECT count(*) AS n FROM telemetry_rejected WHERE client_id = 'deep-sender'",
      ),
    ).toBe(2);
  });

  it("closes connections that never send a CONNECT, and admits as many again", async () => {
    const pid = service.child.pid as number;
    const filesBefore = await openFiles(pid);
    const refusedBefore = await metric(
      'telemetry_bridge_connections_refused_total{reason="address_connections"}',
    );
    const openedAt = performance.now();
    const idle = await Promise.all(Array.from({ length: IDLE_SOCKETS }, (_, n) => idleSocket(n)));
    const over = await idleSocket(IDLE_SOCKETS);
    const overClosed = await Promise.race([over.closedAt, sleep(500).then(() => undefined)]);
    expect(overClosed, "a connection over the cap is closed at once").toBeDefined();
    expect(
      await metric('telemetry_bridge_connections_refused_total{reason="address_connections"}'),
    ).toBe(refusedBefore + 1);

    const closedAfter = (await Promise.all(idle.map((socket) => socket.closedAt))).map(
      (at) => at - openedAt,
    );
    expect(Math.min(...closedAfter)).toBeGreaterThan(CONNECT_TIMEOUT_MS * 0.8);
    expect(Math.max(...closedAfter)).toBeLessThan(CONNECT_TIMEOUT_MS + 2000);

    const admitted = [];
    for (let n = 0; n < IDLE_SOCKETS; n++) {
      admitted.push(
        await rawConnect({ port, localAddress: IDLE_ADDRESS, clientId: `after-idle-${n}` }),
      );
    }
    for (const { socket } of admitted) socket.destroy();
    expect(admitted.map(({ code }) => code)).toEqual(admitted.map(() => 0));
    await sleep(300);
    expect(await openFiles(pid)).toBeLessThanOrEqual(filesBefore + 2);
  });
});
