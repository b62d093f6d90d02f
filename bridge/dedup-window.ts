/** Topics given a short id before the table starts over (a fleet has one or a few topics per device). */
const MAX_TOPIC_IDS = 1_000_000;

/**
 * The keys of the most recently committed messages, oldest evicted first.
 *
 * Exact keys, not hashes or a Bloom filter: a hit means the message was
 * certainly committed before, so it can be acknowledged without a database
 * round trip. A miss proves nothing; the unique index decides.
 */
export class DedupWindow {
  private readonly keys = new Set<string>();
  private readonly topicIds = new Map<string, string>();
  private nextTopicId = 0;

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.keys.size;
  }

  /**
   * Identity of a message: topic and event_id, plus `ts`, which the unique
   * index also holds. The topic is replaced by a short id, never reused,
   * and `ts` is written in base 36, which keeps keys small: a million fit in
   * under 100 MB.
   */
  key(topic: string, eventId: string, timeMs: number): string {
    let id = this.topicIds.get(topic);
    if (id === undefined) {
      // Forgetting ids only makes older keys unmatchable: they age out, and
      // their redeliveries are caught by the unique index instead.
      if (this.topicIds.size >= MAX_TOPIC_IDS) this.topicIds.clear();
      id = (this.nextTopicId++).toString(36);
      this.topicIds.set(topic, id);
    }
    // join makes one flat string; a template literal would keep a rope of
    // its parts, more than twice the heap once a Set holds a million of them.
    return [id, eventId, timeMs.toString(36)].join("\u0000");
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
