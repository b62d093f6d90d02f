import { randomInt } from "node:crypto";

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
