import type { FastifyRequest } from "fastify";
import type { Authenticator } from "../broker/auth/authenticator.ts";
import type { Identity } from "../storage/identities.ts";

/** A request refused for who sent it: 401, 403, 429 or 503, with the headers that go with it. */
export class AccessError extends Error {
  constructor(
    readonly statusCode: 401 | 403 | 429 | 503,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const CHALLENGE = { "WWW-Authenticate": 'Basic realm="telemetry-bridge", Bearer' };

function basic(encoded: string): { id: string; secret: string } | undefined {
  const decoded = Buffer.from(encoded, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon <= 0) return undefined;
  return { id: decoded.slice(0, colon), secret: decoded.slice(colon + 1) };
}

/**
 * The identity behind a request, by HTTP Basic (`id:secret`) or
 * `Authorization: Bearer <secret>`; undefined for a request without
 * credentials when anonymous access is on. Credentials that are sent are
 * always checked, anonymous access or not.
 */
export async function identify(
  request: FastifyRequest,
  authenticator: Authenticator,
  anonymous: boolean,
): Promise<Identity | undefined> {
  const header = request.headers.authorization;
  if (!header) {
    if (anonymous) return undefined;
    throw new AccessError(401, "credentials are required", CHALLENGE);
  }
  const [scheme = "", value = ""] = header.trim().split(/\s+/, 2);
  let result: Awaited<ReturnType<Authenticator["check"]>>;
  if (scheme.toLowerCase() === "basic") {
    const credentials = basic(value);
    if (!credentials) throw new AccessError(401, "malformed Basic credentials", CHALLENGE);
    result = await authenticator.check(credentials.id, credentials.secret, request.ip);
  } else if (scheme.toLowerCase() === "bearer" && value) {
    result = await authenticator.checkSecret(value, request.ip);
  } else {
    throw new AccessError(401, "use Basic or Bearer credentials", CHALLENGE);
  }
  if (result.ok) return result.identity;
  switch (result.reason) {
    case "bad_credentials":
      throw new AccessError(401, "bad credentials", CHALLENGE);
    case "disabled":
      throw new AccessError(403, "this identity is disabled");
    case "throttled":
      throw new AccessError(429, "too many failed attempts; try again later", {
        "Retry-After": "60",
      });
    case "busy":
      throw new AccessError(503, "too many logins at once; try again", { "Retry-After": "5" });
  }
}

/** Refuses a request whose identity is not one of `roles` (anonymous access passes). */
export function requireRole(
  identity: Identity | undefined,
  roles: readonly Identity["role"][],
): void {
  if (identity && !roles.includes(identity.role)) {
    throw new AccessError(403, `needs the role ${roles.join(" or ")}`);
  }
}
