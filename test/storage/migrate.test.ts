import pg from "pg";
import { describe, expect, it } from "vitest";
import { migrate, readMigrations } from "../../bridge/migrate.ts";
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
