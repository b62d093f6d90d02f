import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import { Duplex, pipeline } from "node:stream";
import tls from "node:tls";
import { Aedes, type AedesOptions, type Client } from "aedes";
import { createWebSocketStream, WebSocketServer } from "ws";
import type { Logger } from "../bridge/logger.ts";
import { ConnectionGate, type ConnectionLimits } from "./connection-gate.ts";
import { PacketGuard } from "./packet-guard.ts";
import { type ProxyAddress, readProxyHeader } from "./proxy-protocol.ts";
import { TrustedProxies } from "./trusted-proxies.ts";

export interface MqttServerOptions {
  /** Address every listener binds to. */
  host: string;
  /** MQTT over TCP; 0 picks a free port. */
  port: number;
  /**
   * The load balancers allowed to name a client's address: in the PROXY
   * protocol header (`proxyProtocol`), and in a WebSocket upgrade's
   * X-Forwarded-For. Unset: none.
   */
  trustedProxies?: TrustedProxies;
  /**
   * The TCP and TLS listeners are behind `trustedProxies`, which start each
   * connection with a PROXY protocol header (v1 or v2): the client's
   * address is read from it. A connection without one, or from any other
   * peer, is closed.
   */
  proxyProtocol?: boolean;
  /** MQTT over TLS on its own port; also turns the WebSocket listener into WSS. */
  tls?: TlsListenerOptions;
  /** MQTT over WebSockets on path /mqtt; unset, no WebSocket listener. */
  wsPort?: number;
  /**
   * Where aedes keeps live messages, sessions and retained messages, shared
   * with other processes (see shared-state.ts); unset, in this process's memory.
   */
  shared?: Pick<AedesOptions, "mq" | "persistence" | "heartbeatInterval">;
  /** What every listener allows a connection. */
  limits: MqttLimits;
}

export interface MqttLimits extends ConnectionLimits {
  /** Largest packet read; a larger one closes its connection before it is buffered. */
  maxPacketBytes: number;
  /** Time from a connection's opening to its CONNECT. */
  connectTimeoutMs: number;
  /**
   * Longest keepalive a CONNECT may ask for, in seconds; 0 (none) counts as
   * longer. aedes drops a client silent for 1.5 × its keepalive, so this
   * bounds how long a dead connection is held.
   */
  maxKeepaliveS: number;
}

export interface TlsListenerOptions {
  port: number;
  /** PEM certificate chain and key, re-read when the files change. */
  certFile: string;
  keyFile: string;
  /** PEM CA that signs client certificates: one is asked for, never required. */
  caFile?: string;
}

export interface MqttServer {
  broker: Aedes;
  port: number;
  tlsPort?: number;
  wsPort?: number;
  /** True while the TCP listener accepts connections. */
  readonly listening: boolean;
  /** Connections held and refused at the door, for metrics. */
  gate: ConnectionGate;
  /** Connections closed for a packet over the size limit. */
  readonly oversizedPackets: number;
  /** Stops accepting connections on every listener; connected clients stay. */
  stopAccepting(): void;
  /**
   * Re-reads the certificate, key and CA files for new connections; keeps
   * the current ones when they are unusable. Nothing to do without TLS.
   */
  reloadCertificates(): void;
  /** Disconnects every client and closes the broker. */
  close(): Promise<void>;
}

export class PortInUseError extends Error {
  override name = "PortInUseError";
}

const WEBSOCKET_PATH = "/mqtt";
/** The subprotocols of MQTT 3.1.1 and 3.1, as mosquitto accepts them. */
const WEBSOCKET_PROTOCOLS = ["mqtt", "mqttv3.1"];
const CERTIFICATE_POLL_MS = 1000;

/**
 * aedes (MQTT 3.1 and 3.1.1) over TCP, and over TLS and WebSockets when
 * asked; port 0 picks a free one.
 */
