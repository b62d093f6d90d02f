import net from "node:net";
import { Aedes, type AedesOptions } from "aedes";
import type { Logger } from "../bridge/logger.ts";

export interface MqttServer {
  broker: Aedes;
  port: number;
  /** True while the listener accepts connections. */
  readonly listening: boolean;
  /** Stops accepting connections; connected clients stay. */
  stopAccepting(): void;
  /** Disconnects every client and closes the broker. */
  close(): Promise<void>;
}

export class PortInUseError extends Error {
  override name = "PortInUseError";
}

/** aedes over TCP (MQTT 3.1 and 3.1.1) on `port`; 0 picks a free one. */
export async function startMqttServer(
  port: number,
  hooks: Pick<AedesOptions, "preConnect" | "authorizePublish" | "authorizeForward">,
  logger: Logger,
): Promise<MqttServer> {
  const broker = await Aedes.createBroker(hooks);
  broker.on("clientError", (client, error) => {
    logger.debug({ clientId: client.id, error: error.message }, "client disconnected on error");
  });
  broker.on("connectionError", (_client, error) => {
    logger.debug({ error: error.message }, "connection refused");
  });
  const server = net.createServer(broker.handle);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (error) {
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    if ((error as NodeJS.ErrnoException).code === "EADDRINUSE") {
      throw new PortInUseError(
        `MQTT port ${port} is already in use (another MQTT broker running?): set MQTT_PORT to a free port`,
      );
    }
    throw error;
  }
  server.on("error", (error) => logger.error({ err: error }, "MQTT listener failed"));
  const listening = (server.address() as net.AddressInfo).port;

  const stopAccepting = () => {
    if (server.listening) server.close();
  };

  return {
    broker,
    port: listening,
    get listening() {
      return server.listening;
    },
    stopAccepting,
    close: async () => {
      stopAccepting();
      await new Promise<void>((resolve) => broker.close(() => resolve()));
    },
  };
}
