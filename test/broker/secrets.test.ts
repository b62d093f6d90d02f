import { describe, expect, it } from "vitest";
import {
  generateSecret,
  hashSecret,
  secretLookup,
  verifySecret,
} from "../../broker/auth/secrets.ts";

describe("secrets", () => {
  it("are 43 base64url characters that a command line cannot take for an option", () => {
    const secrets = Array.from({ length: 10_000 }, generateSecret);
    for (const secret of secrets) expect(secret).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_-]{42}$/);
    expect(new Set(secrets).size).toBe(secrets.length);
  });

  it("are stored as a salted scrypt hash that verifies only the same secret", async () => {
    const secret = generateSecret();
    const [first, second] = [await hashSecret(secret), await hashSecret(secret)];
    expect(first).toMatch(/^scrypt\$4096\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/);
    expect(first).not.toBe(second);
    expect(first).not.toContain(secret.slice(secretLookup(secret).length));
    expect(await verifySecret(secret, first)).toBe(true);
    expect(await verifySecret(secret, second)).toBe(true);
    expect(await verifySecret(generateSecret(), first)).toBe(false);
    expect(await verifySecret(secret, "md5$whatever")).toBe(false);
  });
});
