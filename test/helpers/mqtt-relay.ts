import net from "node:net";
import mqttPacket from "mqtt-packet";

/** A packet a client sent through the relay towards the broker. */
export interface RelayedPacket {
  /** Date.now() when the relay read it. */
  at: number;
  /** Which accepted connection it came on: 0 for the first, 1 for the next, … */
  connection: number;
  cmd: mqttPacket.PacketCmd;
  messageId: number | undefined;
}

export interface MqttRelay {
  port: number;
  url: string;
  /** Every packet clients sent to the broker, in the order the relay read them. */
  readonly toBroker: RelayedPacket[];
  /** Every packet the broker sent to clients, in the order the relay read them. */
  readonly toClients: RelayedPacket[];
  /** What the parser could not read: a relay that saw any of these saw only part of the stream. */
  readonly parseErrors: string[];
  /** The PUBACKs among them. */
  pubacks(): RelayedPacket[];
  /** Stops accepting and cuts every relayed connection. */
  close(): Promise<void>;
}

/**
 * A TCP relay on a free loopback port to the MQTT broker on 127.0.0.1:`brokerPort`.
 * It forwards both directions byte for byte and parses what clients send,
 * so a test can see when a client acknowledged what, and what it was sent.
 */
export async function startMqttRelay(brokerPort: number, protocolVersion = 4): Promise<MqttRelay> {
  const toBroker: RelayedPacket[] = [];
  const toClients: RelayedPacket[] = [];
  const parseErrors: string[] = [];
  const open = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((client) => {
    const connection = connections++;
    const broker = net.connect({ host: "127.0.0.1", port: brokerPort });
    open.add(client);
    open.add(broker);
    const reader = (into: RelayedPacket[]) => {
      const parser = mqttPacket.parser({ protocolVersion });
      parser.on("packet", (packet: mqttPacket.Packet) => {
        into.push({
          at: Date.now(),
          connection,
          cmd: packet.cmd,
          messageId: "messageId" in packet ? packet.messageId : undefined,
        });
      });
      parser.on("error", (error) => {
        parseErrors.push(`connection ${connection}: ${error.message}`);
      });
      return parser;
    };
    const parser = reader(toBroker);
    const back = reader(toClients);
    client.on("data", (data: Buffer) => {
      parser.parse(data);
      if (!broker.write(data)) client.pause();
    });
    broker.on("drain", () => client.resume());
    broker.on("data", (data: Buffer) => {
      back.parse(data);
      if (!client.write(data)) broker.pause();
    });
    client.on("drain", () => broker.resume());
    client.on("end", () => broker.end());
    broker.on("end", () => client.end());
    const cut = () => {
      client.destroy();
      broker.destroy();
    };
    client.on("error", cut);
    broker.on("error", cut);
    client.on("close", () => {
      open.delete(client);
      broker.destroy();
    });
    broker.on("close", () => {
      open.delete(broker);
      client.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    toBroker,
    toClients,
    parseErrors,
    pubacks: () => toBroker.filter((packet) => packet.cmd === "puback"),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of open) socket.destroy();
      }),
  };
}
