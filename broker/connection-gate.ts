export interface ConnectionLimits {
  /** Connections held at once, over every listener. */
  maxConnections: number;
  /** Connections held at once from one source address. */
  maxPerAddress: number;
  /** New connections per second from one source address, in a burst of ten times as many. */
  ratePerAddress: number;
}

/**
 * Why a connection was closed at the door: over a limit, or (behind a load
 * balancer) from a peer that is not one.
 */
export type Refusal = "connections" | "address_connections" | "address_rate" | "untrusted_proxy";

const BURST_SECONDS = 10;
/** Addresses whose bucket is full again are forgotten once this many are tracked. */
const SWEEP_AT = 10_000;

/**
 * Admits or refuses a new connection by its source address before any of
 * its bytes are read: caps on connections in all and per address, and a
 * token bucket of new connections per address.
 */
export class ConnectionGate {
  readonly refused: Record<Refusal, number> = {
    connections: 0,
    address_connections: 0,
    address_rate: 0,
    untrusted_proxy: 0,
  };
  private open = 0;
  private readonly byAddress = new Map<string, number>();
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(private readonly limits: ConnectionLimits) {}

  get connections(): number {
    return this.open;
  }

  /** Undefined when admitted (release it once closed), else why not. */
  admit(address: string, now = Date.now()): Refusal | undefined {
    const refusal = this.check(address, now);
    if (refusal) {
      this.refused[refusal]++;
      return refusal;
    }
    this.open++;
    this.byAddress.set(address, (this.byAddress.get(address) ?? 0) + 1);
    return undefined;
  }

  /**
   * Holds a place in the total for a connection whose address is not read
   * yet (a PROXY protocol header comes first); "connections" when none is
   * left. `unhold()` gives the place back, before `admit` or instead of it.
   */
  hold(): Refusal | undefined {
    if (this.open >= this.limits.maxConnections) {
      this.refused.connections++;
      return "connections";
    }
    this.open++;
    return undefined;
  }

  unhold(): void {
    this.open--;
  }

  release(address: string): void {
    this.open--;
    const count = (this.byAddress.get(address) ?? 1) - 1;
    if (count > 0) this.byAddress.set(address, count);
    else this.byAddress.delete(address);
  }

  private check(address: string, now: number): Refusal | undefined {
    if (this.open >= this.limits.maxConnections) return "connections";
    if ((this.byAddress.get(address) ?? 0) >= this.limits.maxPerAddress) {
      return "address_connections";
    }
    const capacity = this.limits.ratePerAddress * BURST_SECONDS;
    const bucket = this.buckets.get(address) ?? { tokens: capacity, at: now };
    bucket.tokens = Math.min(
      capacity,
      bucket.tokens + ((now - bucket.at) / 1000) * this.limits.ratePerAddress,
    );
    bucket.at = now;
    if (bucket.tokens < 1) return "address_rate";
    bucket.tokens--;
    this.buckets.set(address, bucket);
    if (this.buckets.size > SWEEP_AT) this.sweep(now, capacity);
    return undefined;
  }

  private sweep(now: number, capacity: number): void {
    for (const [address, bucket] of this.buckets) {
      if (bucket.tokens + ((now - bucket.at) / 1000) * this.limits.ratePerAddress >= capacity) {
        this.buckets.delete(address);
      }
    }
  }
}
