/**
 * Failures counted per key (a source address, an identity id) in fixed
 * windows. Memory is bounded: past `maxKeys` the oldest keys are forgotten,
 * which only ever lets an attacker try a little more, never blocks anyone
 * for longer.
 */
export class Throttle {
  private readonly failures = new Map<string, { count: number; until: number }>();

  constructor(
    private readonly limit: number,
    private readonly windowMs: number,
    private readonly maxKeys = 100_000,
  ) {}

  blocked(key: string, now = Date.now()): boolean {
    const entry = this.failures.get(key);
    if (!entry) return false;
    if (entry.until <= now) {
      this.failures.delete(key);
      return false;
    }
    return entry.count >= this.limit;
  }

  fail(key: string, now = Date.now()): void {
    const entry = this.failures.get(key);
    if (entry && entry.until > now) {
      entry.count++;
      return;
    }
    this.failures.delete(key);
    this.failures.set(key, { count: 1, until: now + this.windowMs });
    if (this.failures.size > this.maxKeys) {
      const oldest = this.failures.keys().next().value;
      if (oldest !== undefined) this.failures.delete(oldest);
    }
  }
}