export async function startMqttServer(
  options: MqttServerOptions,
  hooks: Pick<
    AedesOptions,
    "preConnect" | "authenticate" | "authorizePublish" | "authorizeSubscribe" | "authorizeForward"
  >,
  logger: Logger,
): Promise<MqttServer> {
  const { maxKeepaliveS } = options.limits;
  const broker = await Aedes.createBroker({
    ...hooks,
    ...options.shared,
    connectTimeout: options.limits.connectTimeoutMs,
    preConnect(client, packet, callback) {
      const keepalive = packet.keepalive ?? 0;
      if (keepalive === 0 || keepalive > maxKeepaliveS) {
        logger.warn(
          { clientId: packet.clientId, keepalive, limit: maxKeepaliveS },
          "keepalive over MQTT_MAX_KEEPALIVE_S: connection closed",
        );
        callback(new Error(`keepalive ${keepalive} s is not 1 to ${maxKeepaliveS} s`), false);
        return;
      }
      if (hooks.preConnect) hooks.preConnect(client, packet, callback);
      else callback(null, true);
    },
  });
  const gate = new ConnectionGate(options.limits);
  const proxies = options.trustedProxies ?? new TrustedProxies([]);
  let oversizedPackets = 0;

  /**
   * Every listener's connections come through here: refused at the door
   * past a limit, otherwise handed to aedes behind a packet-size guard.
   * `socket` carries the peer's address (and certificate), unless a PROXY
   * protocol header or a trusted proxy's X-Forwarded-For named the client
   * (`origin`); `stream` is what MQTT is read from (the socket itself, or a
   * stream over a WebSocket). A connection whose CONNECT is due earlier
   * than aedes' connect timeout from now (the header took part of it)
   * gives its `connectBy` time.
   */
  const admit = (
    socket: net.Socket,
    stream: Duplex,
    request?: http.IncomingMessage,
    origin?: ProxyAddress,
    connectBy?: number,
  ) => {
    const address = origin?.address ?? socket.remoteAddress ?? "unknown";
    const refusal = gate.admit(address);
    if (refusal) {
      logger.warn(
        { address, refusal, connections: gate.connections },
        "connection refused: over a limit",
      );
      stream.destroy();
      return;
    }
    socket.once("close", () => gate.release(address));
    const guard = new PacketGuard(options.limits.maxPacketBytes, (packet) => {
      oversizedPackets++;
      logger.warn(
        { clientId: client.id, address, ...packet, limit: options.limits.maxPacketBytes },
        "packet over MQTT_MAX_PACKET_BYTES: connection closed",
      );
    });
    pipeline(stream, guard, () => stream.destroy());
    // aedes reads MQTT from the guard and writes to the stream; it finds the
    // peer's socket in `req`, as it does for WebSockets, and copies
    // `req.connDetails` to `client.connDetails`.
    const req: ProxiedRequest = request ?? { socket };
    if (origin) req.connDetails = connDetailsOf(origin);
    const client = broker.handle(
      Duplex.from({ readable: guard, writable: stream }),
      req as http.IncomingMessage,
    );
    if (connectBy !== undefined) {
      const late = setTimeout(() => {
        if (!client.connecting && !client.connected) stream.destroy();
      }, connectBy - Date.now());
      socket.once("close", () => clearTimeout(late));
    }
  };

  /**
   * A connection through a load balancer: its PROXY protocol header comes
   * before anything else (TLS included) and names the client, with which it
   * is then `admitted`, with the time its CONNECT is due by. Until the
   * header is read it holds a place in the total only.
   */
  const admitProxied = (
    socket: net.Socket,
    admitted: (origin: ProxyAddress | undefined, connectBy: number) => void,
  ) => {
    if (!proxies.has(socket.remoteAddress)) {
      gate.refused.untrusted_proxy++;
      logger.warn(
        { remote: socket.remoteAddress, trusted: proxies.entries },
        "connection refused: not from TRUSTED_PROXIES (MQTT_PROXY_PROTOCOL=on)",
      );
      socket.destroy();
      return;
    }
    if (gate.hold()) {
      logger.warn(
        { remote: socket.remoteAddress, refusal: "connections", connections: gate.connections },
        "connection refused: over a limit",
      );
      socket.destroy();
      return;
    }
    // MQTT_CONNECT_TIMEOUT_MS counts from the opening, the header's wait included.
    const connectBy = Date.now() + options.limits.connectTimeoutMs;
    readProxyHeader(socket, options.limits.connectTimeoutMs).then(
      (header) => {
        gate.unhold();
        if (header) admitted(header.source, connectBy);
      },
      (error: Error) => {
        gate.unhold();
        logger.warn(
          { remote: socket.remoteAddress, reason: error.message },
          "connection closed: no valid PROXY protocol header (MQTT_PROXY_PROTOCOL=on)",
        );
        socket.destroy();
      },
    );
  };
  broker.on("clientError", (client, error) => {
    logger.debug({ clientId: client.id, error: error.message }, "client disconnected on error");
  });
  broker.on("connectionError", (_client, error) => {
    logger.debug({ error: error.message }, "connection refused");
  });

  const listeners: net.Server[] = [];
  const secureListeners: tls.Server[] = [];
  const stopAccepting = () => {
    for (const server of listeners) if (server.listening) server.close();
  };
  const start = (server: net.Server, port: number, variable: string) => {
    listeners.push(server);
    return listen(server, options.host, port, variable);
  };

  // A PUBACK goes out as soon as its batch commits, not after the client's
  // delayed ACK of the previous segment (Nagle's algorithm).
  const tcp = net.createServer({ noDelay: true }, (socket) => {
    if (options.proxyProtocol) {
      admitProxied(socket, (origin, connectBy) =>
        admit(socket, socket, undefined, origin, connectBy),
      );
    } else admit(socket, socket);
  });
  let ports: Pick<MqttServer, "port" | "tlsPort" | "wsPort">;
  try {
    ports = { port: await start(tcp, options.port, "MQTT_PORT") };
    if (options.tls) {
      // Behind the PROXY protocol the header comes before TLS: a plain
      // listener reads it, then hands the socket to the TLS server, which
      // then finds the client it named by the peer's address and port.
      const handshaking = new Map<string, { origin?: ProxyAddress; connectBy: number }>();
      const server = tls.createServer(
        { ...serverSecureOptions(options.tls), noDelay: true },
        (socket) => {
          const proxied = handshaking.get(peerOf(socket));
          handshaking.delete(peerOf(socket));
          admit(socket, socket, undefined, proxied?.origin, proxied?.connectBy);
        },
      );
      secureListeners.push(server);
      const listener = options.proxyProtocol
        ? net.createServer({ noDelay: true }, (socket) =>
            admitProxied(socket, (origin, connectBy) => {
              const peer = peerOf(socket);
              handshaking.set(peer, { origin, connectBy });
              socket.once("close", () => handshaking.delete(peer));
              server.emit("connection", socket);
            }),
          )
        : server;
      ports.tlsPort = await start(listener, options.tls.port, "MQTTS_PORT");
    }
    if (options.wsPort !== undefined) {
      const server = webSocketListener(
        admit,
        proxies,
        options.limits.maxPacketBytes,
        options.tls && serverSecureOptions(options.tls),
      );
      if (server instanceof tls.Server) secureListeners.push(server);
      ports.wsPort = await start(server, options.wsPort, "MQTT_WS_PORT");
    }
  } catch (error) {
    stopAccepting();
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    throw error;
  }
  for (const server of listeners) {
    server.on("error", (error) => logger.error({ err: error }, "MQTT listener failed"));
  }
  for (const server of secureListeners) {
    server.on("tlsClientError", (error, socket) => {
      logger.debug({ error: error.message, remote: socket.remoteAddress }, "TLS handshake failed");
    });
  }

  const reloadCertificates = () => {
    if (!options.tls) return;
    const files = certificateFiles(options.tls);
    let context: tls.SecureContextOptions;
    try {
      context = readCertificates(options.tls);
      // Built once beforehand so that an unreadable file or a key that does
      // not match its certificate leaves every listener as it was.
      tls.createSecureContext(context);
    } catch (error) {
      logger.error(
        { err: error, files },
        "TLS certificates not reloaded: keeping the current ones",
      );
      return;
    }
    for (const server of secureListeners) server.setSecureContext(context);
    logger.info({ files }, "TLS certificates reloaded");
  };
  const unwatch = options.tls
    ? watchFiles(certificateFiles(options.tls), reloadCertificates)
    : () => {};

  return {
    broker,
    ...ports,
    get listening() {
      return tcp.listening;
    },
    gate,
    get oversizedPackets() {
      return oversizedPackets;
    },
    stopAccepting,
    reloadCertificates,
    close: async () => {
      unwatch();
      stopAccepting();
      await new Promise<void>((resolve) => broker.close(() => resolve()));
    },
  };
}

