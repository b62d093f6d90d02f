import { describe, expect, it } from "vitest";
import { topicMatcher, topicMatches, validateFilter } from "../../broker/topic-filter.ts";

describe("topic filters", () => {
  it("match as MQTT 3.1.1 says", () => {
    const cases: [string, string, boolean][] = [
      ["telemetry/#", "telemetry/dev/temp", true],
      ["telemetry/#", "telemetry", true],
      ["telemetry/#", "telemetryx/dev", false],
      ["telemetry/+/temp", "telemetry/dev/temp", true],
      ["telemetry/+/temp", "telemetry/dev/hum", false],
      ["telemetry/+", "telemetry/dev/temp", false],
      ["telemetry/+/+", "telemetry/dev/", true],
      ["#", "anything/at/all", true],
      ["#", "$SYS/broker", false],
      ["+/x", "$SYS/x", false],
      ["$SYS/#", "$SYS/broker/load", true],
      ["a/b", "a/b", true],
      ["a/b", "a/b/c", false],
      ["a/b/#", "a/bc", false],
      ["a/b/#", "a/b/", true],
      ["a/+/#", "a/x", true],
    ];
    for (const [filter, topic, expected] of cases) {
      expect(topicMatches(filter, topic), `${filter} ~ ${topic}`).toBe(expected);
    }
  });

  it("combine into one matcher", () => {
    const matches = topicMatcher(["telemetry/#", "plant/+/sensors/#"]);
    expect(matches("plant/7/sensors/t1")).toBe(true);
    expect(matches("plant/7/actuators/v1")).toBe(false);
  });

  it("explain what is wrong with a filter", () => {
    expect(validateFilter("telemetry/#")).toBeUndefined();
    expect(validateFilter("a/+/b")).toBeUndefined();
    expect(validateFilter("")).toBe("is empty");
    expect(validateFilter("a/#/b")).toMatch(/#/);
    expect(validateFilter("a/b#")).toMatch(/#/);
    expect(validateFilter("a/b+")).toMatch(/\+/);
  });
});
