import { once } from "node:events";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import tls from "node:tls";
import type { Client } from "aedes";
import mqtt from "mqtt";
import mqttPacket from "mqtt-packet";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { mqttLimits } from "../../bin/service.ts";
import { loadConfig } from "../../bridge/config.ts";
import {
  type MqttServer,
  peerCertificateId,
  remoteAddress,
  startMqttServer,
} from "../../broker/mqtt-server.ts";
import {
  type ParseResult,
  parseProxyHeader,
  readProxyHeader,
  V1_MAX_BYTES,
  V2_MAX_PAYLOAD_BYTES,
} from "../../broker/proxy-protocol.ts";
import { TrustedProxies } from "../../broker/trusted-proxies.ts";
import {
  createCertificateAuthority,
  issueCertificate,
  type KeyPair,
} from "../helpers/certificates.ts";
import { rawConnect } from "../helpers/device.ts";
import { silentLogger } from "../helpers/test-database.ts";

const SIGNATURE = Buffer.from("0d0a0d0a000d0a515549540a", "hex");

interface V2Options {
  command?: number;
  version?: number;
  family?: number;
  transport?: number;
  addresses?: Buffer;
  tlvs?: Buffer;
  /** Declared length, when it should not be the true one. */
  length?: number;
}

/** A v2 header: PROXY over TCP/IPv4 unless told otherwise. */
function v2(options: V2Options = {}): Buffer {
  const addresses =
    options.addresses ?? Buffer.concat([ipv4("203.0.113.7"), ipv4("10.0.0.2"), ports(51000, 1883)]);
  const tlvs = options.tlvs ?? Buffer.alloc(0);
  const fixed = Buffer.alloc(4);
  fixed[0] = ((options.version ?? 2) << 4) | (options.command ?? 1);
  fixed[1] = ((options.family ?? 1) << 4) | (options.transport ?? 1);
  fixed.writeUInt16BE(options.length ?? addresses.length + tlvs.length, 2);
  return Buffer.concat([SIGNATURE, fixed, addresses, tlvs]);
}

function ipv4(address: string): Buffer {
  return Buffer.from(address.split(".").map(Number));
}

function ipv6(groups: number[]): Buffer {
  const bytes = Buffer.alloc(16);
  for (const [index, group] of groups.entries()) bytes.writeUInt16BE(group, index * 2);
  return bytes;
}

function ports(source: number, destination: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt16BE(source, 0);
  bytes.writeUInt16BE(destination, 2);
  return bytes;
}

function tlv(type: number, value: Buffer): Buffer {
  const head = Buffer.alloc(3);
  head[0] = type;
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
}

const parse = (data: Buffer | string) =>
  parseProxyHeader(typeof data === "string" ? Buffer.from(data, "latin1") : data);

function reasonOf(result: ParseResult): string {
  expect(result.kind).toBe("invalid");
  return result.kind === "invalid" ? result.reason : "";
}

