import type { Identity, IdentityStore } from "../../storage/identities.ts";
import { secretLookup } from "./secrets.ts";

/**
 * Every identity, held in memory and kept current from the database: loaded
 * whole when the change listener (re)connects, and one identity re-read
 * whenever a change to it is announced. Authentication reads it without a
 * query, so devices keep reconnecting while PostgreSQL is down (they are
 * not acknowledged until it returns, but they are not locked out), and a
 * reconnect storm of known identities costs no round trips. A lookup of an
 * identity whose change is being re-read waits for it.
 */
export class IdentityDirectory {
  private byId = new Map<string, Identity>();
  private byLookup = new Map<string, Set<string>>();
  private readonly pending = new Map<string, Promise<void>>();

  constructor(private readonly store: Pick<IdentityStore, "all" | "find">) {}

  /** Replaces everything with what the database holds now. */
  async load(): Promise<void> {
    const identities = await this.store.all();
    this.byId = new Map();
    this.byLookup = new Map();
    for (const identity of identities) this.put(identity);
  }

  /** Re-reads one identity; until then, lookups of it wait. A failed read forgets it. */
  refresh(id: string): Promise<void> {
    const previous = this.pending.get(id) ?? Promise.resolve();
    const next = previous
      .then(() => this.store.find(id))
      .then(
        (identity) => {
          this.remove(id);
          if (identity) this.put(identity);
        },
        () => this.remove(id),
      )
      .finally(() => {
        if (this.pending.get(id) === next) this.pending.delete(id);
      });
    this.pending.set(id, next);
    return next;
  }

  /**
   * An id not held is read from the database: it may have been added a
   * moment ago, before its announcement arrived. While PostgreSQL is down
   * it is unknown.
   */
  async find(id: string): Promise<Identity | undefined> {
    await (this.pending.get(id) ?? (this.byId.has(id) ? undefined : this.refresh(id)));
    return this.byId.get(id);
  }

  /** Identities whose secret starts like `secret`: the candidates for a Bearer token. */
  async findBySecret(secret: string): Promise<Identity[]> {
    const ids = [...(this.byLookup.get(secretLookup(secret)) ?? [])];
    const found = await Promise.all(ids.map((id) => this.find(id)));
    return found.filter((identity): identity is Identity => identity !== undefined);
  }

  /** True when an identity has this id (or may have, while a change to it is read). */
  has(id: string): boolean {
    return this.byId.has(id) || this.pending.has(id);
  }

  private put(identity: Identity): void {
    this.byId.set(identity.id, identity);
    const ids = this.byLookup.get(identity.secretLookup) ?? new Set<string>();
    ids.add(identity.id);
    this.byLookup.set(identity.secretLookup, ids);
  }

  private remove(id: string): void {
    const identity = this.byId.get(id);
    if (!identity) return;
    this.byId.delete(id);
    const ids = this.byLookup.get(identity.secretLookup);
    ids?.delete(id);
    if (ids?.size === 0) this.byLookup.delete(identity.secretLookup);
  }
}
