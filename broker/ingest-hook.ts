import type { AedesPublishPacket, Client, ConnectPacket, PublishPacket } from "aedes";
import type { DeadLetter, Receipt, WriteOutcome } from "../bridge/batch-writer.ts";
import type { Logger } from "../bridge/logger.ts";
import type { RawMessage } from "../bridge/telemetry-message.ts";

/** Where bridged messages go: the receipt is told once the message is committed. */
export interface Ingest {
  submit(message: RawMessage, receipt: Receipt): void;
  /** Records what cannot be stored as telemetry; the receipt is told after COMMIT. */
  submitLetter(letter: DeadLetter, receipt: Receipt): void;
}

/** Who may publish where; without it, every client may publish everywhere. */
export interface PublishAccess {
  canPublish(client: Client, topic: string): boolean;
  /** Counts a denied publish; true when the client has had too many. */
  deniedTooOften(client: Client): boolean;
}

export interface IngestHookOptions {
  ingest: Ingest;
  /** Whether a topic's messages are stored; others are only brokered. */
  bridged(topic: string): boolean;
  /** Longest wait for a commit before the client is disconnected. */
  timeoutMs: number;
  access?: PublishAccess;
  logger: Logger;
}

type Callback = (error?: Error | null) => void;

interface ClientState {
  queue: Waiting[];
  /** Armed for the head of the queue; it re-arms itself for a later head. */
  timer: NodeJS.Timeout | undefined;
  /** Set once the client was disconnected for a late commit: later outcomes are ignored. */
  abandoned: boolean;
}

interface Waiting extends Receipt {
  deadline: number;
  done: boolean;
  error: Error | undefined;
  callback: Callback;
}

export class IngestTimeoutError extends Error {
  override name = "IngestTimeoutError";
}

/**
 * The aedes hooks that make QoS 1 mean "committed".
 *
 * aedes sends the PUBACK right after `authorizePublish` calls back, before
 * anything else sees the message. So for a bridged topic the hook hands the
 * message to the writer and calls back only once it is committed (stored,
 * duplicate or dead-lettered), releasing each client's callbacks in the
 * order its messages arrived, as MQTT requires of PUBACKs.
 *
 * While aedes waits on these callbacks it stops reading that client's
 * socket, PINGREQs included. A wait is therefore capped below the client's
 * keepalive: past the cap the client is disconnected without a PUBACK and
 * resends once it reconnects.
 */
