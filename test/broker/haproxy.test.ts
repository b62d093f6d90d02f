import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { IdentityStore } from "../../storage/identities.ts";
import { rawConnect, Stream } from "../helpers/device.ts";
import { freePort } from "../helpers/free-port.ts";
import { type Haproxy, startHaproxy } from "../helpers/haproxy.ts";
import { installed } from "../helpers/installed.ts";
import { runCommand } from "../helpers/run-command.ts";
import { logged, type ServiceProcess, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("haproxy");
const pool = new pg.Pool({ connectionString: db.url });
const NODES = ["node-1", "node-2"];
const DEVICES = 6;
const MESSAGES = 500;
/**
 * HAProxy connects to the nodes from this address, devices connect to
 * HAProxy from 127.0.0.1: a node that went by its peers' addresses would
 * see every device as 127.0.0.9.
 */
const PROXY_SOURCE = "127.0.0.9";

const running: ServiceProcess[] = [];
const clients: mqtt.MqttClient[] = [];
let haproxy: Haproxy | undefined;
afterAll(async () => {
  for (const client of clients) client.end(true);
  await haproxy?.stop();
  for (const node of running) node.child.kill("SIGKILL");
  await pool.end();
});

async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(50);
  }
}

/** The CONNACK's return code to a CONNECT sent from `localAddress`, undefined when the connection was closed instead. */
async function connackCode(
  port: number,
  localAddress: string,
  clientId: string,
  preamble?: string,
) {
  const { code, socket } = await rawConnect({ port, localAddress, clientId, preamble });
  socket.destroy();
  return code;
}

function connected(client: mqtt.MqttClient): Promise<void> {
  return new Promise((resolve) => client.once("connect", () => resolve()));
}

interface LogLine {
  msg?: string;
  address?: string;
  refusal?: string;
}

function logLines(node: ServiceProcess): LogLine[] {
  return node.output.flatMap((line) => {
    try {
      return [JSON.parse(line) as LogLine];
    } catch {
      return [];
    }
  });
}

