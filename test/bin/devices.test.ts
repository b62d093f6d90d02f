import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { verifySecret } from "../../broker/auth/secrets.ts";
import { IdentityStore } from "../../storage/identities.ts";
import { connectDevice, publishAcked, reading } from "../helpers/device.ts";
import { freePort } from "../helpers/free-port.ts";
import { runCommand } from "../helpers/run-command.ts";
import { portsOf, spawnService } from "../helpers/service.ts";
import { createTestDatabase } from "../helpers/test-database.ts";

const db = await createTestDatabase("devices_cli");
const pool = new pg.Pool({ connectionString: db.url });
const store = new IdentityStore(pool);
const work = await fs.mkdtemp(path.join(os.tmpdir(), "telemetry-bridge-devices-"));

afterAll(async () => {
  await pool.end();
  await fs.rm(work, { recursive: true, force: true });
});

function devices(args: string[], env: NodeJS.ProcessEnv = { DATABASE_URL: db.url }) {
  const { DATABASE_URL: _, ...inherited } = process.env;
  return runCommand(process.execPath, ["--import", "tsx", "bin/devices.ts", ...args], {
    ...inherited,
    ...env,
  });
}

describe("npm run devices", () => {
  it("adds an identity and prints its secret once, as the last line; only a hash is stored", async () => {
    const result = await devices(["add", "cli-1"]);
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trim().split("\n");
    const secret = lines.at(-1) as string;
    expect(lines[0]).toBe("added device cli-1; its secret, shown only this once:");
    const stored = await store.find("cli-1");
    expect(stored?.role).toBe("device");
    expect(stored?.secretHash).not.toContain(secret);
    expect(stored?.secretHash).toMatch(/^scrypt\$4096\$8\$1\$/);
    expect(await verifySecret(secret, stored?.secretHash as string)).toBe(true);
    const { rows } = await pool.query("SELECT * FROM identities WHERE id = 'cli-1'");
    expect(JSON.stringify(rows)).not.toContain(secret);

    const json = await devices(["add", "cli-reader", "--role", "reader", "--json"]);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ id: "cli-reader", role: "reader" });
  });

  it("lists, disables, enables, rotates and removes, and adds and removes rules", async () => {
    expect((await devices(["disable", "cli-1"])).code).toBe(0);
    expect((await store.find("cli-1"))?.enabled).toBe(false);
    expect((await devices(["enable", "cli-1"])).code).toBe(0);
    const before = (await store.find("cli-1"))?.secretHash;
    const rotated = await devices(["rotate", "cli-1", "--json"]);
    const { secret } = JSON.parse(rotated.stdout);
    const after = (await store.find("cli-1"))?.secretHash as string;
    expect(after).not.toBe(before);
    expect(await verifySecret(secret, after)).toBe(true);

    const rule = await devices(["allow", "cli-1", "publish", "status/%u"]);
    expect(rule.stdout).toMatch(/^rule #(\d+): allow cli-1 publish status\/%u/);
    const list = await devices(["list", "--json"]);
    const listed = JSON.parse(list.stdout) as { id: string; rules: { id: number }[] }[];
    const cli1 = listed.find((identity) => identity.id === "cli-1");
    expect(cli1?.rules).toHaveLength(1);
    const table = await devices(["list"]);
    expect(table.stdout).toMatch(/^cli-1\tdevice\tyes\t.*\tnever\t#\d+ allow publish status\/%u$/m);
    expect((await devices(["unrule", String(cli1?.rules[0]?.id)])).code).toBe(0);
    expect((await store.find("cli-1"))?.rules).toEqual([]);

    expect((await devices(["remove", "cli-1"])).code).toBe(0);
    expect(await store.find("cli-1")).toBeUndefined();
  });

  it("adds a fleet with the secrets in a file only its owner can read", async () => {
    const file = path.join(work, "fleet.txt");
    const result = await devices([
      "add",
      "--count",
      "50",
      "--prefix",
      "fleet-",
      "--secrets-file",
      file,
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/added 50 device identities, fleet-1 … fleet-50; secrets in/);
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    const lines = (await fs.readFile(file, "utf8")).trim().split("\n");
    expect(lines).toHaveLength(50);
    const [id, secret] = (lines[49] as string).split(":");
    expect(
      await verifySecret(secret as string, (await store.find(id as string))?.secretHash as string),
    ).toBe(true);

    const again = await devices([
      "add",
      "--count",
      "5",
      "--prefix",
      "other-",
      "--secrets-file",
      file,
    ]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/exists: choose another --secrets-file/);
    expect(await store.find("other-1")).toBeUndefined();
  });

  it("says what is wrong, with exit code 1 for a refused change and 2 for bad usage", async () => {
    const unknown = await devices(["disable", "nobody"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr.trim()).toBe('no identity "nobody"');
    const twice = await devices(["add", "cli-reader"]);
    expect(twice.code).toBe(1);
    expect(twice.stderr).toMatch(/already exists/);
    const badId = await devices(["add", "a/b"]);
    expect(badId.code).toBe(1);
    expect(badId.stderr).toMatch(/invalid id "a\/b"/);
    const badRole = await devices(["add", "x", "--role", "root"]);
    expect(badRole.code).toBe(2);
    expect(badRole.stderr).toMatch(/--role must be one of device, gateway, reader, admin/);
    const badPattern = await devices(["allow", "cli-reader", "subscribe", "a/#/b"]);
    expect(badPattern.code).toBe(1);
    expect(badPattern.stderr).toMatch(/invalid pattern "a\/#\/b"/);
    expect((await devices(["frobnicate"])).code).toBe(2);
  });

  it("works on the embedded database while the service runs on it", async () => {
    const dataDir = path.join(work, "data");
    await fs.mkdir(dataDir);
    await fs.chmod(work, 0o755);
    const env = { DATA_DIR: dataDir, PG_PORT: String(await freePort()) };
    const service = await spawnService({ ...env, MQTT_PORT: "0", ALLOW_ANONYMOUS: "false" });
    try {
      const added = await devices(["add", "embedded-1"], env);
      expect(added.code, added.stderr).toBe(0);
      const device = await connectDevice(portsOf(service).mqtt, "embedded-1", {
        username: "embedded-1",
        password: added.stdout.trim().split("\n").at(-1),
      });
      await publishAcked(device, "telemetry/embedded-1/env", reading("embedded-1", 1));
      await device.endAsync();
    } finally {
      service.child.kill("SIGTERM");
      await service.exited;
    }
  });
});
