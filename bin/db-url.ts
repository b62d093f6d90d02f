import { ConfigError, loadConfig } from "../bridge/config.ts";
import { embeddedUrl } from "../bridge/database.ts";

/**
 * `npm run db-url`: prints the database URL, password included, as the only
 * line on stdout, for `psql "$(npm run -s db-url)"` and the like.
 */
async function main(): Promise<void> {
  const config = loadConfig();
  const url = config.databaseUrl ?? (await embeddedUrl(config.dataDir, config.pgPort));
  if (url === undefined) {
    console.error(
      `no embedded PostgreSQL in ${config.dataDir} yet: create it with npm start or npm run migrate ` +
        "(or set DATABASE_URL to use another server)",
    );
    process.exitCode = 1;
    return;
  }
  process.stdout.write(`${url}\n`);
}

main().catch((error: unknown) => {
  const message = error instanceof Error ? error.message : String(error);
  console.error(error instanceof ConfigError ? `invalid configuration: ${message}` : message);
  process.exitCode = 1;
});
