import { setTimeout as sleep } from "node:timers/promises";
import { FleetCounters, SimDevice } from "./device.ts";
import type { SimOptions } from "./options.ts";

export interface FleetRun {
  devices: SimDevice[];
  counters: FleetCounters;
  seconds: number;
  /** When the first device started and the last one finished, in epoch milliseconds. */
  startedAt: number;
  endedAt: number;
}

/**
 * Starts every device (spread over `rampS`), and resolves once each has
 * finished and drained. A device refused for good stops the fleet, and
 * `runFleet` rejects with its ConnectionRefused: the broker would most
 * likely refuse the others alike.
 */
export async function runFleet(
  options: SimOptions,
  counters = new FleetCounters(),
): Promise<FleetRun> {
  const devices = Array.from(
    { length: options.devices },
    (_, i) => new SimDevice(i, options, counters),
  );
  const startedAt = Date.now();
  const started = performance.now();
  const stepMs = (options.rampS * 1000) / options.devices;
  let refused: unknown;
  const runs: Promise<void>[] = [];
  for (const device of devices) {
    if (refused) break;
    runs.push(
      device.run().catch((error: unknown) => {
        refused ??= error;
        for (const other of devices) other.abort();
      }),
    );
    if (stepMs > 0) await sleep(stepMs);
  }
  await Promise.all(runs);
  if (refused) throw refused;
  return {
    devices,
    counters,
    seconds: (performance.now() - started) / 1000,
    startedAt,
    endedAt: Date.now(),
  };
}
