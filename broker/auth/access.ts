import type { Client, Subscription } from "aedes";
import type { Logger } from "../../bridge/logger.ts";
import type { BridgedTopics } from "../../bridge/mappings.ts";
import type { Identity, IdentityStore } from "../../storage/identities.ts";
import { peerCertificateId, remoteAddress } from "../mqtt-server.ts";
import { type Acl, compileAcl } from "./acl.ts";
import type { Authenticator, AuthResult } from "./authenticator.ts";
import type { IdentityDirectory } from "./identity-directory.ts";

/** CONNACK return codes of MQTT 3.1.1 §3.2.2.3. */
const CONNACK = {
  identifierRejected: 2,
  serverUnavailable: 3,
  badCredentials: 4,
  notAuthorized: 5,
} as const;

type ConnackError = Error & { returnCode: number };

function refusal(returnCode: number, message: string): ConnackError {
  return Object.assign(new Error(message), { returnCode });
}

/** Publishes an identity may have denied within a minute before it is disconnected. */
const DENIALS_PER_MINUTE = 10;
const TOUCH_INTERVAL_MS = 10_000;

export interface AccessOptions {
  authenticator: Authenticator;
  /** Records last_seen_at. */
  store: Pick<IdentityStore, "touch">;
  /** Anonymous clients may not take an identity's client id. */
  directory: Pick<IdentityDirectory, "has">;
  /** Clients without credentials get everything (a loopback-only or deliberately open service). */
  anonymous: boolean;
  /** The bridged filters: readers subscribe within them, devices publish as themselves there. */
  topics: BridgedTopics;
  logger: Logger;
}

export interface AccessCounters {
  authFailures: Partial<
    Record<Exclude<AuthResult, { ok: true }>["reason"] | "anonymous" | "client_id" | "will", number>
  >;
  subscriptionsDenied: number;
}

interface Session {
  identity: Identity;
  acl: Acl;
  denials: number;
  denialsSince: number;
}

/**
 * Authentication and authorization for aedes: who connects (`authenticate`),
 * what each may publish (`canPublish`, called by the ingest hook) and
 * subscribe to (`authorizeSubscribe`), and the connections of an identity
 * that changed (`revoke`).
 *
 * Client ids are bound to identities, as Mosquitto's
 * `use_username_as_clientid`: a device's client id is its id (an empty one
 * becomes its id, any other is refused), and a reader's or admin's is
 * prefixed with `<id>:`, so no identity can take over another's connection
 * or session. Anonymous clients may not use an identity's id, nor a `:`.
 */
