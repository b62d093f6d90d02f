import { ConfigError, loadConfig } from "../bridge/config.ts";
import { attachDatabase, redactUrl } from "../bridge/database.ts";
import { createLogger } from "../bridge/logger.ts";
import { migrate } from "../bridge/migrate.ts";

/**
 * `npm run migrate`: applies pending migrations to DATABASE_URL, or to the
 * embedded server (the running one, else started for the migration), and exits.
 */
async function main(): Promise<void> {
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const database = await attachDatabase(config, logger);
  try {
    const applied = await migrate(database.url);
    logger.info(
      { database: redactUrl(database.url), applied },
      applied.length > 0 ? `applied ${applied.length} migration(s)` : "database is up to date",
    );
  } finally {
    await database.stop();
  }
}

main().catch((error: unknown) => {
  const message = error instanceof Error ? error.message : String(error);
  console.error(error instanceof ConfigError ? `invalid configuration: ${message}` : message);
  process.exitCode = 1;
});
