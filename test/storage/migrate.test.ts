import { createHash } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { DEAD_LETTER_PAYLOAD_BYTES } from "../../bridge/batch-writer.ts";
import { MIGRATIONS_DIR, migrate, readMigrations } from "../../bridge/migrate.ts";
import { runCommand } from "../helpers/run-command.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

async function runMigrateCli(
  databaseUrl: string,
): Promise<{ code: number | null; output: string }> {
  const { code, stdout, stderr } = await runCommand("npx", ["tsx", "bin/migrate.ts"], {
    ...process.env,
    DATABASE_URL: databaseUrl,
    LOG_LEVEL: "info",
  });
  return { code, output: stdout + stderr };
}

async function appliedMigrations(url: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ name: string }>(
      "SELECT name FROM schema_migrations ORDER BY id",
    );
    return rows.map((row) => row.name);
  } finally {
    await client.end();
  }
}

const fresh = await createTestDatabase("migrate_once", undefined, { migrate: false });
const raced = await createTestDatabase("migrate_race", undefined, { migrate: false });
const upgraded = await createTestDatabase("migrate_letters", undefined, { migrate: false });

describe("migrations", () => {
  it("are numbered without gaps", async () => {
    const migrations = await readMigrations();
    expect(migrations.map((m) => m.id)).toEqual(migrations.map((_, i) => i + 1));
  });

  it("apply once; running again is a no-op", async () => {
    const all = (await readMigrations()).map((m) => m.name);
    expect(await migrate(fresh.url)).toEqual(all);
    expect(await migrate(fresh.url)).toEqual([]);
    expect(await appliedMigrations(fresh.url)).toEqual(all);
  });

  it("turn dead letters recorded twice into one, keeping a prefix with the size and hash", async () => {
    const before = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-migrations-"));
    for (const migration of (await readMigrations()).filter((m) => m.name < "0005")) {
      await fs.copyFile(
        path.join(MIGRATIONS_DIR, migration.name),
        path.join(before, migration.name),
      );
    }
    await migrate(upgraded.url, before);
    await fs.rm(before, { recursive: true });
    const client = new pg.Client({ connectionString: upgraded.url });
    await client.connect();
    const big = Buffer.alloc(10_000, "x");
    await client.query(
      `INSERT INTO telemetry_rejected (received_at, topic, reason, payload) VALUES
         ('2026-01-01T00:00:00Z', 'telemetry/a/x', 'payload_not_json', '\\x7b'),
         ('2026-01-01T00:00:05Z', 'telemetry/a/x', 'payload_not_json', '\\x7b'),
         ('2026-01-01T00:00:09Z', 'telemetry/a/x', 'payload_not_json', $1),
         ('2026-01-01T00:00:07Z', 'telemetry/a/x', 'payload_not_json', '\\x7b')`,
      [big],
    );
    await migrate(upgraded.url);
    const { rows } = await client.query(
      `SELECT payload, payload_bytes, encode(payload_sha256, 'hex') AS sha256, occurrences,
              received_at, last_received_at FROM telemetry_rejected ORDER BY payload_bytes`,
    );
    await client.end();
    expect(rows).toEqual([
      {
        payload: Buffer.from("{"),
        payload_bytes: 1,
        sha256: createHash("sha256").update("{").digest("hex"),
        occurrences: 3,
        received_at: new Date("2026-01-01T00:00:00Z"),
        last_received_at: new Date("2026-01-01T00:00:07Z"),
      },
      {
        payload: big.subarray(0, DEAD_LETTER_PAYLOAD_BYTES),
        payload_bytes: big.length,
        sha256: createHash("sha256").update(big).digest("hex"),
        occurrences: 1,
        received_at: new Date("2026-01-01T00:00:09Z"),
        last_received_at: new Date("2026-01-01T00:00:09Z"),
      },
    ]);
  });

  it("exit non-zero with one line when the database cannot be reached", async () => {
    const result = await runMigrateCli("postgres://nobody@127.0.0.1:1/none");
    expect(result.code).toBe(1);
    expect(result.output).toMatch(
      /cannot reach PostgreSQL at postgres:\/\/nobody@127\.0\.0\.1:1\/none \(DATABASE_URL\)/,
    );
  });

  it("are safe when two processes start together", async () => {
    const [a, b] = await Promise.all([runMigrateCli(raced.url), runMigrateCli(raced.url)]);
    expect(a.code, a.output).toBe(0);
    expect(b.code, b.output).toBe(0);
    const said = [a.output, b.output].map((output) =>
      output.includes("database is up to date")
        ? "noop"
        : output.includes("applied")
          ? "applied"
          : output,
    );
    expect(said.sort()).toEqual(["applied", "noop"]);
    expect(await appliedMigrations(raced.url)).toEqual((await readMigrations()).map((m) => m.name));
  });
});