export function createAccess(options: AccessOptions) {
  const { authenticator, store, logger } = options;
  const sessions = new WeakMap<Client, Session>();
  const connected = new Map<string, Set<Client>>();
  const seen = new Set<string>();
  const counters: AccessCounters = { authFailures: {}, subscriptionsDenied: 0 };

  const touch = setInterval(() => flushSeen(), TOUCH_INTERVAL_MS);
  touch.unref();

  function flushSeen(): Promise<void> {
    if (seen.size === 0) return Promise.resolve();
    const ids = [...seen];
    seen.clear();
    return store
      .touch(ids)
      .catch((error: unknown) =>
        logger.warn({ error: (error as Error).message }, "could not record last_seen_at"),
      );
  }

  function fail(reason: keyof AccessCounters["authFailures"], error: ConnackError) {
    counters.authFailures[reason] = (counters.authFailures[reason] ?? 0) + 1;
    return error;
  }

  async function identify(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
  ): Promise<Identity | undefined> {
    const certificateId = peerCertificateId(client);
    if (!username && certificateId === undefined) {
      if (!options.anonymous) {
        throw fail("anonymous", refusal(CONNACK.notAuthorized, "credentials are required"));
      }
      if (client.id.includes(":") || options.directory.has(client.id)) {
        throw fail(
          "client_id",
          refusal(CONNACK.identifierRejected, "this client id belongs to an identity"),
        );
      }
      return undefined;
    }
    let result: AuthResult;
    if (certificateId !== undefined && (!username || username === certificateId)) {
      result = await authenticator.known(certificateId);
    } else if (!username || !password) {
      result = { ok: false, reason: "bad_credentials" };
    } else {
      result = await authenticator.check(
        username,
        password.toString("utf8"),
        remoteAddress(client),
      );
    }
    if (result.ok) return result.identity;
    const code =
      result.reason === "bad_credentials"
        ? CONNACK.badCredentials
        : result.reason === "busy"
          ? CONNACK.serverUnavailable
          : CONNACK.notAuthorized;
    throw fail(result.reason, refusal(code, `authentication failed: ${result.reason}`));
  }

  function bindClientId(client: Client, identity: Identity): void {
    if (identity.role === "device") {
      // aedes names a client that sent an empty id "aedes_<uuid>".
      if (client.id !== identity.id && !client.id.startsWith("aedes_")) {
        throw fail(
          "client_id",
          refusal(CONNACK.identifierRejected, "a device's client id must be its id"),
        );
      }
      client.id = identity.id;
    } else if (client.id !== identity.id) {
      client.id = `${identity.id}:${client.id}`;
    }
  }

  function authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    callback: (error: ConnackError | null, success: boolean | null) => void,
  ): void {
    identify(client, username, password)
      .then((identity) => {
        if (!identity) return callback(null, true);
        bindClientId(client, identity);
        const acl = compileAcl(identity, client.id, options.topics);
        // aedes keeps the will in `_will` until authentication succeeds.
        const will = (client as Client & { _will?: { topic: string } })._will;
        if (will && (will.topic.startsWith("$SYS/") || !acl.canPublish(will.topic))) {
          throw fail("will", refusal(CONNACK.notAuthorized, "the will's topic is not allowed"));
        }
        sessions.set(client, { identity, acl, denials: 0, denialsSince: Date.now() });
        const clients = connected.get(identity.id) ?? new Set<Client>();
        connected.set(identity.id, clients);
        clients.add(client);
        client.conn.once("close", () => {
          clients.delete(client);
          if (clients.size === 0 && connected.get(identity.id) === clients) {
            connected.delete(identity.id);
          }
        });
        seen.add(identity.id);
        callback(null, true);
      })
      .catch((error: unknown) => {
        if (typeof (error as ConnackError).returnCode === "number") {
          logger.debug(
            {
              clientId: client.id,
              username,
              address: remoteAddress(client),
              reason: (error as Error).message,
            },
            "connection refused",
          );
          return callback(error as ConnackError, null);
        }
        logger.error({ err: error }, "authentication could not be checked");
        callback(refusal(CONNACK.serverUnavailable, "authentication is unavailable"), null);
      });
  }

  function authorizeSubscribe(
    client: Client,
    subscription: Subscription,
    callback: (error: Error | null, subscription?: Subscription | null) => void,
  ): void {
    const session = sessions.get(client);
    if (!session || session.acl.canSubscribe(subscription.topic)) {
      callback(null, subscription);
      return;
    }
    counters.subscriptionsDenied++;
    // null makes aedes answer this filter with SUBACK failure (0x80).
    callback(null, null);
  }

  return {
    counters,
    authenticate,
    authorizeSubscribe,
    /** True when the client may publish on `topic`; anonymous clients (when allowed) may. */
    canPublish(client: Client, topic: string): boolean {
      const session = sessions.get(client);
      return !session || session.acl.canPublish(topic);
    },
    /** Counts a denied publish; true once the client has had too many and should be disconnected. */
    deniedTooOften(client: Client): boolean {
      const session = sessions.get(client);
      if (!session) return false;
      const now = Date.now();
      if (now - session.denialsSince > 60_000) {
        session.denials = 0;
        session.denialsSince = now;
      }
      return ++session.denials > DENIALS_PER_MINUTE;
    },
    /** Disconnects the open connections of an identity, without publishing their wills. */
    revoke(id: string): number {
      const clients = connected.get(id);
      if (!clients) return 0;
      connected.delete(id);
      for (const client of clients) {
        (client as Client & { will: unknown }).will = null;
        client.close();
      }
      return clients.size;
    },
    /** Ids with open connections, with what they authenticated as. */
    connectedIdentities(): Map<string, Identity> {
      const result = new Map<string, Identity>();
      for (const [id, clients] of connected) {
        const first = clients.values().next().value;
        const session = first && sessions.get(first);
        if (session) result.set(id, session.identity);
      }
      return result;
    },
    close(): Promise<void> {
      clearInterval(touch);
      return flushSeen();
    },
  };
}

export type Access = ReturnType<typeof createAccess>;
