import fs from "node:fs/promises";
import { parseArgs } from "node:util";
import pg from "pg";
import { pino } from "pino";
import { ConfigError, loadConfig } from "../bridge/config.ts";
import { attachDatabase } from "../bridge/database.ts";
import { migrate } from "../bridge/migrate.ts";
import {
  ACTIONS,
  IdentityError,
  IdentityStore,
  type PERMISSIONS,
  ROLES,
  type Role,
  type Rule,
} from "../storage/identities.ts";

const USAGE = `npm run devices -- <command>

  add <id> [--role device|gateway|reader|admin] [--json]
      creates an identity; its secret is printed once, as the last line
  add --count N --prefix <prefix> [--role …] [--secrets-file FILE]
      creates <prefix>1 … <prefix>N; their secrets go to FILE (default
      ./secrets.txt, never overwritten), one "id:secret" a line, mode 0600
  list [--json]
  disable <id> | enable <id> | remove <id>
  rotate <id> [--json]          a new secret; the old one stops working
  allow <id> publish|subscribe|all <pattern>
  deny <id> publish|subscribe|all <pattern>
      an extra rule: a topic filter where %u is the id and %c the client id
  unrule <rule id>

Uses DATABASE_URL, or the embedded PostgreSQL under DATA_DIR (running or not).
Open connections of a disabled, rotated or removed identity, or one whose
rules change, are closed at once by every running service.`;

class UsageError extends Error {}

function role(value: string | undefined): Role {
  const chosen = value ?? "device";
  if (!ROLES.includes(chosen as Role)) {
    throw new UsageError(`--role must be one of ${ROLES.join(", ")} (got "${chosen}")`);
  }
  return chosen as Role;
}

function positiveInteger(name: string, value: string | undefined): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1_000_000) {
    throw new UsageError(`${name} must be an integer from 1 to 1000000 (got "${value}")`);
  }
  return n;
}

async function run(store: IdentityStore, argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      role: { type: "string" },
      json: { type: "boolean", default: false },
      count: { type: "string" },
      prefix: { type: "string" },
      "secrets-file": { type: "string" },
    },
  });
  const [command, ...rest] = positionals;
  const out = (line: string) => process.stdout.write(`${line}\n`);
  const needId = () => {
    const id = rest[0];
    if (!id || rest.length !== 1) throw new UsageError(`${command} takes one id`);
    return id;
  };
  const missing = (id: string) => new IdentityError(`no identity "${id}"`);

  switch (command) {
    case "add": {
      const chosen = role(values.role);
      if (values.count !== undefined) {
        if (rest.length > 0) throw new UsageError("add --count takes no id");
        const count = positiveInteger("--count", values.count);
        const prefix = values.prefix;
        if (!prefix) throw new UsageError("add --count needs --prefix");
        const file = values["secrets-file"] ?? "secrets.txt";
        // Opened first, so a file in the way stops the command before anything is created.
        const handle = await fs.open(file, "wx", 0o600).catch((error: NodeJS.ErrnoException) => {
          throw new UsageError(
            error.code === "EEXIST"
              ? `${file} exists: choose another --secrets-file`
              : `cannot create ${file}: ${error.message}`,
          );
        });
        try {
          const ids = Array.from({ length: count }, (_, n) => `${prefix}${n + 1}`);
          const step = Math.max(1000, Math.ceil(count / 10));
          const secrets = await store.add(ids, chosen, (done) => {
            if (done % step === 0 && done < count)
              console.error(`hashed ${done} of ${count} secrets`);
          });
          await handle.writeFile([...secrets].map(([id, secret]) => `${id}:${secret}\n`).join(""));
          out(
            `added ${count} ${chosen} identities, ${ids[0]} … ${ids[count - 1]}; secrets in ${file}`,
          );
        } catch (error) {
          await handle.close();
          await fs.rm(file, { force: true });
          throw error;
        }
        await handle.close();
        return;
      }
      const id = needId();
      const secret = (await store.add([id], chosen)).get(id);
      if (values.json) out(JSON.stringify({ id, role: chosen, secret }));
      else {
        out(`added ${chosen} ${id}; its secret, shown only this once:`);
        out(secret ?? "");
      }
      return;
    }
    case "list": {
      const identities = await store.list();
      if (values.json) {
        out(JSON.stringify(identities));
        return;
      }
      if (identities.length === 0) {
        out("no identities: add one with npm run devices -- add <id>");
        return;
      }
      out(["id", "role", "enabled", "created", "last seen", "rules"].join("\t"));
      for (const identity of identities) {
        const rules = identity.rules
          .map((rule) => `#${rule.id} ${rule.permission} ${rule.action} ${rule.pattern}`)
          .join("; ");
        out(
          [
            identity.id,
            identity.role,
            identity.enabled ? "yes" : "no",
            identity.createdAt.toISOString(),
            identity.lastSeenAt?.toISOString() ?? "never",
            rules || "-",
          ].join("\t"),
        );
      }
      return;
    }
    case "disable":
    case "enable": {
      const id = needId();
      if (!(await store.setEnabled(id, command === "enable"))) throw missing(id);
      out(`${command}d ${id}`);
      return;
    }
    case "rotate": {
      const id = needId();
      const secret = await store.rotate(id);
      if (!secret) throw missing(id);
      if (values.json) out(JSON.stringify({ id, secret }));
      else {
        out(`rotated ${id}; its new secret, shown only this once:`);
        out(secret);
      }
      return;
    }
    case "remove": {
      const id = needId();
      if (!(await store.remove(id))) throw missing(id);
      out(`removed ${id}`);
      return;
    }
    case "allow":
    case "deny": {
      const [id, action, pattern] = rest;
      if (!id || !action || !pattern || rest.length !== 3) {
        throw new UsageError(`${command} takes <id> ${ACTIONS.join("|")} <pattern>`);
      }
      const rule: Rule = {
        permission: command satisfies (typeof PERMISSIONS)[number],
        action: action as Rule["action"],
        pattern,
      };
      const ruleId = await store.addRule(id, rule);
      out(`rule #${ruleId}: ${command} ${id} ${action} ${pattern}`);
      return;
    }
    case "unrule": {
      const ruleId = positiveInteger("the rule id", rest[0]);
      if (!(await store.removeRule(ruleId))) throw new IdentityError(`no rule #${ruleId}`);
      out(`removed rule #${ruleId}`);
      return;
    }
    default:
      throw new UsageError(command ? `unknown command "${command}"` : "a command is needed");
  }
}

/** `npm run devices -- …`: identities and their secrets, in the service's database. */
async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.length === 0 || argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return;
  }
  const config = loadConfig();
  // stdout is for what scripts read (the secret on the last line); logs go to stderr.
  const logger = pino({ level: "warn" }, pino.destination(2));
  const database = await attachDatabase(config, logger);
  const client = new pg.Client({ connectionString: database.url });
  try {
    await migrate(database.url);
    await client.connect();
    await run(new IdentityStore(client), argv);
  } finally {
    await client.end().catch(() => {});
    await database.stop();
  }
}

main().catch((error: unknown) => {
  const message = error instanceof Error ? error.message : String(error);
  const usage =
    error instanceof UsageError ||
    String((error as { code?: unknown }).code).startsWith("ERR_PARSE_ARGS");
  if (usage) console.error(`${message}\n\n${USAGE}`);
  else if (error instanceof ConfigError) console.error(`invalid configuration: ${message}`);
  else console.error(message);
  process.exitCode = usage ? 2 : 1;
});
