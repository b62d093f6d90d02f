import { randomBytes } from "node:crypto";
import pg from "pg";
import { pino } from "pino";
import { afterAll, afterEach, inject } from "vitest";
import { migrate } from "../../bridge/migrate.ts";

export const silentLogger = pino({ level: "silent" });

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

async function admin<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

export interface TestDatabase {
  name: string;
  url: string;
}

/**
 * A fresh database for one test file, created on the server the suite runs
 * against. Dropped after the file when every test passed; kept for
 * inspection when one failed.
 */
/** Call it at the top of a test file, where its hooks can be registered. */
export async function createTestDatabase(
  label: string,
  serverUrl = inject("databaseUrl"),
  options: { migrate?: boolean } = {},
): Promise<TestDatabase> {
  const name = `tb_${label}_${randomBytes(4).toString("hex")}`;
  await admin(serverUrl, (client) => client.query(`CREATE DATABASE ${name}`));
  const url = withDatabase(serverUrl, name);
  if (options.migrate !== false) await migrate(url);
  let failed = false;
  afterEach((context) => {
    if (context.task.result?.state === "fail") failed = true;
  });
  afterAll(async () => {
    if (failed) {
      console.error(`kept database ${name} for inspection: ${url}`);
      return;
    }
    await admin(serverUrl, (client) =>
      client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
    );
  });
  return { name, url };
}
