import { pino } from "pino";
import { afterAll, afterEach, inject } from "vitest";
import { migrate } from "../../bridge/migrate.ts";
import { createDatabase, dropDatabase } from "./databases.ts";

export const silentLogger = pino({ level: "silent" });

export interface TestDatabase {
  name: string;
  url: string;
}

/**
 * A fresh database for one test file, created on the server the suite runs
 * against. Dropped after the file when every test passed; kept for
 * inspection when one failed. Call it at the top of a test file, where its
 * hooks can be registered.
 */
export async function createTestDatabase(
  label: string,
  serverUrl = inject("databaseUrl"),
  options: { migrate?: boolean } = {},
): Promise<TestDatabase> {
  const database = await createDatabase(serverUrl, `tb_${label}`);
  if (options.migrate !== false) await migrate(database.url);
  let failed = false;
  afterEach((context) => {
    if (context.task.result?.state === "fail") failed = true;
  });
  afterAll(async () => {
    if (failed) {
      console.error(`kept database ${database.name} for inspection: ${database.url}`);
      return;
    }
    await dropDatabase(serverUrl, database.name);
  });
  return database;
}