export function createIngestHooks(options: IngestHookOptions) {
  const { bridged } = options;
  const keepaliveMs = new WeakMap<Client, number>();
  const clients = new WeakMap<Client, ClientState>();
  /**
   * Payloads of redeliveries and of denied publishes: acknowledged, but not
   * forwarded to subscribers (again).
   */
  const unforwarded = new WeakSet<Buffer>();

  function capFor(client: Client): number {
    const keepalive = keepaliveMs.get(client) ?? 0;
    // aedes gives up on a silent client at 1.5 × keepalive; stay well under it.
    return keepalive > 0 ? Math.min(options.timeoutMs, keepalive) : options.timeoutMs;
  }

  function release(client: Client, state: ClientState): void {
    if (state.abandoned) return;
    let head = state.queue[0];
    while (head?.done) {
      state.queue.shift();
      if (head.error) {
        // aedes closes the connection on this error; what follows will be resent.
        abandon(client, state);
        head.callback(head.error);
        return;
      }
      head.callback(null);
      head = state.queue[0];
    }
  }

  /**
   * One timer per client, for the head's deadline. Heads usually commit long
   * before it, so the timer is left running and, when it fires, re-arms for
   * whichever message is then the head: no timer per message.
   */
  function arm(client: Client, state: ClientState): void {
    const head = state.queue[0];
    if (state.timer || !head) return;
    state.timer = setTimeout(() => {
      state.timer = undefined;
      const current = state.queue[0];
      if (!current || state.abandoned) return;
      if (!current.done && current.deadline <= Date.now()) expire(client, state, current);
      else arm(client, state);
    }, head.deadline - Date.now());
    state.timer.unref();
  }

  function abandon(client: Client, state: ClientState): void {
    state.abandoned = true;
    if (state.timer) clearTimeout(state.timer);
    clients.delete(client);
  }

  function expire(client: Client, state: ClientState, head: Waiting): void {
    abandon(client, state);
    options.logger.warn(
      { clientId: client.id, waiting: state.queue.length, capMs: capFor(client) },
      "no commit in time; disconnecting the client so it resends",
    );
    // An error from authorizePublish makes aedes close the connection without a PUBACK.
    head.callback(new IngestTimeoutError(`not committed within ${capFor(client)} ms`));
  }

  function track(client: Client): ClientState {
    let state = clients.get(client);
    if (!state) {
      state = { queue: [], timer: undefined, abandoned: false };
      clients.set(client, state);
    }
    return state;
  }

  /** A bridged message waiting for its commit, released in its client's order. */
  class Entry implements Waiting {
    readonly deadline: number;
    done = false;
    error: Error | undefined = undefined;

    constructor(
      private readonly client: Client,
      private readonly state: ClientState,
      private readonly payload: Buffer,
      readonly callback: Callback,
    ) {
      this.deadline = Date.now() + capFor(client);
    }

    settle(outcome: WriteOutcome): void {
      if (outcome.status === "duplicate") unforwarded.add(this.payload);
      this.done = true;
      release(this.client, this.state);
    }

    fail(error: Error): void {
      this.done = true;
      this.error = error;
      release(this.client, this.state);
    }
  }

  /** The receipt of a client's message, queued so that its callback keeps the client's order. */
  function waitInOrder(client: Client, payload: Buffer, callback: Callback): Entry {
    const state = track(client);
    const entry = new Entry(client, state, payload, callback);
    state.queue.push(entry);
    arm(client, state);
    return entry;
  }

  function preConnect(
    client: Client,
    packet: ConnectPacket,
    callback: (error: Error | null, success: boolean) => void,
  ): void {
    keepaliveMs.set(client, (packet.keepalive ?? 0) * 1000);
    callback(null, true);
  }

  function authorizePublish(
    client: Client | null,
    packet: PublishPacket,
    callback: Callback,
  ): void {
    // Overriding the hook drops aedes' own guard; keep it.
    if (packet.topic.startsWith("$SYS/")) {
      callback(new Error("$SYS/ topics are reserved for the broker"));
      return;
    }
    const denied = client !== null && options.access?.canPublish(client, packet.topic) === false;
    if (!denied && !bridged(packet.topic)) {
      callback(null);
      return;
    }
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    packet.payload = payload;
    if (denied) {
      deny(client, packet, payload, callback);
      return;
    }
    const message: RawMessage = {
      topic: packet.topic,
      payload,
      clientId: client ? client.id : null,
      receivedAtMs: Date.now(),
    };
    if (!client) {
      // A will message: no connection waits on it.
      options.ingest.submit(message, {
        settle: (outcome) => {
          if (outcome.status === "duplicate") unforwarded.add(payload);
          callback(null);
        },
        fail: callback,
      });
      return;
    }
    options.ingest.submit(message, waitInOrder(client, payload, callback));
  }

  /**
   * A publish the ACL denies is acknowledged (a QoS 1 device would resend it
   * forever otherwise) and dead-lettered as `not_authorized`, in the
   * client's order, but neither retained nor forwarded. A client that keeps
   * at it is disconnected.
   */
  function deny(client: Client, packet: PublishPacket, payload: Buffer, callback: Callback): void {
    if (options.access?.deniedTooOften(client)) {
      options.logger.warn(
        { clientId: client.id, topic: packet.topic },
        "too many publishes not authorized: disconnecting",
      );
      callback(new Error("too many publishes not authorized"));
      return;
    }
    packet.retain = false;
    unforwarded.add(payload);
    options.ingest.submitLetter(
      {
        topic: packet.topic,
        clientId: client.id,
        payload,
        reason: "not_authorized",
        detail: "the ACL does not allow this client to publish on this topic",
        receivedAtMs: Date.now(),
      },
      waitInOrder(client, payload, callback),
    );
  }

  /** False for a redelivery or a denied publish, which no subscriber may receive. */
  function forwards(packet: AedesPublishPacket): boolean {
    return !unforwarded.has(packet.payload as Buffer);
  }

  function authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    // aedes restores a resumed session's subscriptions before its CONNACK,
    // so a live message could go out ahead of it, which MQTT forbids
    // (MQTT-3.2.0-1): mqtt.js then waits behind it for the CONNACK until its
    // connect timeout. A QoS 1 or 2 message is in the session's queue as
    // well, which aedes sends once the CONNACK has gone.
    if (!(client as Client & { connackSent: boolean }).connackSent) return null;
    return forwards(packet) ? packet : null;
  }

  return { preConnect, authorizePublish, authorizeForward, forwards };
}
