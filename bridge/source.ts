import fs from "node:fs";
import type { SourceConfig } from "./config.ts";
import { redactUrl } from "./database.ts";
import type { Logger } from "./logger.ts";
import { type SourceIngest, SourceSession } from "./source-session.ts";

export interface Source {
  /**
   * Stops reading, lets what was received be committed and acknowledged,
   * then disconnects (once, however often called). Messages not
   * acknowledged stay with the broker.
   */
  close(): Promise<void>;
}

/**
 * Mosquitto's count of messages it dropped since it started, over all
 * clients: past `max_queued_messages` for a slow or absent subscriber.
 */
const DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped";

/**
 * Subscribes to `filters` on an external broker at QoS 1, in persistent
 * sessions under fixed client ids, over `config.connections` connections
 * (members of `config.shareGroup` when set). Each message is acknowledged
 * only once it is committed (stored, a duplicate or a dead letter), so a
 * message the service did not commit stays with the broker and comes again
 * after a reconnect or a restart. The writer's queue is shared among the
 * connections as their window of messages in flight.
 */
export function startSource(
  config: SourceConfig,
  filters: readonly string[],
  bridged: (topic: string) => boolean,
  ingest: SourceIngest,
  window: number,
  logger: Logger,
): Source {
  const url = new URL(config.url);
  const shown = redactUrl(config.url);
  const ca = config.caFile ? fs.readFileSync(config.caFile) : undefined;
  const subscriptions = filters.map((filter) =>
    config.shareGroup === undefined ? filter : `$share/${config.shareGroup}/${filter}`,
  );
  let dropped: number | undefined;
  const watched = (_topic: string, payload: Buffer) => {
    const count = Number(payload.toString());
    if (!Number.isFinite(count)) return;
    if (dropped === undefined ? count > 0 : count > dropped) {
      logger.warn(
        { source: shown, dropped: count, since: dropped ?? 0 },
        "the source broker has dropped messages it could not queue (any client's): see its max_queued_messages",
      );
    }
    dropped = count;
  };
  const sessions = Array.from(
    { length: config.connections },
    (_, n) =>
      new SourceSession(
        {
          url,
          shown,
          clientId: config.connections === 1 ? config.clientId : `${config.clientId}-${n + 1}`,
          username: config.username,
          password: config.password,
          ca,
          protocolVersion: config.protocolVersion,
          subscriptions,
          watches: n === 0 ? [DROPPED_TOPIC] : [],
          window: Math.max(1, Math.floor(window / config.connections)),
          bridged,
          watched,
        },
        ingest,
        logger,
      ),
  );
  for (const session of sessions) session.start();
  let closing: Promise<void> | undefined;
  return {
    close: () =>
      (closing ??= Promise.all(sessions.map((session) => session.close())).then(() => undefined)),
  };
}
