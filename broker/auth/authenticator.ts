import { timingSafeEqual } from "node:crypto";
import { availableParallelism } from "node:os";
import type { Identity } from "../../storage/identities.ts";
import { fingerprint, verifySecret } from "./secrets.ts";
import { Throttle } from "./throttle.ts";

export type AuthResult =
  | { ok: true; identity: Identity }
  | { ok: false; reason: "bad_credentials" | "disabled" | "throttled" | "busy" };

/** Where identities are looked up (the in-memory directory). */
export interface IdentitySource {
  find(id: string): Promise<Identity | undefined>;
  /** The candidates for a secret given alone. */
  findBySecret(secret: string): Promise<Identity[]>;
}

export interface AuthenticatorOptions {
  /** Failed attempts allowed per source address, and per id, in each window. */
  failuresPerWindow: number;
  windowMs: number;
  /** Verified secrets remembered, so a reconnect costs no hash. */
  cacheEntries: number;
  /** Hashes waiting for a thread beyond this are refused as "busy". */
  maxQueuedHashes: number;
}

export const AUTH_DEFAULTS: AuthenticatorOptions = {
  failuresPerWindow: 10,
  windowMs: 60_000,
  cacheEntries: 100_000,
  maxQueuedHashes: 2_000,
};

/**
 * Checks an id and secret against the identity store.
 *
 * The identity is looked up at every check, so a disabled, rotated or
 * removed identity is refused at once; only the scrypt is skipped when the
 * same secret was verified against the same stored hash before. Failed attempts are counted per source address and per id: past
 * the limit, further attempts that would need a hash are refused without
 * one until the window ends, so guessing costs the guesser, not the
 * service, and a device whose secret is cached still gets in. Hashes run
 * on all cores but one (at least one), so that a storm of logins leaves a
 * core to the devices already connected; the rest wait in a bounded queue.
 */
export class Authenticator {
  private readonly verified = new Map<string, { hash: string; fingerprint: Buffer }>();
  private readonly byAddress: Throttle;
  private readonly byId: Throttle;
  private readonly queue: (() => void)[] = [];
  private hashing = 0;
  private readonly maxHashing = Math.max(1, availableParallelism() - 1);

  constructor(
    private readonly store: IdentitySource,
    private readonly options: AuthenticatorOptions = AUTH_DEFAULTS,
  ) {
    this.byAddress = new Throttle(options.failuresPerWindow, options.windowMs);
    this.byId = new Throttle(options.failuresPerWindow, options.windowMs);
  }

  /** An id and its secret (MQTT username and password, HTTP Basic). */
  async check(id: string, secret: string, address: string): Promise<AuthResult> {
    const identity = await this.store.find(id);
    const result = identity
      ? await this.match(identity, secret, address)
      : ({ ok: false, reason: "bad_credentials" } as const);
    if (!result.ok && result.reason === "bad_credentials") this.failed(address, identity?.id);
    return result;
  }

  /** A secret alone (HTTP Bearer): found by its lookup prefix. */
  async checkSecret(secret: string, address: string): Promise<AuthResult> {
    const candidates = await this.store.findBySecret(secret);
    for (const identity of candidates) {
      const result = await this.match(identity, secret, address);
      if (result.ok || result.reason !== "bad_credentials") return result;
    }
    this.failed(address, undefined);
    return { ok: false, reason: "bad_credentials" };
  }

  /** An identity proven another way (a client certificate's CN). */
  async known(id: string): Promise<AuthResult> {
    const identity = await this.store.find(id);
    if (!identity) return { ok: false, reason: "bad_credentials" };
    if (!identity.enabled) return { ok: false, reason: "disabled" };
    return { ok: true, identity };
  }

  /** Drops what is remembered of an identity that changed (or of all). */
  forget(id?: string): void {
    if (id === undefined) this.verified.clear();
    else this.verified.delete(id);
  }

  /** Checks the secret; a mismatch is counted by the caller, which knows what was claimed. */
  private async match(identity: Identity, secret: string, address: string): Promise<AuthResult> {
    const print = fingerprint(secret);
    const cached = this.verified.get(identity.id);
    let ok =
      cached !== undefined &&
      cached.hash === identity.secretHash &&
      timingSafeEqual(cached.fingerprint, print);
    if (!ok) {
      if (this.byAddress.blocked(address) || this.byId.blocked(identity.id)) {
        return { ok: false, reason: "throttled" };
      }
      const slot = await this.slot();
      if (!slot) return { ok: false, reason: "busy" };
      try {
        ok = await verifySecret(secret, identity.secretHash);
      } finally {
        this.release();
      }
      if (ok) this.remember(identity.id, identity.secretHash, print);
    }
    if (!ok) return { ok: false, reason: "bad_credentials" };
    if (!identity.enabled) return { ok: false, reason: "disabled" };
    return { ok: true, identity };
  }

  private failed(address: string, id: string | undefined): void {
    this.byAddress.fail(address);
    if (id !== undefined) this.byId.fail(id);
  }

  private remember(id: string, hash: string, print: Buffer): void {
    this.verified.delete(id);
    this.verified.set(id, { hash, fingerprint: print });
    if (this.verified.size > this.options.cacheEntries) {
      const oldest = this.verified.keys().next().value;
      if (oldest !== undefined) this.verified.delete(oldest);
    }
  }

  private slot(): Promise<boolean> {
    if (this.hashing < this.maxHashing) {
      this.hashing++;
      return Promise.resolve(true);
    }
    if (this.queue.length >= this.options.maxQueuedHashes) return Promise.resolve(false);
    return new Promise((resolve) => this.queue.push(() => resolve(true)));
  }

  private release(): void {
    const next = this.queue.shift();
    if (next) next();
    else this.hashing--;
  }
}
