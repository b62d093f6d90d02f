import Fastify, { type FastifyError, type FastifyRequest, LogController } from "fastify";
import type pg from "pg";
import type { BatchWriter } from "../bridge/batch-writer.ts";
import type { Logger } from "../bridge/logger.ts";
import type { BridgedTopics } from "../bridge/mappings.ts";
import type { Reports } from "../bridge/metrics.ts";
import { parseTimestamp } from "../bridge/telemetry-message.ts";
import { compileAcl } from "../broker/auth/acl.ts";
import type { Authenticator } from "../broker/auth/authenticator.ts";
import type { MqttServer } from "../broker/mqtt-server.ts";
import type { TrustedProxies } from "../broker/trusted-proxies.ts";
import { AccessError, identify, requireRole } from "./auth.ts";
import { isObject, publishEvents } from "./publish.ts";
import { parseJsonBody, RequestError } from "./request-body.ts";

const MAX_EVENTS_PER_REQUEST = 5000;
const MAX_EVENTS_LIMIT = 1000;
const RETRY_AFTER_SECONDS = 5;

export interface HttpDependencies {
  writer: BatchWriter;
  reports: Reports;
  pool: pg.Pool;
  /** Unset while the embedded broker is off. */
  mqtt: MqttServer | undefined;
  topics: BridgedTopics;
  authenticator: Authenticator;
  /** Requests without credentials are served (a loopback-only or deliberately open service). */
  anonymous: boolean;
  host: string;
  /** Peers whose X-Forwarded-For names the client (for the failed-login throttle). */
  trustedProxies: TrustedProxies;
  bodyLimit: number;
  /** Longest a request waits for its commit before it gets 503 (its events are still committed). */
  timeoutMs: number;
  logger: Logger;
}

export interface HttpServer {
  port: number;
  close(): Promise<void>;
}

function optionalTime(query: Record<string, string | undefined>, field: string): Date | undefined {
  const raw = query[field];
  if (raw === undefined || raw === "") return undefined;
  const ms = parseTimestamp(/^\d+$/.test(raw) ? Number(raw) : raw);
  if (ms === undefined)
    throw new RequestError(400, field, "must be ISO 8601 with a zone, or epoch milliseconds");
  return new Date(ms);
}

