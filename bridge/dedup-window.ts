/**
 * The keys of the most recently committed messages, oldest evicted first.
 *
 * Exact keys, not hashes or a Bloom filter: a hit means the message was
 * certainly committed before, so it can be acknowledged without a database
 * round trip. A miss proves nothing; the unique index decides.
 */
export class DedupWindow {
  private readonly keys = new Set<string>();

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.keys.size;
  }

  has(key: string): boolean {
    return this.keys.has(key);
  }

  add(key: string): void {
    if (this.capacity === 0 || this.keys.has(key)) return;
    if (this.keys.size >= this.capacity) {
      // A Set iterates in insertion order: the first key is the oldest.
      const oldest = this.keys.values().next();
      if (!oldest.done) this.keys.delete(oldest.value);
    }
    this.keys.add(key);
  }
}

/**
 * Identity of a message: topic and event_id, plus `ts`, which the unique
 * index also holds. A template literal alone makes a rope of its parts,
 * about 700 heap bytes once a Set holds it; a round trip through UTF-8 makes
 * one flat string of 40-odd bytes plus its length. The round trip is
 * lossless only for well-formed text, so a lone surrogate keeps the rope.
 */
export function dedupKey(topic: string, eventId: string, timeMs: number): string {
  const key = `${topic}\u0000${eventId}\u0000${timeMs}`;
  return key.isWellFormed() ? Buffer.from(key).toString() : key;
}
