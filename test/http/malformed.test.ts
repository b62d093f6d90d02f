import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Service } from "../../bin/service.ts";
import { startTestService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("http_malformed");
let service: Service;

beforeAll(async () => {
  service = await startTestService(db.url, { HTTP_BODY_LIMIT_BYTES: "1048576" });
});
afterAll(() => service?.close());

interface Reply {
  status: number;
  body: { results: { status: string; field?: string }[] };
}

async function post(
  body: unknown,
  raw?: string | Buffer,
  contentType = "application/json",
): Promise<Reply> {
  const response = await fetch(`http://127.0.0.1:${service.httpPort}/publish`, {
    method: "POST",
    headers: { "content-type": contentType },
    body: raw ?? JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Reply["body"] };
}

const event = (id: string, extra: Record<string, unknown> = {}) => ({
  topic: "telemetry/http-bad/env",
  event_id: id,
  timestamp: new Date().toISOString(),
  payload: { temperature: 21.5 },
  ...extra,
});

describe("POST /publish with malformed input", () => {
  it("answers every malformed body with a 4xx naming the field and the reason", async () => {
    const single = JSON.stringify(event("m-1"));
    const cases: [string, Promise<{ status: number; body: unknown }>, number, object][] = [
      [
        "nested 5,000 levels deep",
        post(undefined, `${"[".repeat(5000)}${"]".repeat(5000)}`),
        400,
        { field: "body", reason: expect.stringMatching(/deeper than 67 levels/) },
      ],
      [
        "invalid UTF-8",
        post(
          undefined,
          Buffer.concat([Buffer.from(single.slice(0, -2)), Buffer.from([0xff, 0x7d, 0x7d])]),
        ),
        400,
        { field: "body", reason: "is not valid UTF-8" },
      ],
      [
        "a number past a double's range",
        post(undefined, single.replace('"temperature":21.5', '"temperature":1e400')),
        400,
        { field: "payload.temperature", reason: expect.stringMatching(/64-bit float/) },
      ],
      [
        "one in a list",
        post(undefined, `{"events":[${single},${single.replace("21.5", "-2e999")}]}`),
        400,
        { field: "events[1].payload.temperature" },
      ],
      [
        "the wrong content type",
        post(undefined, single, "text/plain"),
        415,
        { field: "content-type", reason: "must be application/json" },
      ],
      ["an empty body", post(undefined, ""), 400, { field: "body" }],
    ];
    for (const [what, reply, status, body] of cases) {
      expect(await reply, what).toMatchObject({ status, body });
    }
  });

  it("names the field of an over-long or over-nested event, and stores the others", async () => {
    // A payload may nest 64 levels: its object and 63 arrays.
    const nested = (arrays: number) => JSON.parse(`${"[".repeat(arrays)}${"]".repeat(arrays)}`);
    const reply = await post({
      events: [
        event("long-1", { topic: `telemetry/http-dev/${"t".repeat(2000)}` }),
        event("x".repeat(129)),
        event("long-3", { timestamp: "9".repeat(10_000) }),
        event("long-4", { payload: { deep: nested(63) } }),
        event("long-5"),
      ],
    });
    expect(reply.status).toBe(422);
    expect(
      reply.body.results.map((result) => [result.status, (result as { field?: string }).field]),
    ).toEqual([
      ["rejected", "topic"],
      ["rejected", "event_id"],
      ["rejected", "timestamp"],
      ["accepted", undefined],
      ["accepted", undefined],
    ]);
    const deeper = await post(event("long-6", { payload: { deep: nested(64) } }));
    expect(deeper).toMatchObject({
      status: 422,
      body: { results: [{ status: "rejected", reason: "payload_too_deep", field: "payload" }] },
    });
  });
});