describe.skipIf(!installed("haproxy", "the HAProxy test"))(
  "two nodes behind HAProxy (deploy/haproxy.cfg)",
  () => {
    it("moves the devices of a SIGKILLed node to the other, which stores each message once and knows their addresses", async () => {
      const ports: { mqtt: number; http: number }[] = [];
      for (const _ of NODES) ports.push({ mqtt: await freePort(), http: await freePort() });
      const nodes = await Promise.all(
        ports.map((port) =>
          spawnService({
            DATABASE_URL: db.url,
            MQTT_PORT: String(port.mqtt),
            HTTP_PORT: String(port.http),
            MQTT_PROXY_PROTOCOL: "on",
            TRUSTED_PROXIES: PROXY_SOURCE,
            BATCH_MAX_WAIT_MS: "5",
            // Every device and the tap fit on one node, from one address, and no more.
            MQTT_MAX_CONNECTIONS_PER_ADDRESS: String(DEVICES + 1),
          }).then((node) => {
            running.push(node);
            return node;
          }),
        ),
      );
      const proxy = await startHaproxy(
        NODES.map((name, n) => ({
          name,
          ports: { 1883: ports[n]?.mqtt ?? 0, 8080: ports[n]?.http ?? 0 },
        })),
        PROXY_SOURCE,
      );
      haproxy = proxy;
      const mqttServer = (name: string) => async () =>
        (await proxy.servers())[`mqtt_nodes/${name}`] ?? { status: "missing", sessions: 0 };
      await until(
        async () => Object.values(await proxy.servers()).every((server) => server.status === "UP"),
        "HAProxy's health checks find both nodes up",
      );
      const health = await fetch(`http://127.0.0.1:${proxy.ports[8080]}/health`);
      expect(health.status).toBe(200);
      const url = `mqtt://127.0.0.1:${proxy.ports[1883]}`;

      // The tap connects first; the node it lands on is the one killed.
      const tapped: { eventId: string; at: number }[] = [];
      const tap = mqtt.connect(url, {
        clientId: "haproxy-tap",
        clean: true,
        protocolVersion: 4,
        reconnectPeriod: 200,
      });
      clients.push(tap);
      let tapConnections = 0;
      tap.on("connect", () => tapConnections++);
      tap.on("message", (_topic, payload) => {
        tapped.push({ eventId: JSON.parse(payload.toString()).event_id, at: Date.now() });
      });
      await connected(tap);
      await tap.subscribeAsync("telemetry/#", { qos: 0 });
      let victimName: string | undefined;
      for (const name of NODES) if ((await mqttServer(name)()).sessions === 1) victimName = name;
      const victim = nodes[NODES.indexOf(victimName ?? "")];
      const survivor = nodes.find((node) => node !== victim);
      if (!victimName || !victim || !survivor) throw new Error("the tap is on no node");

      const devices = Array.from({ length: DEVICES }, (_, n) => `haproxy-dev-${n + 1}`);
      const streams: Stream[] = [];
      for (const id of devices) {
        const device = mqtt.connect(url, {
          clientId: id,
          clean: false,
          protocolVersion: 4,
          reconnectPeriod: 200,
        });
        clients.push(device);
        await connected(device);
        streams.push(new Stream(device, id, MESSAGES, 10, 10));
      }
      // leastconn: the tap's node has its share of devices too.
      expect((await mqttServer(victimName)()).sessions).toBeGreaterThanOrEqual(3);
      const done = Promise.all(streams.map((stream) => stream.run()));

      await until(
        () => streams.every((stream) => stream.acked.size >= MESSAGES / 5),
        "every device has a fifth of its stream acknowledged",
      );
      victim.child.kill("SIGKILL");
      await victim.exited;
      const killedAt = Date.now();
      await until(
        async () => (await mqttServer(victimName)()).status === "DOWN",
        "HAProxy's health check marks the killed node down",
      );
      await done;
      expect(streams.map((stream) => stream.acked.size)).toEqual(devices.map(() => MESSAGES));

      // The tap reconnected through HAProxy to the survivor and saw every device there.
      expect(tapConnections).toBeGreaterThanOrEqual(2);
      const seenAfter = new Set(
        tapped
          .filter((message) => message.at > killedAt)
          .map((m) => m.eventId.replace(/-\d+$/, "")),
      );
      expect([...seenAfter].sort()).toEqual([...devices].sort());

      // The survivor now holds the devices and the tap, all from 127.0.0.1 by
      // their PROXY headers: one more from there is over the per-address limit,
      // one from another address behind the same proxy is not.
      const front = proxy.ports[1883] ?? 0;
      expect(await connackCode(front, "127.0.0.1", "haproxy-extra")).toBeUndefined();
      expect(await connackCode(front, "127.0.0.2", "haproxy-elsewhere")).toBe(0);
      const refusals = logLines(survivor).filter(
        (line) => line.msg === "connection refused: over a limit",
      );
      expect(refusals.map(({ address, refusal }) => ({ address, refusal }))).toEqual([
        { address: "127.0.0.1", refusal: "address_connections" },
      ]);

      for (const client of clients) await client.endAsync();
      const { rows } = await pool.query<{ copies: number; events: number }>(
        `SELECT count(*)::int AS copies, count(DISTINCT (topic, event_id))::int AS events
         FROM telemetry WHERE device_id LIKE 'haproxy-dev-%'`,
      );
      expect(rows[0]).toEqual({ copies: DEVICES * MESSAGES, events: DEVICES * MESSAGES });
    }, 90_000);

    it("counts failed HTTP logins by the address HAProxy forwards, and lets no other peer name an address", async () => {
      const ports = { 1883: await freePort(), 8080: await freePort() };
      const node = await spawnService({
        DATABASE_URL: db.url,
        MQTT_PORT: String(ports[1883]),
        HTTP_PORT: String(ports[8080]),
        MQTT_PROXY_PROTOCOL: "on",
        TRUSTED_PROXIES: PROXY_SOURCE,
      });
      running.push(node);
      await haproxy?.stop();
      const proxy = await startHaproxy([{ name: "node-1", ports }], PROXY_SOURCE);
      haproxy = proxy;
      await until(
        async () => Object.values(await proxy.servers()).every((server) => server.status === "UP"),
        "HAProxy's health checks find the node up",
      );
      const secrets = await new IdentityStore(pool).add(
        ["guessed-1", "guessed-2", "reader-1", "reader-2"],
        "reader",
      );
      /** GET /stats with Basic credentials from `from`: the status code. */
      const stats = async (
        from: string,
        id: string,
        secret: string,
        options: { direct?: boolean; forwardedFor?: string } = {},
      ) => {
        const port = options.direct ? ports[8080] : proxy.ports[8080];
        const { stdout } = await runCommand("curl", [
          ...["-s", "-o", "/dev/null", "-w", "%{http_code}", "--interface", from],
          ...["-u", `${id}:${secret}`],
          ...(options.forwardedFor ? ["-H", `X-Forwarded-For: ${options.forwardedFor}`] : []),
          `http://127.0.0.1:${port}/stats`,
        ]);
        return stdout;
      };
      const secretOf = (id: string) => secrets.get(id) as string;

      // A guesser behind HAProxy is refused from its own address…
      for (let n = 0; n < 10; n++)
        expect(await stats("127.0.0.2", "guessed-1", `guess-${n}`)).toBe("401");
      expect(await stats("127.0.0.2", "reader-1", secretOf("reader-1"))).toBe("429");
      // …while the other clients of the same proxy are not.
      expect(await stats("127.0.0.3", "reader-1", secretOf("reader-1"))).toBe("200");

      // Going around HAProxy, X-Forwarded-For names no address: every guess counts against the peer's.
      for (let n = 0; n < 10; n++) {
        const spoofed = { direct: true, forwardedFor: `198.51.100.${n}` };
        expect(await stats("127.0.0.4", "guessed-2", `guess-${n}`, spoofed)).toBe("401");
      }
      const fresh = { direct: true, forwardedFor: "198.51.100.99" };
      expect(await stats("127.0.0.4", "reader-2", secretOf("reader-2"), fresh)).toBe("429");

      // A PROXY header sent straight to the node is refused; through HAProxy, a device connects.
      const forged = "PROXY TCP4 198.51.100.5 127.0.0.1 40000 1883\r\n";
      expect(
        await connackCode(ports[1883], "127.0.0.4", "haproxy-spoofer", forged),
      ).toBeUndefined();
      await logged(node, "connection refused: not from TRUSTED_PROXIES");
      expect(await connackCode(proxy.ports[1883] ?? 0, "127.0.0.4", "haproxy-device")).toBe(0);
    });
  },
);
