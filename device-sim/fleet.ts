import { setTimeout as sleep } from "node:timers/promises";
import { FleetCounters, SimDevice } from "./device.ts";
import type { SimOptions } from "./options.ts";

export interface FleetRun {
  devices: SimDevice[];
  counters: FleetCounters;
  seconds: number;
}

/** Starts every device (spread over `rampS`), and resolves once each has finished and drained. */
export async function runFleet(
  options: SimOptions,
  counters = new FleetCounters(),
): Promise<FleetRun> {
  const devices = Array.from(
    { length: options.devices },
    (_, i) => new SimDevice(i, options, counters),
  );
  const started = performance.now();
  const stepMs = (options.rampS * 1000) / options.devices;
  const runs: Promise<void>[] = [];
  for (const device of devices) {
    runs.push(device.run());
    if (stepMs > 0) await sleep(stepMs);
  }
  try {
    await Promise.all(runs);
  } catch (error) {
    for (const device of devices) device.abort();
    throw error;
  }
  return { devices, counters, seconds: (performance.now() - started) / 1000 };
}