describe("a v1 (text) PROXY header", () => {
  it("names the client over TCP4 and ends after its \\r\\n", () => {
    const header = "PROXY TCP4 198.51.100.22 10.0.0.5 35646 1883\r\n";
    expect(parse(`${header}\x10\x0c`)).toEqual({
      kind: "header",
      length: header.length,
      header: {
        version: 1,
        source: { address: "198.51.100.22", port: 35646, family: "IPv4" },
        destination: { address: "10.0.0.5", port: 1883, family: "IPv4" },
      },
    });
  });

  it("names the client over TCP6, written as Node writes socket addresses", () => {
    const result = parse("PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::ffff:10.0.0.5 65535 0\r\n");
    expect(result).toMatchObject({
      kind: "header",
      header: {
        source: { address: "2001:db8::1", port: 65535, family: "IPv6" },
        destination: { address: "::ffff:10.0.0.5", port: 0, family: "IPv6" },
      },
    });
  });

  it("names no client for UNKNOWN, with or without the addresses that may follow", () => {
    expect(parse("PROXY UNKNOWN\r\n")).toEqual({
      kind: "header",
      header: { version: 1 },
      length: 15,
    });
    const long = "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    expect(parse(long)).toEqual({ kind: "header", header: { version: 1 }, length: long.length });
  });

  it("is incomplete at every byte short of its end, and whole however it is split", () => {
    const header = Buffer.from("PROXY TCP6 ::1 ::1 4000 1883\r\n", "latin1");
    for (let end = 0; end < header.length; end++) {
      expect(parse(header.subarray(0, end)), `${end} bytes`).toEqual({ kind: "incomplete" });
    }
    expect(parse(header)).toMatchObject({ kind: "header", length: header.length });
  });

  it("takes the longest line the specification allows, and no longer", () => {
    const address = `${"ffff:".repeat(7)}ffff`;
    const longest = `PROXY UNKNOWN ${address} ${address} 65535 65535\r\n`;
    expect(longest.length).toBe(V1_MAX_BYTES);
    expect(parse(longest)).toMatchObject({ kind: "header", length: V1_MAX_BYTES });
    expect(parse(`PROXY UNKNOWN ${"x".repeat(100)}`).kind).toBe("invalid");
    expect(reasonOf(parse(`PROXY UNKNOWN ${"x".repeat(92)}\r\n`))).toMatch(/first 107 bytes/);
  });

  it.each([
    ["an unknown protocol", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"],
    ["a missing field", "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"],
    ["an extra field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"],
    ["two spaces", "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"],
    ["an IPv6 address under TCP4", "PROXY TCP4 ::1 ::1 1 2\r\n"],
    ["an IPv4 address under TCP6", "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"],
    ["an octet over 255", "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"],
    ["a zero-padded octet", "PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n"],
    ["a host name", "PROXY TCP4 localhost 5.6.7.8 1 2\r\n"],
    ["a scoped IPv6 address", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"],
    ["a port over 65535", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"],
    ["a zero-padded port", "PROXY TCP4 1.2.3.4 5.6.7.8 01883 2\r\n"],
    ["a signed port", "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"],
    ["a lone \\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"],
    ["a control character", "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"],
    ["lower case", "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"],
  ])("is refused with %s", (_case, header) => {
    expect(parse(header).kind).toBe("invalid");
  });
});

describe("a v2 (binary) PROXY header", () => {
  it("names the client over TCP/IPv4", () => {
    const header = v2();
    expect(parse(Buffer.concat([header, Buffer.from([0x10, 0x0c])]))).toEqual({
      kind: "header",
      length: 28,
      header: {
        version: 2,
        source: { address: "203.0.113.7", port: 51000, family: "IPv4" },
        destination: { address: "10.0.0.2", port: 1883, family: "IPv4" },
      },
    });
  });

  it("names the client over TCP/IPv6, written as Node writes socket addresses", () => {
    const header = v2({
      family: 2,
      addresses: Buffer.concat([
        ipv6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42]),
        ipv6([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]),
        ports(1, 65535),
      ]),
    });
    expect(parse(header)).toEqual({
      kind: "header",
      length: 52,
      header: {
        version: 2,
        source: { address: "2001:db8::42", port: 1, family: "IPv6" },
        destination: { address: "::ffff:127.0.0.1", port: 65535, family: "IPv6" },
      },
    });
  });

  it("skips the TLVs its length counts", () => {
    const tlvs = Buffer.concat([
      tlv(0x05, Buffer.from("unique-id")),
      tlv(0x04, Buffer.alloc(0)),
      tlv(0x01, Buffer.from("mqtt")),
    ]);
    const header = v2({ tlvs });
    expect(parse(header)).toMatchObject({
      kind: "header",
      length: header.length,
      header: { source: { address: "203.0.113.7" } },
    });
  });

  it("names no client for LOCAL, whatever its address block holds", () => {
    expect(parse(v2({ command: 0, family: 0, transport: 0, addresses: Buffer.alloc(0) }))).toEqual({
      kind: "header",
      header: { version: 2 },
      length: 16,
    });
    expect(parse(v2({ command: 0 }))).toEqual({
      kind: "header",
      header: { version: 2 },
      length: 28,
    });
  });

  it("names no client for UNSPEC or UNIX addresses", () => {
    expect(parse(v2({ family: 0, transport: 0, addresses: Buffer.alloc(0) }))).toEqual({
      kind: "header",
      header: { version: 2 },
      length: 16,
    });
    expect(parse(v2({ family: 3, addresses: Buffer.alloc(216, 0x61) }))).toEqual({
      kind: "header",
      header: { version: 2 },
      length: 232,
    });
  });

  it("is incomplete at every byte short of its end, and whole however it is split", () => {
    const header = v2({ tlvs: tlv(0x05, Buffer.alloc(40, 0x41)) });
    for (let end = 0; end < header.length; end++) {
      expect(parse(header.subarray(0, end)), `${end} bytes`).toEqual({ kind: "incomplete" });
    }
    expect(parse(header)).toMatchObject({ kind: "header", length: header.length });
  });

  it("is refused as soon as its fixed part is wrong, before its declared length arrives", () => {
    expect(reasonOf(parse(v2({ length: V2_MAX_PAYLOAD_BYTES + 1 }).subarray(0, 16)))).toMatch(
      /over 2048/,
    );
    expect(reasonOf(parse(v2({ version: 1 }).subarray(0, 16)))).toMatch(/version 1/);
  });

  it.each([
    ["version 1 in the binary form", v2({ version: 1 })],
    ["version 3", v2({ version: 3 })],
    ["a command other than LOCAL or PROXY", v2({ command: 2 })],
    ["an unknown address family", v2({ family: 4 })],
    ["a datagram transport", v2({ transport: 2 })],
    ["an unknown transport", v2({ transport: 3 })],
    ["PROXY over IPv4 without a transport", v2({ transport: 0 })],
    ["a length too short for IPv4 addresses", v2({ length: 11 })],
    ["a length too short for IPv6 addresses", v2({ family: 2, length: 35 })],
    ["a length over the limit", v2({ length: V2_MAX_PAYLOAD_BYTES + 1 })],
    ["a corrupt signature", Buffer.concat([Buffer.from([0x0d, 0x0a, 0x0d, 0x0b]), v2()])],
  ])("is refused with %s", (_case, header) => {
    expect(parse(header).kind).toBe("invalid");
  });
});

describe("what is not a PROXY header", () => {
  it.each([
    ["an MQTT CONNECT", mqttPacket.generate({ cmd: "connect", clientId: "direct" })],
    ["an HTTP request", Buffer.from("GET / HTTP/1.1\r\n\r\n")],
    ["a TLS ClientHello", Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00])],
    ["a lone carriage return and a zero", Buffer.from([0x0d, 0x00])],
    ["a single wrong byte", Buffer.from([0x51])],
  ])("is refused from its first bytes: %s", (_case, data) => {
    expect(parse(data).kind).toBe("invalid");
  });

  it("is refused whatever random bytes it starts with", () => {
    let seed = 7;
    const next = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed >> 16;
    };
    for (let n = 0; n < 2000; n++) {
      const data = Buffer.from(Array.from({ length: 1 + (next() % 300) }, () => next() & 0xff));
      // Random bytes that happen to begin like a signature are left out.
      if (data[0] === 0x0d || data[0] === 0x50) continue;
      expect(parse(data).kind).toBe("invalid");
    }
  });
});

