import fs from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";

/** The package's migrations/: one folder up from bridge/, two from the compiled dist/bridge/. */
export const MIGRATIONS_DIR = fileURLToPath(
  new URL(
    import.meta.url.endsWith(".ts") ? "../migrations/" : "../../migrations/",
    import.meta.url,
  ),
);

/** Arbitrary, fixed: every process migrating this database takes the same lock. */
const MIGRATION_LOCK = 7_352_114_020;

export interface Migration {
  id: number;
  name: string;
  sql: string;
}

/** `0001_name.sql` files in id order; a gap or a repeated id is an error. */
export async function readMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const files = (await fs.readdir(dir)).filter((file) => file.endsWith(".sql")).sort();
  const migrations: Migration[] = [];
  for (const file of files) {
    const match = /^(\d{4})_[a-z0-9_]+\.sql$/.exec(file);
    if (!match) throw new Error(`migration file ${file} must be named like 0001_description.sql`);
    const id = Number(match[1]);
    if (id !== migrations.length + 1) {
      throw new Error(`migration ${file} is out of sequence: expected id ${migrations.length + 1}`);
    }
    migrations.push({ id, name: file, sql: await fs.readFile(path.join(dir, file), "utf8") });
  }
  return migrations;
}

/**
 * Applies the pending migrations in one transaction under an advisory lock,
 * recording each; a second process waits for the first and then finds
 * nothing to do. Returns the names applied.
 */
export async function migrate(databaseUrl: string, dir = MIGRATIONS_DIR): Promise<string[]> {
  const migrations = await readMigrations(dir);
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await client.query("BEGIN");
    await client.query("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      id integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`);
    const done = await client.query<{ id: number }>("SELECT id FROM schema_migrations");
    const applied = new Set(done.rows.map((row) => row.id));
    const names: string[] = [];
    for (const migration of migrations) {
      if (applied.has(migration.id)) continue;
      try {
        await client.query(migration.sql);
      } catch (error) {
        throw new Error(`migration ${migration.name} failed: ${(error as Error).message}`, {
          cause: error,
        });
      }
      await client.query("INSERT INTO schema_migrations (id, name) VALUES ($1, $2)", [
        migration.id,
        migration.name,
      ]);
      names.push(migration.name);
    }
    await client.query("COMMIT");
    return names;
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  } finally {
    await client.end();
  }
}
