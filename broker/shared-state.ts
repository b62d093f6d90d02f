import type { EventEmitter } from "node:events";
import { createRequire } from "node:module";
import type { AedesOptions, AedesPublishPacket } from "aedes";
import { Redis, type RedisOptions } from "ioredis";
import MQEmitterRedis from "mqemitter-redis";
import { redactUrl } from "../bridge/database.ts";
import type { Logger } from "../bridge/logger.ts";

export interface SharedStateOptions {
  /** REDIS_URL: redis:// or rediss://. */
  url: string;
  /**
   * False for a packet that no subscriber may receive (a redelivery, a
   * denied publish). Asked in the publishing process before the packet
   * leaves it: what other processes, and this one, read back from Redis is
   * a copy, which the ingest hook no longer recognises.
   */
  forwards(packet: AedesPublishPacket): boolean;
}

/** What aedes keeps, kept in Redis so that several service processes act as one broker. */
export interface SharedState {
  /**
   * aedes' `mq` (mqemitter-redis) and `persistence` (aedes-persistence-redis),
   * and how often it tells the other processes it is alive.
   */
  broker: Pick<AedesOptions, "mq" | "persistence" | "heartbeatInterval">;
  /**
   * A connection lost from now on is not made again, and what waits on it
   * fails: call it before closing the broker, whose clients' unsubscribes
   * would otherwise wait for a Redis that is gone.
   */
  stopReconnecting(): void;
  /** Closes the Redis connections the broker has not closed; call it after the broker. */
  close(): Promise<void>;
}

export class RedisUnreachableError extends Error {
  override name = "RedisUnreachableError";
}

/**
 * How often each process tells the others through Redis that it is alive.
 * A process silent for 3 heartbeats is taken for dead, and another
 * publishes its clients' wills at its next sweep (every 4 heartbeats):
 * 10–35 s after a SIGKILL, against 2–7 min with aedes' default of 60 s.
 */
const HEARTBEAT_MS = 5000;
/** aedes builds its own in-memory mqemitter with these. */
const MQ_OPTIONS = { concurrency: 100, matchEmptyLevels: true };
/** Longest wait between two attempts to reconnect. */
const MAX_RECONNECT_DELAY_MS = 2000;
/**
 * Reconnection attempts a command waits through before it fails: about 5 s.
 * Publishes and session changes queue in memory meanwhile, so this bounds
 * that memory; past it aedes disconnects the clients whose step failed.
 */
const ATTEMPTS_PER_COMMAND = 5;

type Role = "publish" | "subscribe" | "state";

type Listener = (message: MQEmitterRedis.Message, done: () => void) => void;

/**
 * The part of aedes-persistence-redis (its promise API, which aedes 1.x
 * calls) that this module wraps.
 */
interface RedisPersistence {
  outgoingEnqueueCombi(subs: unknown[], packet: AedesPublishPacket): Promise<void>;
}

/** aedes-persistence-redis ships no types: its factory, as far as it is used here. */
const redisPersistence: (options: { conn: Redis }) => RedisPersistence = createRequire(
  import.meta.url,
)("aedes-persistence-redis");

/** mqemitter-redis re-emits its connections' errors on `state`, which its types leave out. */
type RedisEmitter = MQEmitterRedis.MQEmitterRedis & { state: EventEmitter };

/**
 * The mqemitter aedes is given: mqemitter-redis, less the packets no
 * subscriber may receive, with a close that does not wait for a Redis that
 * is gone.
 */
class SharedEmitter {
  constructor(
    private readonly redis: RedisEmitter,
    private readonly connections: Redis[],
    private readonly forwards: (packet: AedesPublishPacket) => boolean,
  ) {}

  on(topic: string, listener: Listener, done?: () => void): this {
    this.redis.on(topic, listener, done);
    return this;
  }

  removeListener(topic: string, listener: Listener, done?: () => void): this {
    this.redis.removeListener(topic, listener, done);
    return this;
  }

  emit(packet: AedesPublishPacket, done?: (error?: Error) => void): void {
    if (!this.forwards(packet)) {
      done?.();
      return;
    }
    this.redis.emit(packet, done);
  }

  close(done: () => void): void {
    // mqemitter-redis waits for both connections to end, which a connection
    // that is reconnecting never does.
    if (this.connections.every((connection) => connection.status === "ready")) {
      this.redis.close(done);
      return;
    }
    for (const connection of this.connections) connection.disconnect();
    done();
  }
}

