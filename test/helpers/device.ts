import net from "node:net";
import mqtt from "mqtt";
import mqttPacket from "mqtt-packet";

export type Device = mqtt.MqttClient;

export function connectDevice(
  port: number,
  clientId: string,
  options: mqtt.IClientOptions = {},
): Promise<Device> {
  return mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
    clientId,
    protocolVersion: 4,
    reconnectPeriod: 0,
    ...options,
  });
}

/**
 * Connects once: the CONNACK code of a refusal, or undefined when the
 * connection was accepted (it is closed again at once).
 */
export function connackRefusal(
  url: string,
  options: mqtt.IClientOptions,
): Promise<number | undefined> {
  return mqtt
    .connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...options })
    .then(
      async (client) => {
        await client.endAsync();
        return undefined;
      },
      (error: { code?: number }) => error.code,
    );
}

/** Publishes with QoS 1 and resolves on its PUBACK. */
export async function publishAcked(
  device: Device,
  topic: string,
  payload: string | Buffer,
): Promise<void> {
  await device.publishAsync(topic, payload, { qos: 1 });
}

export function reading(device: string, n: number, ts = Date.now()): string {
  return JSON.stringify({ event_id: `${device}-${n}`, ts, temperature: 20 + (n % 7) });
}

export function nextMessage(device: Device): Promise<{ topic: string; payload: Buffer }> {
  return new Promise((resolve) =>
    device.once("message", (topic, payload) => resolve({ topic, payload })),
  );
}

export function closed(device: Device): Promise<void> {
  return new Promise((resolve) => device.once("close", () => resolve()));
}

/**
 * Publishes `count` readings with QoS 1, at most `inflight` unacknowledged
 * at a time, and records each PUBACK with the time it arrived.
 */
export class Stream {
  readonly acked = new Map<string, number>();
  /** Publish → PUBACK, in milliseconds, in acknowledgement order. */
  readonly latencies: number[] = [];
  private sent = 0;

  constructor(
    private readonly device: Device,
    private readonly name: string,
    private readonly count: number,
    private readonly inflight: number,
    /** A device sampling at a fixed rate: reading n is due `offsetMs + n × intervalMs` after the start. */
    private readonly intervalMs = 0,
    /** Where in the interval this device samples, so that a fleet's readings do not all fall due at once. */
    private readonly offsetMs = 0,
  ) {}

  /** Resolves once every reading is acknowledged. */
  run(): Promise<void> {
    const ts = Date.now();
    const start = ts + this.offsetMs;
    return new Promise((resolve, reject) => {
      const next = () => {
        if (this.acked.size === this.count) return resolve();
        while (this.sent < this.count && this.sent - this.acked.size < this.inflight) {
          const n = this.sent++;
          const eventId = `${this.name}-${n}`;
          const sentAt = performance.now();
          this.device.publish(
            `telemetry/${this.name}/env`,
            reading(this.name, n, ts + n),
            { qos: 1 },
            (error) => {
              if (error) return reject(error);
              this.acked.set(eventId, Date.now());
              this.latencies.push(performance.now() - sentAt);
              if (this.intervalMs > 0) {
                setTimeout(next, Math.max(0, start + this.sent * this.intervalMs - Date.now()));
              } else {
                next();
              }
            },
          );
        }
      };
      setTimeout(next, this.offsetMs);
    });
  }
}

export interface RawConnectOptions {
  port: number;
  /** The address the connection comes from: any 127.x.y.z stands for another machine. */
  localAddress: string;
  clientId: string;
  keepalive?: number;
  username?: string;
  password?: string;
  /** Bytes sent before the CONNECT in the same write, such as a PROXY protocol header. */
  preamble?: Buffer | string;
}

/**
 * A CONNECT over a plain socket, from `localAddress` (which mqtt.js cannot
 * set): the CONNACK's return code, or undefined when the connection was
 * closed without one. The socket is left open.
 */
export async function rawConnect(
  options: RawConnectOptions,
): Promise<{ code: number | undefined; socket: net.Socket }> {
  const socket = net.connect({
    port: options.port,
    host: "127.0.0.1",
    localAddress: options.localAddress,
  });
  socket.on("error", () => {});
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const code = new Promise<number | undefined>((resolve) => {
    parser.on("packet", (packet) => resolve((packet as mqttPacket.IConnackPacket).returnCode));
    socket.on("data", (data) => parser.parse(data));
    socket.once("close", () => resolve(undefined));
  });
  const connect = mqttPacket.generate({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 4,
    clean: true,
    clientId: options.clientId,
    keepalive: options.keepalive ?? 30,
    username: options.username,
    password: options.password === undefined ? undefined : Buffer.from(options.password),
  });
  socket.write(Buffer.concat([Buffer.from(options.preamble ?? ""), connect]));
  return { code: await code, socket };
}