/** The HTTP API on `port`: /publish, /events, /stats, /health, /metrics. */
export async function startHttpServer(port: number, deps: HttpDependencies): Promise<HttpServer> {
  const { writer, reports, pool, mqtt, logger } = deps;
  const app = Fastify({
    loggerInstance: logger,
    // A line per request would drown the ingest logs; failures are logged by the handler below.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: deps.bodyLimit,
    // request.ip: the address X-Forwarded-For names, read from the right
    // past every trusted proxy; a header from anyone else is ignored.
    trustProxy: (address) => deps.trustedProxies.has(address),
  });
  // Only JSON, read by our own parser: any other Content-Type is a 415.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (_request, body, done) => {
    try {
      done(null, parseJsonBody(body as Buffer));
    } catch (error) {
      done(error as RequestError, undefined);
    }
  });

  app.setErrorHandler((error: FastifyError | RequestError | AccessError, _request, reply) => {
    if (error instanceof AccessError) {
      return reply.code(error.statusCode).headers(error.headers).send({ error: error.message });
    }
    if (error instanceof RequestError) {
      return reply
        .code(error.statusCode)
        .send({ error: error.message, field: error.field, reason: error.reason });
    }
    const status = error.statusCode ?? 500;
    if (status >= 500) logger.error({ err: error }, "HTTP request failed");
    const [field, reason] =
      status === 415
        ? ["content-type", "must be application/json"]
        : status === 413
          ? ["body", `is larger than HTTP_BODY_LIMIT_BYTES (${deps.bodyLimit} bytes)`]
          : ["body", error.message];
    return reply.code(status).send({ error: `${field}: ${reason}`, field, reason });
  });

  const caller = (request: FastifyRequest) => identify(request, deps.authenticator, deps.anonymous);

  app.post("/publish", async (request, reply) => {
    const identity = await caller(request);
    const body = request.body;
    let events: unknown[];
    if (body !== null && typeof body === "object" && !Array.isArray(body) && "events" in body) {
      const list = (body as { events: unknown }).events;
      if (!Array.isArray(list) || list.length === 0 || list.length > MAX_EVENTS_PER_REQUEST) {
        throw new RequestError(
          422,
          "events",
          `must be an array of 1 to ${MAX_EVENTS_PER_REQUEST} events`,
        );
      }
      events = list;
    } else if (body !== null && typeof body === "object" && !Array.isArray(body)) {
      events = [body];
    } else {
      throw new RequestError(422, "body", 'must be an event object or {"events": [...]}');
    }
    let allowed: (topic: string) => boolean = () => true;
    if (identity) {
      const acl = compileAcl(identity, identity.id, deps.topics);
      allowed = (topic) => acl.canPublish(topic);
      const allowedEvent = (event: unknown) =>
        isObject(event) && typeof event.topic === "string" && allowed(event.topic);
      if (!events.some(allowedEvent)) {
        throw new AccessError(403, `${identity.id} may not publish on any of these topics`);
      }
    }
    if (writer.unavailable || writer.saturated) {
      reply.header("Retry-After", String(RETRY_AFTER_SECONDS));
      return reply.code(503).send({
        error: writer.unavailable ? "PostgreSQL is unavailable" : "the writer is saturated",
        retry_after_seconds: RETRY_AFTER_SECONDS,
      });
    }
    let timer: NodeJS.Timeout | undefined;
    const published = await Promise.race([
      publishEvents(
        events,
        writer,
        { bridged: deps.topics.bridged, allowed },
        identity?.id ?? `http:${request.ip}`,
      ),
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), deps.timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
    if (!published) {
      reply.header("Retry-After", String(RETRY_AFTER_SECONDS));
      return reply.code(503).send({
        error: `not committed within ${deps.timeoutMs} ms; sending the same events again is safe`,
        retry_after_seconds: RETRY_AFTER_SECONDS,
      });
    }
    const { results, stored } = published;
    // Live subscribers see HTTP events too, once they are committed.
    for (const message of stored) {
      mqtt?.broker.publish(
        {
          cmd: "publish",
          topic: message.topic,
          payload: message.payload,
          qos: 0,
          retain: false,
          dup: false,
        },
        () => {},
      );
    }
    const count = (status: string) => results.filter((result) => result.status === status).length;
    const rejected = count("rejected");
    return reply.code(rejected > 0 ? 422 : 200).send({
      received: results.length,
      accepted: count("accepted"),
      duplicates: count("duplicate"),
      rejected,
      results,
    });
  });

  app.get("/events", async (request) => {
    requireRole(await caller(request), ["reader", "admin"]);
    const query = request.query as Record<string, string | undefined>;
    const limitRaw = query.limit ?? "10";
    const limit = Number(limitRaw);
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_EVENTS_LIMIT) {
      throw new RequestError(400, "limit", `must be an integer from 1 to ${MAX_EVENTS_LIMIT}`);
    }
    const conditions: string[] = [];
    const params: unknown[] = [];
    const where = (sql: string, value: unknown) => {
      params.push(value);
      conditions.push(sql.replace("?", `$${params.length}`));
    };
    if (query.topic) {
      where("topic = ?", query.topic);
      // The device id is the topic's second level, or the device its mapping names;
      // naming it lets (device_id, time DESC) serve the query.
      if (!query.device_id) where("device_id = ?", deps.topics.deviceOf(query.topic));
    }
    if (query.device_id) where("device_id = ?", query.device_id);
    const since = optionalTime(query, "since");
    const until = optionalTime(query, "until");
    if (since) where("time >= ?", since);
    if (until) where("time < ?", until);
    params.push(limit);
    const { rows } = await pool.query(
      `SELECT time, topic, device_id, event_id, payload, received_at FROM telemetry
        ${conditions.length > 0 ? `WHERE ${conditions.join(" AND ")}` : ""}
        ORDER BY time DESC LIMIT $${params.length}`,
      params,
    );
    return { count: rows.length, events: rows };
  });

  app.get("/stats", async (request) => {
    requireRole(await caller(request), ["reader", "admin"]);
    return reports.stats();
  });

  app.get("/health", async (_request, reply) => {
    if (mqtt && !mqtt.listening)
      return reply.code(503).send({ status: "unavailable", reason: "the MQTT listener is closed" });
    try {
      await Promise.race([
        pool.query("SELECT 1"),
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error("no answer within 2 s")), 2000).unref(),
        ),
      ]);
    } catch (error) {
      return reply
        .code(503)
        .send({ status: "unavailable", reason: `PostgreSQL: ${(error as Error).message}` });
    }
    return { status: "ok", mqtt: mqtt ? "listening" : "off", database: "ok" };
  });

  app.get("/metrics", async (_request, reply) => {
    reply.header("Content-Type", reports.contentType);
    return reports.metrics();
  });

  app.get("/metrics/workers", async (_request, reply) => {
    reply.header("Content-Type", reports.contentType);
    return reports.workerMetrics();
  });

  try {
    await app.listen({ port, host: deps.host });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EADDRINUSE") {
      throw new Error(`HTTP port ${port} is already in use: set HTTP_PORT to a free port`);
    }
    throw error;
  }
  const address = app.server.address();
  return {
    port: typeof address === "object" && address ? address.port : port,
    close: () => app.close(),
  };
}