/** What to do when Redis could not be used at start, by the error's message. */
function remedyFor(reason: string): string {
  if (/WRONGPASS|NOAUTH/.test(reason)) {
    return "Correct the password in REDIS_URL (redis://:<password>@host, or redis://<user>:<password>@host with an ACL user)";
  }
  if (/self[- ]signed certificate|unable to (verify|get local issuer)/i.test(reason)) {
    return "Trust the CA that signed Redis' certificate with NODE_EXTRA_CA_CERTS=<ca.pem>, or correct REDIS_URL";
  }
  if (/does not match certificate's altnames/.test(reason)) {
    return "Name Redis in REDIS_URL as its certificate does";
  }
  return "Start that server or correct REDIS_URL";
}

/**
 * Connects to Redis (three connections: publish, subscribe, state) and
 * builds what aedes needs to share live messages, sessions, subscriptions,
 * queued QoS 1/2 messages, retained messages and wills with every process
 * on the same Redis. Fails with a RedisUnreachableError when Redis cannot
 * be reached now; later losses are logged and reconnected.
 */
export async function connectSharedState(
  options: SharedStateOptions,
  logger: Logger,
): Promise<SharedState> {
  let closing = false;
  const down = new Set<Role>();
  let lastError: string | undefined;
  const open = (role: Role): Redis => {
    const settings: RedisOptions = {
      lazyConnect: true,
      // The wire protocol both libraries were written and tested against.
      protocol: 2,
      connectionName: `telemetry-bridge-${role}`,
      retryStrategy: (attempt) =>
        closing ? null : Math.min(50 * 2 ** attempt, MAX_RECONNECT_DELAY_MS),
      // mqemitter-redis acknowledges a (un)subscribe that failed as done, so
      // those wait for Redis however long it takes; there are few of them.
      maxRetriesPerRequest: role === "subscribe" ? null : ATTEMPTS_PER_COMMAND,
      // mqemitter-redis asks for ioredis' auto-pipelining on the connections
      // it opens itself; these send commands as they come.
      enableAutoPipelining: false,
    };
    const connection = new Redis(options.url, settings);
    let ready = false;
    connection.on("error", (error: Error) => {
      lastError = error.message;
      logger.debug({ redis: role, error: error.message }, "Redis connection error");
    });
    connection.on("close", () => {
      if (closing || !ready || down.has(role)) return;
      if (down.size === 0) {
        logger.warn(
          { redis: redactUrl(options.url) },
          "Redis connection lost: reconnecting; MQTT clients wait for it",
        );
      }
      down.add(role);
    });
    connection.on("ready", () => {
      ready = true;
      if (!down.delete(role) || down.size > 0) return;
      logger.info({ redis: redactUrl(options.url) }, "Redis connection restored");
    });
    return connection;
  };
  const publish = open("publish");
  const subscribe = open("subscribe");
  const state = open("state");
  const all = [publish, subscribe, state];
  const closeAll = async () => {
    closing = true;
    await Promise.all(
      all.map(async (connection) => {
        if (connection.status === "ready") await connection.quit();
        else if (connection.status !== "end") connection.disconnect();
      }),
    );
  };

  const connected = await Promise.allSettled(all.map((connection) => connection.connect()));
  if (connected.some((outcome) => outcome.status === "rejected")) {
    closing = true;
    for (const connection of all) connection.disconnect();
    const reason = lastError ?? "connection closed";
    throw new RedisUnreachableError(
      `cannot reach Redis at ${redactUrl(options.url)} (REDIS_URL): ${reason}. ${remedyFor(reason)}; unset it to keep the broker's state in each process.`,
    );
  }

  const mq = MQEmitterRedis({
    ...MQ_OPTIONS,
    pubConn: publish,
    subConn: subscribe,
  }) as RedisEmitter;
  // The connections' own listeners log; without one here, mqemitter-redis
  // rethrows their errors.
  mq.state.on("error", () => {});

  const persistence = redisPersistence({ conn: state });
  const enqueue = persistence.outgoingEnqueueCombi.bind(persistence);
  persistence.outgoingEnqueueCombi = async (subs, packet) => {
    if (options.forwards(packet)) await enqueue(subs, packet);
  };

  return {
    broker: {
      mq: new SharedEmitter(mq, [publish, subscribe], options.forwards),
      persistence,
      heartbeatInterval: HEARTBEAT_MS,
    },
    stopReconnecting: () => {
      closing = true;
    },
    close: closeAll,
  };
}
