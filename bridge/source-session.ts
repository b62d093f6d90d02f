import net from "node:net";
import tls from "node:tls";
import mqttPacket, { type Packet } from "mqtt-packet";
import type { Receipt } from "./batch-writer.ts";
import type { Logger } from "./logger.ts";
import type { RawMessage } from "./telemetry-message.ts";

/** Where the source's messages go: the receipt is told once a message is committed. */
export interface SourceIngest {
  submit(message: RawMessage, receipt: Receipt): void;
}

export interface SessionOptions {
  url: URL;
  /** The URL as logged, without its password. */
  shown: string;
  clientId: string;
  username: string | undefined;
  password: string | undefined;
  ca: Buffer | undefined;
  protocolVersion: 4 | 5;
  /** Subscribed at QoS 1 on every connection. */
  subscriptions: readonly string[];
  /** Subscribed at QoS 0, each alone, so that a broker refusing one refuses nothing else. */
  watches: readonly string[];
  /** Messages received and not yet acknowledged, at most: past it the socket is paused. */
  window: number;
  bridged(topic: string): boolean;
  /** Messages on a watched topic. */
  watched(topic: string, payload: Buffer): void;
}

/** A session the broker keeps for a day while the service is away (MQTT 5). */
const SESSION_EXPIRY_S = 86_400;
const KEEPALIVE_S = 30;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 30_000;
const CLOSE_TIMEOUT_MS = 2000;
const SUBSCRIBE_ID = 1;
const WATCH_ID_BASE = 2;

const CONNACK_REASONS: Record<number, string> = {
  1: "unacceptable protocol version",
  2: "client id rejected",
  3: "server unavailable",
  4: "bad user name or password",
  5: "not authorized",
  128: "unspecified error",
  132: "unsupported protocol version",
  133: "client id not valid",
  134: "bad user name or password",
  135: "not authorized",
  136: "server unavailable",
  137: "server busy",
  138: "banned",
};

/**
 * One connection to the source broker, in a persistent session, that keeps
 * many QoS 1 messages in flight: each is handed to the writer as it arrives,
 * and the PUBACKs go back in the order the messages came (as MQTT requires)
 * once each is committed. A message that could not be committed is never
 * acknowledged: the connection is dropped, and the broker delivers it again
 * on the next one.
 */
export class SourceSession {
  private socket: net.Socket | undefined;
  /** Bumped on every connection: receipts of an earlier one acknowledge nothing. */
  private generation = 0;
  /**
   * Packet ids of the QoS 1 messages received on this connection and not yet
   * acknowledged, oldest first, and which of them are committed. `base` is
   * the sequence number of `ids[0]` on the connection.
   */
  private ids: number[] = [];
  private committed: boolean[] = [];
  private base = 0;
  private sessionPresent = false;
  private flushing = false;
  private retryMs = RECONNECT_MIN_MS;
  private timer: NodeJS.Timeout | undefined;
  private pinger: NodeJS.Timeout | undefined;
  private lastHeardAt = 0;
  private closing = false;
  private settledWhenIdle: (() => void) | undefined;

  constructor(
    private readonly options: SessionOptions,
    private readonly ingest: SourceIngest,
    private readonly logger: Logger,
  ) {}

  start(): void {
    this.connect();
  }

  /** Messages received and not yet acknowledged. */
  get pending(): number {
    return this.ids.length;
  }