/**
 * The CN of the certificate a client presented, when the connection is TLS
 * (or WSS) and the certificate was signed by TLS_CA_FILE; undefined otherwise.
 */
export function peerCertificateId(client: Client): string | undefined {
  const socket = socketOf(client);
  if (!(socket instanceof tls.TLSSocket) || !socket.authorized) return undefined;
  const cn = socket.getPeerCertificate().subject?.CN;
  // A subject with several CNs names no single identity.
  return typeof cn === "string" ? cn : undefined;
}

/**
 * The client's address, over TCP, TLS or WebSockets: its peer's, or the one
 * its PROXY protocol header gave.
 */
export function remoteAddress(client: Client): string {
  return (
    (client.req as ProxiedRequest | undefined)?.connDetails?.ipAddress ??
    socketOf(client)?.remoteAddress ??
    "unknown"
  );
}

/**
 * The client behind a PROXY protocol header, under the names
 * aedes-protocol-decoder gives `client.connDetails`.
 */
interface ConnDetails {
  ipAddress: string;
  port: number;
  ipFamily: 4 | 6;
}

interface ProxiedRequest {
  socket: net.Socket;
  connDetails?: ConnDetails;
}

/** A connection's peer as "address:port": unique among open connections. */
function peerOf(socket: net.Socket): string {
  return `${socket.remoteAddress}:${socket.remotePort}`;
}

