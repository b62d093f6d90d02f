import type { Random } from "./random.ts";

const DAY_MS = 86_400_000;

export interface Reading {
  temperature: number;
  humidity: number;
  battery: number;
}

/**
 * One device's sensors: temperature following a daily cycle around its own
 * mean with noise and rare spikes, humidity moving against it, and a
 * battery that drains a little with every message.
 */
export class Sensors {
  private readonly meanC: number;
  private readonly swingC: number;
  private readonly phase: number;
  private battery: number;
  private readonly drainPerMessage: number;

  constructor(private readonly random: Random) {
    this.meanC = random.between(12, 26);
    this.swingC = random.between(2, 8);
    this.phase = random.next() * DAY_MS;
    this.battery = random.between(3.7, 4.2);
    this.drainPerMessage = random.between(0.00001, 0.0001);
  }

  read(timeMs: number): Reading {
    const cycle = Math.sin((2 * Math.PI * (timeMs + this.phase)) / DAY_MS);
    let temperature = this.meanC + this.swingC * cycle + 0.2 * this.random.gaussian();
    // A sensor glitch now and then: dashboards and alerts should see them.
    if (this.random.chance(0.001))
      temperature += this.random.pick([-1, 1]) * this.random.between(15, 40);
    const humidity = Math.min(
      100,
      Math.max(0, 55 - 2.5 * this.swingC * cycle + 2 * this.random.gaussian()),
    );
    this.battery = Math.max(3.0, this.battery - this.drainPerMessage);
    return {
      temperature: Math.round(temperature * 100) / 100,
      humidity: Math.round(humidity * 10) / 10,
      battery: Math.round(this.battery * 1000) / 1000,
    };
  }
}

/** A battery's charge in percent, as devices report it: 3.0 V empty, 4.2 V full. */
export function batteryPercent(volts: number): number {
  return Math.round(Math.min(100, Math.max(0, ((volts - 3.0) / 1.2) * 100)));
}
