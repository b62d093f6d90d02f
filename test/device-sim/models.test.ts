import { describe, expect, it } from "vitest";
import { parseTelemetry } from "../../bridge/telemetry-message.ts";
import { BAD_KINDS, badPayload, runMarker } from "../../device-sim/faults.ts";
import { Random } from "../../device-sim/random.ts";
import { Sensors } from "../../device-sim/sensors.ts";

describe("the simulator's models", () => {
  it("repeat themselves for the same seed", () => {
    const a = new Sensors(new Random(7));
    const b = new Sensors(new Random(7));
    const t = Date.UTC(2026, 0, 1);
    for (let i = 0; i < 100; i++) expect(a.read(t + i * 1000)).toEqual(b.read(t + i * 1000));
    expect(new Sensors(new Random(8)).read(t)).not.toEqual(new Sensors(new Random(7)).read(t));
  });

  it("give plausible readings: a daily temperature cycle, bounded humidity, a draining battery", () => {
    const sensors = new Sensors(new Random(1));
    const start = Date.UTC(2026, 0, 1);
    const readings = Array.from({ length: 24 * 60 }, (_, minute) =>
      sensors.read(start + minute * 60_000),
    );
    const temperatures = readings.map((r) => r.temperature).sort((x, y) => x - y);
    const spread = (temperatures.at(-100) ?? 0) - (temperatures[100] ?? 0);
    expect(spread).toBeGreaterThan(2);
    expect(readings.every((r) => r.humidity >= 0 && r.humidity <= 100)).toBe(true);
    expect(readings.at(-1)?.battery).toBeLessThan(readings[0]?.battery ?? 0);
  });

  it("make each kind of bad payload fail validation, marked with its run", () => {
    for (const kind of BAD_KINDS) {
      const payload = badPayload(kind, "r-1", 1, Date.now());
      expect(payload.includes(runMarker("r-1")), kind).toBe(true);
      expect(payload.includes(runMarker("r")), kind).toBe(false);
      const result = parseTelemetry(
        {
          topic: "telemetry/d/env",
          payload,
          clientId: "d",
          receivedAtMs: 0,
        },
        64 * 1024,
      );
      expect(result.ok, kind).toBe(false);
    }
  });
});