function connDetailsOf(origin: ProxyAddress): ConnDetails {
  return {
    ipAddress: origin.address,
    port: origin.port,
    ipFamily: origin.family === "IPv4" ? 4 : 6,
  };
}

/**
 * The network socket under a client: `admit` hands aedes a stream (behind
 * the packet guard, over a WebSocket) and the socket in `req`.
 */
function socketOf(client: Client): net.Socket | undefined {
  return client.req?.socket;
}

async function listen(
  server: net.Server,
  host: string,
  port: number,
  variable: string,
): Promise<number> {
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EADDRINUSE") {
      throw new PortInUseError(
        `port ${port} on ${host} is already in use (another MQTT broker running?): set ${variable} to a free port`,
      );
    }
    throw error;
  }
  return (server.address() as net.AddressInfo).port;
}

/**
 * An HTTP (or HTTPS) server taking WebSocket upgrades on /mqtt and handing
 * them to `admit`, with the client X-Forwarded-For names when the upgrade
 * comes from one of `proxies`.
 */
function webSocketListener(
  admit: (
    socket: net.Socket,
    stream: Duplex,
    request: http.IncomingMessage,
    origin?: ProxyAddress,
  ) => void,
  proxies: TrustedProxies,
  maxPacketBytes: number,
  secureOptions: tls.TlsOptions | undefined,
): http.Server | https.Server {
  const webSockets = new WebSocketServer({
    noServer: true,
    // A frame larger than the largest packet cannot be one an MQTT client sends.
    maxPayload: maxPacketBytes,
    handleProtocols: (offered) =>
      WEBSOCKET_PROTOCOLS.find((protocol) => offered.has(protocol)) ?? false,
  });
  const server = secureOptions ? https.createServer(secureOptions) : http.createServer();
  server.on("request", (request: http.IncomingMessage, response: http.ServerResponse) => {
    if (pathOf(request) === WEBSOCKET_PATH) {
      response.writeHead(426, { upgrade: "websocket", connection: "Upgrade" }).end();
    } else {
      response.writeHead(404).end();
    }
  });
  server.on("upgrade", (request: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    if (pathOf(request) !== WEBSOCKET_PATH) {
      socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    const peer = socket.remoteAddress ?? "";
    const client = proxies.forwardedClient(peer, request.headers["x-forwarded-for"]);
    webSockets.handleUpgrade(request, socket, head, (webSocket) => {
      // aedes keeps the request as `client.req`: its socket is the one that
      // carries the peer's address and, over WSS, its certificate.
      admit(
        socket,
        createWebSocketStream(webSocket),
        request,
        // X-Forwarded-For names no port.
        client === peer
          ? undefined
          : { address: client, port: 0, family: net.isIPv6(client) ? "IPv6" : "IPv4" },
      );
    });
  });
  return server;
}

function pathOf(request: http.IncomingMessage): string {
  return new URL(request.url ?? "/", "http://localhost").pathname;
}

function certificateFiles(options: TlsListenerOptions): string[] {
  return [options.certFile, options.keyFile, ...(options.caFile ? [options.caFile] : [])];
}

function readCertificates(options: TlsListenerOptions): tls.SecureContextOptions {
  return {
    cert: fs.readFileSync(options.certFile),
    key: fs.readFileSync(options.keyFile),
    ...(options.caFile ? { ca: fs.readFileSync(options.caFile) } : {}),
  };
}

function serverSecureOptions(options: TlsListenerOptions): tls.TlsOptions {
  return {
    ...readCertificates(options),
    // Asked for but not required: a client without a certificate, or with
    // one that fails verification, can still log in with a password, and
    // `peerCertificateId` counts only verified ones.
    ...(options.caFile ? { requestCert: true, rejectUnauthorized: false } : {}),
  };
}

/**
 * Calls `changed` once the files have stopped changing. Polling follows a
 * path, so it keeps seeing a file that an editor or certbot replaces, and a
 * certificate and key written one after the other make a single reload.
 */
function watchFiles(files: string[], changed: () => void): () => void {
  let settle: NodeJS.Timeout | undefined;
  const onChange = () => {
    clearTimeout(settle);
    settle = setTimeout(changed, CERTIFICATE_POLL_MS).unref();
  };
  for (const file of files) {
    fs.watchFile(file, { interval: CERTIFICATE_POLL_MS, persistent: false }, onChange);
  }
  return () => {
    clearTimeout(settle);
    for (const file of files) fs.unwatchFile(file, onChange);
  };
}
