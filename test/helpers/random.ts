import { randomInt } from "node:crypto";

/**
 * A seeded pseudo-random generator (sfc32): the same seed gives the same
 * sequence, so a fuzz run that found something can be run again.
 */
export class Random {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    // The first outputs of a fresh sfc32 state still look like the seed.
    for (let i = 0; i < 16; i++) this.next();
  }

  /** A uniform 32-bit unsigned integer. */
  next(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** In [0, 1). */
  float(): number {
    return this.next() / 2 ** 32;
  }

  /** An integer from `min` to `max`, both included. */
  int(min: number, max: number): number {
    return min + Math.floor(this.float() * (max - min + 1));
  }

  chance(probability: number): boolean {
    return this.float() < probability;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)] as T;
  }

  bytes(length: number): Buffer {
    const buffer = Buffer.alloc(length);
    for (let i = 0; i < length; i++) buffer[i] = this.next() & 0xff;
    return buffer;
  }

  /** An independent generator for one lane of work, still fixed by this one's seed. */
  fork(): Random {
    return new Random(this.next());
  }
}

/** The seed in `variable` (an unsigned 32-bit integer), or a fresh one when it is unset. */
export function seedFrom(variable: string): number {
  const raw = process.env[variable];
  if (raw === undefined || raw === "") return randomInt(2 ** 32 - 1);
  const seed = Number(raw);
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new Error(`${variable} must be an integer from 0 to ${2 ** 32 - 1}, not ${raw}`);
  }
  return seed;
}
