import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { type Database, startEmbedded } from "../../bridge/database.ts";
import { freePort } from "./free-port.ts";

export interface TestServer extends Database {
  dataDir: string;
  port: number;
  /** Stops the server and deletes its files. */
  destroy(): Promise<void>;
}

/** An empty temporary directory an embedded PostgreSQL can keep its data in. */
export async function createDataDir(): Promise<string> {
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-pg-"));
  // mkdtemp makes 0700; as root, the server's `postgres` user must get in.
  await fs.chmod(dataDir, 0o755);
  return dataDir;
}

/** A throwaway embedded PostgreSQL in a temporary directory, on a free port. */
export async function startTestServer(): Promise<TestServer> {
  const dataDir = await createDataDir();
  const port = await freePort();
  const database = await startEmbedded({ dataDir, port, logger: pino({ level: "silent" }) });
  return {
    ...database,
    dataDir,
    port,
    destroy: async () => {
      await database.stop();
      await fs.rm(dataDir, { recursive: true, force: true });
    },
  };
}
