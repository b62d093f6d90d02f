import { createHash, randomBytes, scrypt, timingSafeEqual } from "node:crypto";

/**
 * Secrets are 32 random bytes, base64url: 43 characters. The first
 * LOOKUP_CHARS of them are also stored in clear as a lookup key, so that a
 * Bearer token (a secret alone) finds its identity; the remaining 35
 * characters (210 bits) are what the hash protects.
 */
export const LOOKUP_CHARS = 8;
const SECRET_BYTES = 32;

/**
 * scrypt N=2^12, r=8, p=1: 4 MiB and about 9 ms of one core a hash here. The secrets
 * are random, not chosen by people, so no cost factor is what keeps them
 * from being guessed; the cost is there so a leaked table is useless
 * without work, and it is kept low because every cold connection pays it
 * (see the README's Security section). The parameters are stored with each
 * hash: changing them only needs a rotate.
 */
const PARAMS = { N: 2 ** 12, r: 8, p: 1 };
const KEY_BYTES = 32;
const SALT_BYTES = 16;

/** A new secret; never one that starts with "-", which command lines would take for an option. */
export function generateSecret(): string {
  for (;;) {
    const secret = randomBytes(SECRET_BYTES).toString("base64url");
    if (!secret.startsWith("-")) return secret;
  }
}

export function secretLookup(secret: string): string {
  return secret.slice(0, LOOKUP_CHARS);
}

function derive(
  secret: string,
  salt: Buffer,
  params: { N: number; r: number; p: number },
): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scrypt(
      secret,
      salt,
      KEY_BYTES,
      { ...params, maxmem: 256 * params.N * params.r + 1024 },
      (error, key) => (error ? reject(error) : resolve(key)),
    ),
  );
}

/** `scrypt$N$r$p$salt$key`, salt and key in base64url. */
export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(secret, salt, PARAMS);
  return [
    "scrypt",
    PARAMS.N,
    PARAMS.r,
    PARAMS.p,
    salt.toString("base64url"),
    key.toString("base64url"),
  ].join("$");
}

/** True when `secret` is the one `stored` was made from; false for a malformed hash. */
export async function verifySecret(secret: string, stored: string): Promise<boolean> {
  const [scheme, n, r, p, salt, key] = stored.split("$");
  if (scheme !== "scrypt" || !salt || !key) return false;
  const params = { N: Number(n), r: Number(r), p: Number(p) };
  if (![params.N, params.r, params.p].every(Number.isInteger)) return false;
  const expected = Buffer.from(key, "base64url");
  const actual = await derive(secret, Buffer.from(salt, "base64url"), params);
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}

/** A fast fingerprint of a secret already verified, for the in-memory cache only. */
export function fingerprint(secret: string): Buffer {
  return createHash("sha256").update(secret).digest();
}
