/**
 * Heap bytes per key of the dedup window, with keys shaped like real ones
 * (topic `telemetry/<device>/env`, a UUID event_id, an epoch-ms ts). Needs
 * node --expose-gc.
 */
import { randomUUID } from "node:crypto";
import { DedupWindow } from "../bridge/dedup-window.ts";

function heapUsed(gc: () => void): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

export function benchDedupWindow(keys: number): {
  keys: number;
  heapMiB: number;
  bytesPerKey: number;
} {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("run with node --expose-gc");
  const start = Date.now();
  const before = heapUsed(gc);
  const window = new DedupWindow(keys);
  for (let i = 0; i < keys; i++) {
    window.add(window.key(`telemetry/device-${i % 10_000}/env`, randomUUID(), start + i));
  }
  const used = heapUsed(gc) - before;
  return { keys: window.size, heapMiB: used / 2 ** 20, bytesPerKey: used / keys };
}
