import type pg from "pg";
import { generateSecret, hashSecret, secretLookup } from "../broker/auth/secrets.ts";
import { validateFilter } from "../broker/topic-filter.ts";

export const ROLES = ["device", "gateway", "reader", "admin"] as const;
export type Role = (typeof ROLES)[number];

export const PERMISSIONS = ["allow", "deny"] as const;
export const ACTIONS = ["publish", "subscribe", "all"] as const;

export interface Rule {
  permission: (typeof PERMISSIONS)[number];
  action: (typeof ACTIONS)[number];
  /** A topic filter; `%u` stands for the identity's id, `%c` for the client id. */
  pattern: string;
}

/** What authentication and the ACL need of an identity. */
export interface Identity {
  id: string;
  role: Role;
  secretHash: string;
  /** The secret's public first characters, which find it for a Bearer token. */
  secretLookup: string;
  enabled: boolean;
  rules: Rule[];
}

export interface IdentitySummary {
  id: string;
  role: Role;
  enabled: boolean;
  createdAt: Date;
  lastSeenAt: Date | null;
  rules: (Rule & { id: number })[];
}

/** Letters, digits, `.`, `_` and `-`, starting with a letter or digit: safe as a topic level. */
export const IDENTITY_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export class IdentityError extends Error {
  override name = "IdentityError";
}

/** The channel on which every change to an identity or its rules is announced (a trigger sends it). */
export const IDENTITY_CHANNEL = "telemetry_bridge_identities";

function checkId(id: string): void {
  if (!IDENTITY_ID.test(id)) {
    throw new IdentityError(
      `invalid id "${id}": use 1–128 letters, digits, ".", "_" or "-", starting with a letter or digit`,
    );
  }
}

interface IdentityRow {
  id: string;
  role: Role;
  secret_hash: string;
  secret_lookup: string;
  enabled: boolean;
  rules: Rule[] | null;
}

const SELECT_IDENTITY = `SELECT i.id, i.role, i.secret_hash, i.secret_lookup, i.enabled,
    (SELECT json_agg(json_build_object('permission', r.permission, 'action', r.action, 'pattern', r.pattern) ORDER BY r.id)
       FROM identity_rules r WHERE r.identity_id = i.id) AS rules
  FROM identities i`;

function toIdentity(row: IdentityRow): Identity {
  return {
    id: row.id,
    role: row.role,
    secretHash: row.secret_hash,
    secretLookup: row.secret_lookup,
    enabled: row.enabled,
    rules: row.rules ?? [],
  };
}

/** Identities and their rules in PostgreSQL: read by the service, changed by `npm run devices`. */
export class IdentityStore {
  constructor(private readonly db: pg.Pool | pg.Client) {}

  async find(id: string): Promise<Identity | undefined> {
    if (!IDENTITY_ID.test(id)) return undefined;
    const { rows } = await this.db.query<IdentityRow>(`${SELECT_IDENTITY} WHERE i.id = $1`, [id]);
    return rows[0] && toIdentity(rows[0]);
  }

  /** Every identity with its rules. */
  async all(): Promise<Identity[]> {
    const { rows } = await this.db.query<IdentityRow>(SELECT_IDENTITY);
    return rows.map(toIdentity);
  }

  /** Creates identities with new secrets, all or none; returns each id's secret. */
  async add(
    ids: readonly string[],
    role: Role,
    onHashed: (done: number) => void = () => {},
  ): Promise<Map<string, string>> {
    if (!ROLES.includes(role)) {
      throw new IdentityError(`invalid role "${role}": use ${ROLES.join(", ")}`);
    }
    for (const id of ids) checkId(id);
    const secrets = new Map(ids.map((id) => [id, generateSecret()] as const));
    // Hashes run on libuv's thread pool: several at a time.
    let hashed = 0;
    const values = await Promise.all(
      [...secrets].map(async ([id, secret]) => {
        const hash = await hashSecret(secret);
        onHashed(++hashed);
        return [id, role, hash, secretLookup(secret)];
      }),
    );
    try {
      await this.db.query(
        `INSERT INTO identities (id, role, secret_hash, secret_lookup)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])`,
        [0, 1, 2, 3].map((column) => values.map((value) => value[column])),
      );
    } catch (error) {
      if ((error as { code?: string }).code === "23505") {
        throw new IdentityError(
          `${(error as { detail?: string }).detail ?? "an id already exists"}`,
        );
      }
      throw error;
    }
    return secrets;
  }

  async list(): Promise<IdentitySummary[]> {
    const { rows } = await this.db.query<{
      id: string;
      role: Role;
      enabled: boolean;
      created_at: Date;
      last_seen_at: Date | null;
      rules: (Rule & { id: number })[] | null;
    }>(
      `SELECT i.id, i.role, i.enabled, i.created_at, i.last_seen_at,
         (SELECT json_agg(json_build_object('id', r.id, 'permission', r.permission, 'action', r.action, 'pattern', r.pattern) ORDER BY r.id)
            FROM identity_rules r WHERE r.identity_id = i.id) AS rules
       FROM identities i ORDER BY i.id`,
    );
    return rows.map((row) => ({
      id: row.id,
      role: row.role,
      enabled: row.enabled,
      createdAt: row.created_at,
      lastSeenAt: row.last_seen_at,
      rules: row.rules ?? [],
    }));
  }

  /** False when there is no such identity. */
  async setEnabled(id: string, enabled: boolean): Promise<boolean> {
    const result = await this.db.query(
      "UPDATE identities SET enabled = $2, updated_at = now() WHERE id = $1",
      [id, enabled],
    );
    return result.rowCount === 1;
  }

  /** A new secret for `id`; the old one stops working. Undefined when there is no such identity. */
  async rotate(id: string): Promise<string | undefined> {
    const secret = generateSecret();
    const result = await this.db.query(
      "UPDATE identities SET secret_hash = $2, secret_lookup = $3, updated_at = now() WHERE id = $1",
      [id, await hashSecret(secret), secretLookup(secret)],
    );
    return result.rowCount === 1 ? secret : undefined;
  }

  async remove(id: string): Promise<boolean> {
    const result = await this.db.query("DELETE FROM identities WHERE id = $1", [id]);
    return result.rowCount === 1;
  }

  /** Adds a rule; returns its id. */
  async addRule(id: string, rule: Rule): Promise<number> {
    const problem = validateFilter(rule.pattern.replace(/%[uc]/g, "x"));
    if (problem) throw new IdentityError(`invalid pattern "${rule.pattern}": it ${problem}`);
    if (!PERMISSIONS.includes(rule.permission)) {
      throw new IdentityError(`invalid permission "${rule.permission}": use allow or deny`);
    }
    if (!ACTIONS.includes(rule.action)) {
      throw new IdentityError(`invalid action "${rule.action}": use ${ACTIONS.join(", ")}`);
    }
    const { rows } = await this.db.query<{ id: number }>(
      `INSERT INTO identity_rules (identity_id, permission, action, pattern)
       SELECT id, $2, $3, $4 FROM identities WHERE id = $1 RETURNING id`,
      [id, rule.permission, rule.action, rule.pattern],
    );
    if (!rows[0]) throw new IdentityError(`no identity "${id}"`);
    return Number(rows[0].id);
  }

  async removeRule(ruleId: number): Promise<boolean> {
    const result = await this.db.query("DELETE FROM identity_rules WHERE id = $1", [ruleId]);
    return result.rowCount === 1;
  }

  /** Records that these identities connected or made a request. */
  async touch(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.db.query("UPDATE identities SET last_seen_at = now() WHERE id = ANY($1::text[])", [
      ids,
    ]);
  }
}