  /**
   * Stops reading, waits for the messages received to be committed and
   * acknowledged, then disconnects, keeping the session at the broker.
   */
  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.timer);
    const socket = this.socket;
    if (!socket || socket.destroyed) return;
    socket.pause();
    if (this.pending > 0) await new Promise<void>((resolve) => (this.settledWhenIdle = resolve));
    if (socket.destroyed) return;
    const closed = new Promise((resolve) => socket.once("close", resolve));
    socket.end(mqttPacket.generate({ cmd: "disconnect" }, this.packetOptions));
    const timeout = setTimeout(() => socket.destroy(), CLOSE_TIMEOUT_MS);
    await closed;
    clearTimeout(timeout);
  }

  private get packetOptions() {
    return { protocolVersion: this.options.protocolVersion };
  }

  private connect(): void {
    const { url } = this.options;
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    const secure = url.protocol === "mqtts:";
    const port = Number(url.port) || (secure ? 8883 : 1883);
    const socket = secure
      ? tls.connect({
          host,
          port,
          ca: this.options.ca,
          servername: net.isIP(host) ? undefined : host,
        })
      : net.connect({ host, port });
    socket.setNoDelay(true);
    this.socket = socket;
    const generation = ++this.generation;
    this.ids = [];
    this.committed = [];
    this.base = 0;
    this.flushing = false;
    const parser = mqttPacket.parser(this.packetOptions);
    parser.on("packet", (packet: Packet) => this.receive(packet, generation));
    parser.on("error", (error: Error) => this.drop(`unreadable packet: ${error.message}`));
    socket.on(secure ? "secureConnect" : "connect", () => {
      this.lastHeardAt = Date.now();
      this.send(this.connectPacket());
    });
    socket.on("data", (chunk: Buffer) => {
      this.lastHeardAt = Date.now();
      parser.parse(chunk);
    });
    socket.on("error", (error) =>
      this.logger.warn({ source: this.options.shown, error: error.message }, "source broker"),
    );
    socket.on("close", () => this.closed(generation));
  }

  private connectPacket(): Packet {
    const { options } = this;
    const username = options.username ?? (decodeURIComponent(options.url.username) || undefined);
    const password = options.password ?? (decodeURIComponent(options.url.password) || undefined);
    return {
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: options.protocolVersion,
      clientId: options.clientId,
      clean: false,
      keepalive: KEEPALIVE_S,
      username,
      password: password === undefined ? undefined : Buffer.from(password),
      properties:
        options.protocolVersion === 5
          ? {
              sessionExpiryInterval: SESSION_EXPIRY_S,
              receiveMaximum: Math.min(options.window, 65_535),
            }
          : undefined,
    };
  }

  private receive(packet: Packet, generation: number): void {
    switch (packet.cmd) {
      case "publish":
        this.publish(packet, generation);
        return;
      case "connack":
        this.connected(packet.sessionPresent, packet.reasonCode ?? packet.returnCode ?? 0);
        return;
      case "suback":
        this.subscribed(packet.messageId as number, packet.granted as number[]);
        return;
      case "disconnect":
        this.drop(`the broker disconnected us (reason ${packet.reasonCode ?? 0})`);
        return;
      default:
        return;
    }
  }

  private connected(sessionPresent: boolean, code: number): void {
    if (code !== 0) {
      this.logger.error(
        {
          source: this.options.shown,
          clientId: this.options.clientId,
          code,
          reason: CONNACK_REASONS[code] ?? "refused",
        },
        "the source broker refused the connection",
      );
      this.socket?.destroy();
      return;
    }
    this.retryMs = RECONNECT_MIN_MS;
    this.sessionPresent = sessionPresent;
    this.send({
      cmd: "subscribe",
      messageId: SUBSCRIBE_ID,
      subscriptions: this.options.subscriptions.map((topic) => ({ topic, qos: 1 })),
    });
    for (const [n, topic] of this.options.watches.entries()) {
      this.send({
        cmd: "subscribe",
        messageId: WATCH_ID_BASE + n,
        subscriptions: [{ topic, qos: 0 }],
      });
    }
    clearInterval(this.pinger);
    this.pinger = setInterval(() => this.ping(), (KEEPALIVE_S * 1000) / 2);
    this.pinger.unref();
  }

  private subscribed(messageId: number, granted: number[]): void {
    const { shown, clientId, subscriptions, watches } = this.options;
    if (messageId !== SUBSCRIBE_ID) {
      const watch = watches[messageId - WATCH_ID_BASE];
      if ((granted[0] ?? 128) >= 128)
        this.logger.info(
          { source: shown, topic: watch },
          "the source broker does not publish it to us",
        );
      return;
    }
    const refused = subscriptions.filter((_, n) => (granted[n] ?? 128) >= 128);
    if (refused.length > 0) {
      this.logger.error(
        { source: shown, clientId, refused },
        "the source broker refused the subscriptions: nothing is received from it",
      );
      return;
    }
    this.logger.info(
      { source: shown, clientId, subscriptions, sessionPresent: this.sessionPresent },
      "subscribed to the source broker",
    );
  }

  private publish(packet: mqttPacket.IPublishPacket, generation: number): void {
    const { topic } = packet;
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    if (packet.qos === 0) {
      if (this.options.watches.includes(topic)) this.options.watched(topic, payload);
      else if (this.options.bridged(topic)) this.ingest.submit(message(topic, payload), IGNORED);
      return;
    }
    if (packet.qos !== 1) {
      this.drop(`QoS ${packet.qos} delivered on a QoS 1 subscription`);
      return;
    }
    const sequence = this.base + this.ids.length;
    this.ids.push(packet.messageId as number);
    this.committed.push(false);
    if (this.pending >= this.options.window) this.socket?.pause();
    if (!this.options.bridged(topic)) {
      this.acknowledge(sequence, generation);
      return;
    }
    this.ingest.submit(message(topic, payload), {
      settle: () => this.acknowledge(sequence, generation),
      fail: (error) => {
        if (generation !== this.generation || this.closing) return;
        this.logger.warn(
          { source: this.options.shown, error: (error as Error).message },
          "a message from the source broker could not be committed; reconnecting so that it is delivered again",
        );
        this.socket?.destroy();
      },
    });
  }

  /** Marks a message committed; the PUBACKs now due go out together, once the batch has settled. */
  private acknowledge(sequence: number, generation: number): void {
    if (generation !== this.generation) return;
    this.committed[sequence - this.base] = true;
    if (sequence !== this.base || this.flushing) return;
    this.flushing = true;
    queueMicrotask(() => this.flush(generation));
  }

  /** Sends the PUBACKs of the committed messages at the head, in order. */
  private flush(generation: number): void {
    this.flushing = false;
    if (generation !== this.generation || this.socket?.destroyed) return;
    let due = 0;
    while (due < this.ids.length && this.committed[due]) due++;
    const acks = this.ids
      .slice(0, due)
      .map((messageId) => mqttPacket.generate({ cmd: "puback", messageId }, this.packetOptions));
    this.ids.splice(0, due);
    this.committed.splice(0, due);
    this.base += due;
    this.socket?.write(acks.length === 1 ? (acks[0] as Buffer) : Buffer.concat(acks));
    if (this.pending < this.options.window && !this.closing) this.socket?.resume();
    if (this.pending === 0) this.settledWhenIdle?.();
  }

  private ping(): void {
    if (Date.now() - this.lastHeardAt > KEEPALIVE_S * 1500) {
      this.drop("the source broker stopped answering");
      return;
    }
    this.send({ cmd: "pingreq" });
  }

  private send(packet: Packet): void {
    this.socket?.write(mqttPacket.generate(packet, this.packetOptions));
  }

  private drop(reason: string): void {
    this.logger.warn({ source: this.options.shown, reason }, "dropping the source connection");
    this.socket?.destroy();
  }

  private closed(generation: number): void {
    if (generation !== this.generation) return;
    clearInterval(this.pinger);
    // What was not acknowledged stays with the broker and comes again.
    this.settledWhenIdle?.();
    if (this.closing) return;
    this.logger.warn(
      { source: this.options.shown, clientId: this.options.clientId, retryInMs: this.retryMs },
      "source broker unreachable; reconnecting",
    );
    this.timer = setTimeout(() => this.connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, RECONNECT_MAX_MS);
  }
}

function message(topic: string, payload: Buffer): RawMessage {
  return { topic, payload, clientId: null, receivedAtMs: Date.now() };
}

/** QoS 0 messages are acknowledged to nobody. */
const IGNORED: Receipt = { settle: () => {}, fail: () => {} };
