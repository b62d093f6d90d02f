import { describe, expect, it } from "vitest";
import { parseIso } from "../../bridge/telemetry-message.ts";
import { isTimeZone, wallClock, zoneOffset } from "../../bridge/time-zone.ts";

/** A zone-less ISO time read in `zone`, as UTC ISO. */
function inZone(zone: string, local: string): string {
  return new Date(parseIso(local, zoneOffset(zone)) as number).toISOString();
}

describe("time zones", () => {
  it("read a wall-clock time in its zone, in summer and winter", () => {
    expect(inZone("Europe/Berlin", "2026-07-01T12:00:00")).toBe("2026-07-01T10:00:00.000Z");
    expect(inZone("Europe/Berlin", "2026-01-01T12:00:00")).toBe("2026-01-01T11:00:00.000Z");
    expect(inZone("Asia/Kolkata", "2026-01-01T05:30:00")).toBe("2026-01-01T00:00:00.000Z");
    expect(inZone("Australia/Eucla", "2026-01-01T08:45:00")).toBe("2026-01-01T00:00:00.000Z");
  });

  it("read a time clocks go back over as the earlier instant, one they skip with the offset before", () => {
    // Berlin: 02:00–03:00 happens twice on 25 October, not at all on 29 March.
    expect(inZone("Europe/Berlin", "2026-10-25T02:30:00")).toBe("2026-10-25T00:30:00.000Z");
    expect(inZone("Europe/Berlin", "2026-10-25T03:30:00")).toBe("2026-10-25T02:30:00.000Z");
    expect(inZone("Europe/Berlin", "2026-03-29T02:30:00")).toBe("2026-03-29T01:30:00.000Z");
    expect(inZone("Europe/Berlin", "2026-03-29T03:30:00")).toBe("2026-03-29T01:30:00.000Z");
    expect(inZone("America/New_York", "2026-11-01T01:30:00")).toBe("2026-11-01T05:30:00.000Z");
    expect(inZone("America/New_York", "2026-03-08T02:30:00")).toBe("2026-03-08T07:30:00.000Z");
  });

  it("keep a time with its own zone as it says", () => {
    expect(inZone("Europe/Berlin", "2026-07-01T12:00:00Z")).toBe("2026-07-01T12:00:00.000Z");
  });

  it("tell the wall clock of an instant, and know their names", () => {
    expect(new Date(wallClock("Europe/Berlin")(Date.UTC(2026, 6, 1, 10, 0, 5))).toISOString()).toBe(
      "2026-07-01T12:00:05.000Z",
    );
    expect(isTimeZone("Europe/Berlin")).toBe(true);
    expect(isTimeZone("Mars/Base")).toBe(false);
  });
});
