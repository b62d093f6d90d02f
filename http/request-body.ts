import { isUtf8 } from "node:buffer";
import { MAX_JSON_DEPTH, nestsDeeperThan } from "../bridge/telemetry-message.ts";

/** A request the API cannot serve: answered with its status, the field at fault and why. */
export class RequestError extends Error {
  constructor(
    readonly statusCode: number,
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
  }
}

/** `{"events": [{"payload": …}]}`: the levels a body adds around an event's payload. */
const ENVELOPE_DEPTH = 3;
export const MAX_BODY_DEPTH = MAX_JSON_DEPTH + ENVELOPE_DEPTH;

/**
 * Where in `value` a number lies that JSON.parse could only read as
 * ±Infinity (such as 1e400), as a path like `.events[0].payload.v`; ""
 * when `value` is one; undefined when there is none. Recursion is safe:
 * the depth was checked first.
 */
function infiniteNumberAt(value: unknown): string | undefined {
  if (typeof value === "number") return Number.isFinite(value) ? undefined : "";
  if (value === null || typeof value !== "object") return undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const at = infiniteNumberAt(value[i]);
      if (at !== undefined) return `[${i}]${at}`;
    }
    return undefined;
  }
  for (const [key, inner] of Object.entries(value)) {
    const at = infiniteNumberAt(inner);
    if (at !== undefined) return `.${key}${at}`;
  }
  return undefined;
}

/**
 * A JSON request body, read from its bytes: invalid UTF-8, invalid JSON,
 * nesting past MAX_BODY_DEPTH and numbers past a double's range are each a
 * 400 naming the field. JSON.parse does not recurse; nothing that does sees
 * a value before its depth is checked.
 */
export function parseJsonBody(body: Buffer): unknown {
  if (!isUtf8(body)) throw new RequestError(400, "body", "is not valid UTF-8");
  let value: unknown;
  try {
    value = JSON.parse(body.toString("utf8"));
  } catch (error) {
    throw new RequestError(400, "body", `is not valid JSON: ${(error as Error).message}`);
  }
  if (nestsDeeperThan(value, MAX_BODY_DEPTH)) {
    throw new RequestError(
      400,
      "body",
      `nests arrays and objects deeper than ${MAX_BODY_DEPTH} levels (an event's payload: ${MAX_JSON_DEPTH})`,
    );
  }
  const at = infiniteNumberAt(value);
  if (at !== undefined) {
    throw new RequestError(
      400,
      at === "" ? "body" : at.replace(/^\./, ""),
      "is a number beyond the range of a 64-bit float (±1.8e308)",
    );
  }
  return value;
}
