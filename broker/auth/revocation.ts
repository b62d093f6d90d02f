import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import type { Logger } from "../../bridge/logger.ts";
import { IDENTITY_CHANNEL } from "../../storage/identities.ts";
import type { Access } from "./access.ts";
import type { Authenticator } from "./authenticator.ts";
import type { IdentityDirectory } from "./identity-directory.ts";

const RECONNECT_DELAY_MS = 1000;

/**
 * Keeps the identity directory current and disconnects a changed
 * identity's connections in this process: a trigger NOTIFYs the id after
 * COMMIT, whoever made the change; the directory re-reads it, and the
 * connections reconnect, if they still may, under the new secret, role or
 * rules. Every service process on the database listens, so a revocation
 * reaches all of them.
 *
 * Notifications sent while the listening connection is down are lost, so
 * after every (re)connect the directory is loaded whole and each connected
 * identity is checked against it.
 */
export function watchIdentities(
  databaseUrl: string,
  deps: {
    access: Access;
    authenticator: Authenticator;
    directory: IdentityDirectory;
    logger: Logger;
  },
): { ready: Promise<void>; close(): Promise<void> } {
  const { access, authenticator, directory, logger } = deps;
  let closed = false;
  let client: pg.Client | undefined;
  let signalReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    signalReady = resolve;
  });

  function revoke(id: string, why: string): void {
    directory.refresh(id).catch(() => {});
    authenticator.forget(id);
    const count = access.revoke(id);
    if (count > 0)
      logger.info({ identity: id, connections: count, why }, "identity changed: disconnected");
  }

  async function reload(): Promise<void> {
    await directory.load();
    authenticator.forget();
    for (const [id, before] of access.connectedIdentities()) {
      const now = await directory.find(id);
      if (
        !now?.enabled ||
        now.role !== before.role ||
        now.secretHash !== before.secretHash ||
        JSON.stringify(now.rules) !== JSON.stringify(before.rules)
      ) {
        revoke(id, "changed while not listening");
      }
    }
  }

  async function listen(): Promise<void> {
    while (!closed) {
      const connection = new pg.Client({
        connectionString: databaseUrl,
        application_name: "telemetry-bridge identities",
      });
      const lost = new Promise<void>((resolve) => {
        connection.on("error", (error) => {
          logger.warn({ error: error.message }, "identity change listener lost its connection");
          resolve();
        });
        connection.on("end", () => resolve());
      });
      connection.on("notification", (message) => {
        if (message.channel === IDENTITY_CHANNEL && message.payload) {
          revoke(message.payload, "changed");
        }
      });
      try {
        await connection.connect();
        client = connection;
        await connection.query(`LISTEN ${IDENTITY_CHANNEL}`);
        await reload();
        signalReady();
        await lost;
      } catch (error) {
        logger.warn({ error: (error as Error).message }, "identity change listener cannot connect");
      }
      client = undefined;
      await connection.end().catch(() => {});
      if (!closed) await sleep(RECONNECT_DELAY_MS);
    }
  }

  const loop = listen();
  return {
    ready,
    close: async () => {
      closed = true;
      await client?.end().catch(() => {});
      signalReady();
      await loop;
    },
  };
}