/** A connected socket pair on loopback: what `client` writes, `server` reads. */
async function socketPair(): Promise<{ client: net.Socket; server: net.Socket; close(): void }> {
  const listener = net.createServer();
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  const accepted = new Promise<net.Socket>((resolve) => listener.once("connection", resolve));
  const client = net.connect((listener.address() as net.AddressInfo).port, "127.0.0.1");
  client.on("error", () => {});
  const server = await accepted;
  server.on("error", () => {});
  return {
    client,
    server,
    close: () => {
      client.destroy();
      server.destroy();
      listener.close();
    },
  };
}

/** Reads `bytes` from a socket left paused. */
function readAll(socket: net.Socket, bytes: number): Promise<Buffer> {
  socket.resume();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let length = 0;
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      if (length >= bytes) resolve(Buffer.concat(chunks));
    });
  });
}

describe("reading the header from a socket", () => {
  it("waits for a header split over writes and leaves what follows it to be read", async () => {
    const pair = await socketPair();
    const header = v2({ tlvs: tlv(0x05, Buffer.from("id-1")) });
    const rest = Buffer.from("the MQTT that follows");
    const reading = readProxyHeader(pair.server, 5000);
    pair.client.write(header.subarray(0, 5));
    await sleep(20);
    pair.client.write(header.subarray(5, 17));
    await sleep(20);
    pair.client.write(Buffer.concat([header.subarray(17), rest]));
    expect((await reading)?.source?.address).toBe("203.0.113.7");
    expect(pair.server.isPaused()).toBe(true);
    expect((await readAll(pair.server, rest.length)).toString()).toBe(rest.toString());
    pair.close();
  });

  it("rejects a malformed header at once", async () => {
    const pair = await socketPair();
    const reading = readProxyHeader(pair.server, 5000);
    pair.client.write("PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n");
    await expect(reading).rejects.toThrow(/malformed address/);
    pair.close();
  });

  it("rejects a header that is not complete in time", async () => {
    const pair = await socketPair();
    const started = Date.now();
    const reading = readProxyHeader(pair.server, 200);
    pair.client.write("PROXY TCP4 1.2.3.4");
    await expect(reading).rejects.toThrow(/within 200 ms \(18 bytes read\)/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    pair.close();
  });

  it("resolves with no header when the connection closes first", async () => {
    const pair = await socketPair();
    const reading = readProxyHeader(pair.server, 5000);
    pair.client.end("PROXY ");
    expect(await reading).toBeUndefined();
    pair.close();
  });
});

/**
 * MQTT over a socket that first sends `preamble`, in the same write as the
 * CONNECT (the listener must hand aedes what follows the header): the
 * CONNACK code, or undefined when closed without one.
 */
function connectWith(
  port: number,
  preamble: Buffer | string,
  clientId: string,
  localAddress = "127.0.0.1",
): Promise<{ code: number | undefined; socket: net.Socket }> {
  return rawConnect({ port, preamble, clientId, localAddress });
}

function v1(source: string, port = 40000): string {
  return `PROXY TCP4 ${source} 127.0.0.1 ${port} 1883\r\n`;
}

describe("the MQTTS listener with proxyProtocol", () => {
  const seen = new Map<string, { address: string; certificate: string | undefined }>();
  let dir: string;
  let ca: KeyPair;
  let device: KeyPair;
  let server: MqttServer;
  const sockets: net.Socket[] = [];
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-proxied-tls-"));
    ca = await createCertificateAuthority(dir, "ca");
    const certificate = await issueCertificate(ca, dir, "server", "localhost", "server");
    device = await issueCertificate(ca, dir, "device", "dev-tls-proxied", "client");
    server = await startMqttServer(
      {
        host: "127.0.0.1",
        port: 0,
        tls: { port: 0, ...certificate, caFile: ca.certFile },
        trustedProxies: new TrustedProxies(["127.0.0.1"]),
        proxyProtocol: true,
        limits: { ...mqttLimits(loadConfig({})), connectTimeoutMs: 2000 },
      },
      {
        authenticate: (client, _username, _password, callback) => {
          seen.set(client.id, {
            address: remoteAddress(client),
            certificate: peerCertificateId(client),
          });
          callback(null, true);
        },
      },
      silentLogger,
    );
  });
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await server?.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** The CONNACK's code to a CONNECT over TLS after `preamble`; undefined when the connection was closed instead. */
  async function connackOverTls(
    preamble: string,
    localAddress: string,
    clientId: string,
  ): Promise<number | undefined> {
    const [caCert, cert, key] = await Promise.all(
      [ca.certFile, device.certFile, device.keyFile].map((file) => fs.readFile(file)),
    );
    const raw = net.connect({ port: server.tlsPort ?? 0, host: "127.0.0.1", localAddress });
    raw.on("error", () => {});
    sockets.push(raw);
    await once(raw, "connect");
    raw.write(preamble);
    const secure = tls.connect({ socket: raw, servername: "localhost", ca: caCert, cert, key });
    secure.on("error", () => {});
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    return new Promise((resolve) => {
      parser.on("packet", (packet) => resolve((packet as mqttPacket.IConnackPacket).returnCode));
      secure.on("data", (data) => parser.parse(data));
      // The server may close the connection before TLS starts on it.
      for (const socket of [raw, secure]) socket.once("close", () => resolve(undefined));
      secure.once("secureConnect", () =>
        secure.write(
          mqttPacket.generate({
            cmd: "connect",
            protocolId: "MQTT",
            protocolVersion: 4,
            clean: true,
            clientId,
            keepalive: 30,
          }),
        ),
      );
    });
  }

  it("reads the header before TLS, and keeps the device's certificate identity", async () => {
    expect(await connackOverTls(v1("198.51.100.50"), "127.0.0.1", "tls-proxied")).toBe(0);
    expect(seen.get("tls-proxied")).toEqual({
      address: "198.51.100.50",
      certificate: "dev-tls-proxied",
    });
  });

  it("closes a TLS connection from an untrusted peer, or one that starts with TLS", async () => {
    expect(await connackOverTls(v1("198.51.100.51"), "127.0.0.6", "tls-around")).toBeUndefined();
    expect(await connackOverTls("", "127.0.0.1", "tls-headerless")).toBeUndefined();
    expect(seen.has("tls-around") || seen.has("tls-headerless")).toBe(false);
  });
});

