/**
 * A connect storm: every device connecting at once, as when the service
 * restarts or a site's network comes back. Twice on a freshly started
 * service: cold, then, once all have disconnected, warm. On ours+auth, cold
 * means no secret verified yet, so each CONNECT costs a scrypt; warm, every
 * secret is cached, so it costs a lookup of the identity and a SHA-256. The
 * same two storms of anonymous devices on ours show what a CONNECT costs
 * without authentication, in a fresh process and in a warmed-up one.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { type Broker, connectDevice, cpuSeconds, type Scenario, startBroker } from "./pipeline.ts";

export interface StormResult {
  scenario: Scenario;
  phase: "cold" | "warm";
  devices: number;
  /** From the first CONNECT sent to the last CONNACK received. */
  seconds: number;
  /** CPU seconds the service process used meanwhile. */
  cpuSeconds: number;
}

/** Every device of `ids` connects at once; resolves when all have their CONNACK, then disconnects them. */
async function storm(
  broker: Broker,
  ids: readonly string[],
  phase: StormResult["phase"],
): Promise<Omit<StormResult, "scenario">> {
  const pid = broker.process?.child.pid as number;
  const cpuBefore = await cpuSeconds(pid);
  const started = performance.now();
  // The cold storm queues every scrypt behind the others: allow it more than mqtt.js's 30 s.
  const clients = await Promise.all(
    ids.map((id) => connectDevice(broker, id, { connectTimeout: 120_000 })),
  );
  const seconds = (performance.now() - started) / 1000;
  const cpu = (await cpuSeconds(pid)) - cpuBefore;
  await Promise.all(clients.map((client) => client.endAsync()));
  return { phase, devices: ids.length, seconds, cpuSeconds: cpu };
}

export async function benchConnectStorm(
  serverUrl: string,
  devices: number,
): Promise<StormResult[]> {
  const ids = Array.from({ length: devices }, (_, d) => `storm-${d}`);
  const results: StormResult[] = [];
  for (const scenario of ["ours", "ours+auth"] as const) {
    const broker = await startBroker(serverUrl, scenario, ids);
    try {
      results.push({ scenario, ...(await storm(broker, ids, "cold")) });
      // Let the service close the sessions before the next storm is timed.
      await sleep(1000);
      results.push({ scenario, ...(await storm(broker, ids, "warm")) });
    } finally {
      await broker.stop();
    }
  }
  return results;
}
