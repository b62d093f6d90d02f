import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Service } from "../../bin/service.ts";
import { IdentityStore, type Role } from "../../storage/identities.ts";
import { runCommand } from "../helpers/run-command.ts";
import { startTestService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";
import { count } from "../helpers/writer.ts";

const db = await createTestDatabase("http_auth");
const pool = new pg.Pool({ connectionString: db.url });
const store = new IdentityStore(pool);
const secrets = new Map<string, string>();
let service: Service;
let base: string;

async function identity(id: string, role: Role): Promise<void> {
  secrets.set(id, (await store.add([id], role)).get(id) as string);
}

/** curl, as a user would run it: the status code, then the body. */
async function curl(path: string, args: string[] = []) {
  const result = await runCommand("curl", ["-si", ...args, `${base}${path}`]);
  const split = result.stdout.indexOf("\r\n\r\n");
  const headers = result.stdout.slice(0, split);
  const status = Number(/^HTTP\/[\d.]+ (\d+)/.exec(headers)?.[1]);
  return { status, headers, body: result.stdout.slice(split + 4) };
}

const event = (device: string, n: number) => ({
  topic: `telemetry/${device}/env`,
  event_id: `${device}-http-${n}`,
  timestamp: new Date().toISOString(),
  payload: { temperature: 20 + n },
});

function publish(credentials: string[], events: unknown[]) {
  return curl("/publish", [
    ...credentials,
    ...["-H", "content-type: application/json", "-d", JSON.stringify({ events })],
  ]);
}

const basic = (id: string) => ["-u", `${id}:${secrets.get(id)}`];
const bearer = (id: string) => ["-H", `Authorization: Bearer ${secrets.get(id)}`];

beforeAll(async () => {
  service = await startTestService(db.url, { ALLOW_ANONYMOUS: "false" });
  base = `http://127.0.0.1:${service.httpPort}`;
  await identity("dev-h", "device");
  await identity("reader-h", "reader");
  await identity("admin-h", "admin");
});
afterAll(async () => {
  await service?.close();
  await pool.end();
});

describe("the HTTP API with authentication", () => {
  it("answers 401 with WWW-Authenticate without credentials or with bad ones", async () => {
    for (const args of [[], ["-u", "dev-h:wrong"], ["-H", "Authorization: Bearer nope"]]) {
      const reply = await publish(args, [event("dev-h", 0)]);
      expect(reply.status).toBe(401);
      expect(reply.headers).toMatch(/^www-authenticate: Basic realm="telemetry-bridge", Bearer/im);
    }
    expect((await curl("/events")).status).toBe(401);
    expect((await curl("/stats")).status).toBe(401);
  });

  it("stores a device's own events, by Basic and by Bearer", async () => {
    expect((await publish(basic("dev-h"), [event("dev-h", 1)])).status).toBe(200);
    expect((await publish(bearer("dev-h"), [event("dev-h", 2)])).status).toBe(200);
    const { rows } = await pool.query(
      "SELECT device_id, event_id FROM telemetry WHERE device_id = 'dev-h' ORDER BY event_id",
    );
    expect(rows).toEqual([
      { device_id: "dev-h", event_id: "dev-h-http-1" },
      { device_id: "dev-h", event_id: "dev-h-http-2" },
    ]);
  });

  it("answers 403 when no event is allowed, and not_authorized for each event that is not", async () => {
    const none = await publish(basic("dev-h"), [event("other", 1), event("other", 2)]);
    expect(none.status).toBe(403);
    expect((await publish(basic("reader-h"), [event("dev-h", 3)])).status).toBe(403);
    expect(await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'other'")).toBe(
      0,
    );

    const mixed = await publish(basic("dev-h"), [event("dev-h", 4), event("other", 3)]);
    expect(mixed.status).toBe(422);
    expect(JSON.parse(mixed.body).results).toEqual([
      { index: 0, event_id: "dev-h-http-4", status: "accepted" },
      {
        index: 1,
        event_id: "other-http-3",
        status: "rejected",
        reason: "not_authorized",
        field: "topic",
        detail: "this identity may not publish on this topic",
      },
    ]);
    expect(await count(pool, "SELECT count(*) AS n FROM telemetry WHERE device_id = 'other'")).toBe(
      0,
    );
    expect(
      await count(
        pool,
        "SELECT count(*) AS n FROM telemetry_rejected WHERE reason = 'not_authorized' AND client_id = 'dev-h'",
      ),
    ).toBe(1);

    expect((await publish(basic("admin-h"), [event("other", 4)])).status).toBe(200);
  });

  it("serves /events and /stats to readers and admins only", async () => {
    expect((await curl("/events?device_id=dev-h", basic("dev-h"))).status).toBe(403);
    expect((await curl("/stats", bearer("dev-h"))).status).toBe(403);
    const events = await curl("/events?device_id=dev-h", basic("reader-h"));
    expect(events.status).toBe(200);
    expect(JSON.parse(events.body).count).toBe(3);
    expect((await curl("/stats", bearer("admin-h"))).status).toBe(200);
  });

  it("keeps /health and /metrics open", async () => {
    expect((await curl("/health")).status).toBe(200);
    expect((await curl("/metrics")).status).toBe(200);
    expect((await curl("/metrics/workers")).status).toBe(200);
  });

  it("refuses a disabled identity at once", async () => {
    await store.setEnabled("reader-h", false);
    expect((await curl("/events", basic("reader-h"))).status).toBe(403);
    await store.setEnabled("reader-h", true);
    expect((await curl("/events", basic("reader-h"))).status).toBe(200);
  });
});