describe("MQTT over WebSockets behind a trusted proxy", () => {
  const seen = new Map<string, unknown>();
  let server: MqttServer;
  const clients: mqtt.MqttClient[] = [];
  beforeAll(async () => {
    server = await startMqttServer(
      {
        host: "127.0.0.1",
        port: 0,
        wsPort: 0,
        trustedProxies: new TrustedProxies(["127.0.0.1"]),
        limits: mqttLimits(loadConfig({})),
      },
      {
        authenticate: (client, _username, _password, callback) => {
          seen.set(client.id, {
            address: remoteAddress(client),
            connDetails: (client as unknown as { connDetails: unknown }).connDetails,
          });
          callback(null, true);
        },
      },
      silentLogger,
    );
  });
  afterAll(async () => {
    for (const client of clients) client.end(true);
    await server?.close();
  });
  const connect = async (clientId: string, localAddress: string, forwardedFor?: string) => {
    const client = await mqtt.connectAsync(`ws://127.0.0.1:${server.wsPort}/mqtt`, {
      clientId,
      reconnectPeriod: 0,
      wsOptions: {
        localAddress,
        headers: forwardedFor ? { "X-Forwarded-For": forwardedFor } : {},
      },
    });
    clients.push(client);
    return seen.get(clientId);
  };

  it("takes the client's address from X-Forwarded-For when the upgrade comes from the proxy", async () => {
    expect(await connect("ws-proxied", "127.0.0.1", "203.0.113.5, 198.51.100.21")).toEqual({
      address: "198.51.100.21",
      connDetails: { ipAddress: "198.51.100.21", port: 0, ipFamily: 4 },
    });
    expect(await connect("ws-direct", "127.0.0.1")).toEqual({
      address: "127.0.0.1",
      connDetails: undefined,
    });
  });

  it("ignores X-Forwarded-For from any other peer", async () => {
    expect(await connect("ws-spoofer", "127.0.0.5", "198.51.100.22")).toEqual({
      address: "127.0.0.5",
      connDetails: undefined,
    });
  });
});

describe("the MQTT listener with proxyProtocol", () => {
  const seen = new Map<string, { address: string; connDetails: unknown }>();
  let server: MqttServer;
  let direct: MqttServer;
  const sockets: net.Socket[] = [];
  beforeAll(async () => {
    const limits = {
      ...mqttLimits(loadConfig({})),
      connectTimeoutMs: 300,
      maxPerAddress: 2,
      maxConnections: 8,
    };
    const authenticate = (
      client: Client,
      _username: unknown,
      _password: unknown,
      callback: (error: null, success: boolean) => void,
    ) => {
      seen.set(client.id, {
        address: remoteAddress(client),
        connDetails: (client as unknown as { connDetails: unknown }).connDetails,
      });
      callback(null, true);
    };
    server = await startMqttServer(
      {
        host: "127.0.0.1",
        port: 0,
        // The load balancers: 127.0.0.1, and 127.0.0.2 and .3 standing for two more.
        trustedProxies: new TrustedProxies(["127.0.0.1", "127.0.0.2/31"]),
        proxyProtocol: true,
        limits,
      },
      { authenticate },
      silentLogger,
    );
    direct = await startMqttServer(
      { host: "127.0.0.1", port: 0, limits },
      { authenticate },
      silentLogger,
    );
  });
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await server?.close();
    await direct?.close();
  });
  const keep = (attempt: { code: number | undefined; socket: net.Socket }) => {
    sockets.push(attempt.socket);
    return attempt.code;
  };

  it("takes the client's address from a v1 or v2 header, for the hooks and aedes' connDetails", async () => {
    expect(keep(await connectWith(server.port, v1("198.51.100.9", 40001), "via-v1"))).toBe(0);
    expect(seen.get("via-v1")).toEqual({
      address: "198.51.100.9",
      connDetails: { ipAddress: "198.51.100.9", port: 40001, ipFamily: 4 },
    });
    expect(keep(await connectWith(server.port, v2(), "via-v2"))).toBe(0);
    expect(seen.get("via-v2")?.address).toBe("203.0.113.7");
  });

  it("counts connections per address by the header's address, not the proxy's", async () => {
    const before = server.gate.refused.address_connections;
    expect(keep(await connectWith(server.port, v1("198.51.100.9"), "second-of-9"))).toBe(0);
    // The limit is two per address: this third one from .9 is refused at the door…
    expect(keep(await connectWith(server.port, v1("198.51.100.9"), "third-of-9"))).toBeUndefined();
    expect(server.gate.refused.address_connections).toBe(before + 1);
    // …while other clients behind the same proxy address are not.
    expect(keep(await connectWith(server.port, v1("198.51.100.10"), "first-of-10"))).toBe(0);
  });

  it("uses the proxy's own address for LOCAL and UNKNOWN headers", async () => {
    const local = v2({ command: 0, family: 0, transport: 0, addresses: Buffer.alloc(0) });
    expect(keep(await connectWith(server.port, local, "local", "127.0.0.3"))).toBe(0);
    expect(seen.get("local")).toEqual({ address: "127.0.0.3", connDetails: undefined });
    expect(keep(await connectWith(server.port, "PROXY UNKNOWN\r\n", "unknown", "127.0.0.3"))).toBe(
      0,
    );
    expect(seen.get("unknown")?.address).toBe("127.0.0.3");
  });

  it("closes a connection that starts with MQTT, garbage or a malformed header, before any CONNACK", async () => {
    for (const preamble of ["", "GET / HTTP/1.1\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"]) {
      expect(keep(await connectWith(server.port, preamble, "spoofer")), preamble).toBeUndefined();
    }
    expect(seen.has("spoofer")).toBe(false);
    const device = mqtt.connect(`mqtt://127.0.0.1:${server.port}`, { reconnectPeriod: 0 });
    const outcome = await new Promise((resolve) => {
      device.once("connect", () => resolve("connected"));
      device.once("close", () => resolve("closed"));
    });
    device.end(true);
    expect(outcome).toBe("closed");
  });

  it("closes a connection from a peer outside the trusted proxies, however good its header", async () => {
    const before = server.gate.refused.untrusted_proxy;
    const header = v1("198.51.100.66");
    expect(
      keep(await connectWith(server.port, header, "around-proxy", "127.0.0.9")),
    ).toBeUndefined();
    expect(seen.has("around-proxy")).toBe(false);
    expect(server.gate.refused.untrusted_proxy).toBe(before + 1);
    // The same header through a trusted proxy is taken.
    expect(keep(await connectWith(server.port, header, "through-proxy", "127.0.0.2"))).toBe(0);
    expect(seen.get("through-proxy")?.address).toBe("198.51.100.66");
  });

  it("closes a connection that sends no header within the connect timeout", async () => {
    const socket = net.connect(server.port, "127.0.0.1");
    socket.on("error", () => {});
    const started = Date.now();
    await new Promise((resolve) => socket.once("close", resolve));
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it("closes a connection whose CONNECT has not come within the connect timeout of its opening, the header's wait included", async () => {
    const socket = net.connect(server.port, "127.0.0.1");
    socket.on("error", () => {});
    const started = Date.now();
    await new Promise((resolve) => socket.once("connect", resolve));
    await sleep(250);
    socket.write(v1("198.51.100.40"));
    await new Promise((resolve) => socket.once("close", resolve));
    // 300 ms from the opening, not 300 ms from the header.
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(Date.now() - started).toBeLessThan(500);
  });

  it("counts connections still sending their header towards the total", async () => {
    for (const socket of sockets.splice(0)) socket.destroy();
    await vi.waitFor(() => expect(server.gate.connections).toBe(0));
    const waiting = Array.from({ length: 8 }, () => {
      const socket = net.connect(server.port, "127.0.0.1");
      socket.on("error", () => {});
      sockets.push(socket);
      return new Promise((resolve) => socket.once("connect", resolve));
    });
    await Promise.all(waiting);
    await vi.waitFor(() => expect(server.gate.connections).toBe(8));
    const before = server.gate.refused.connections;
    expect(keep(await connectWith(server.port, v2(), "ninth"))).toBeUndefined();
    expect(server.gate.refused.connections).toBe(before + 1);
    for (const socket of sockets.splice(0)) socket.destroy();
    await vi.waitFor(() => expect(server.gate.connections).toBe(0));
  });

  it("is off unless asked for: a header is then not MQTT, and no client picks its address", async () => {
    expect(keep(await connectWith(direct.port, v1("198.51.100.77"), "spoof-direct"))).toBe(
      undefined,
    );
    expect(keep(await connectWith(direct.port, "", "plain", "127.0.0.4"))).toBe(0);
    expect(seen.get("plain")).toEqual({ address: "127.0.0.4", connDetails: undefined });
  });
});
