import { describe, expect, it } from "vitest";
import { DedupWindow } from "../../bridge/dedup-window.ts";

describe("DedupWindow", () => {
  it("remembers exactly the last `capacity` keys, evicting the oldest", () => {
    const window = new DedupWindow(3);
    for (const key of ["a", "b", "c", "d"]) window.add(key);
    expect(window.size).toBe(3);
    expect(window.has("a")).toBe(false);
    expect(["b", "c", "d"].every((key) => window.has(key))).toBe(true);
  });

  it("never reports a key it was not given", () => {
    const window = new DedupWindow(10_000);
    for (let i = 0; i < 10_000; i++) window.add(window.key("telemetry/d", `e-${i}`, i));
    for (let i = 0; i < 10_000; i++) {
      expect(window.has(window.key("telemetry/d", `e-${i}`, i + 1))).toBe(false);
      expect(window.has(window.key("telemetry/d2", `e-${i}`, i))).toBe(false);
    }
    expect(window.has(window.key("telemetry/d", "e-9999", 9999))).toBe(true);
  });

  it("gives each (topic, event_id, ts) its own key", () => {
    const window = new DedupWindow(10);
    const keys = [
      window.key("a/b", "c", 1),
      window.key("a", "b/c", 1),
      window.key("a", "b", 1),
      window.key("a", "b", 2),
      window.key("t/d", "\ud800", 1),
      window.key("t/d", "\ufffd", 1),
      window.key("t/ü/😀", "é", 1),
    ];
    expect(new Set(keys).size).toBe(keys.length);
    expect(window.key("t/ü/😀", "é", 1)).toBe(keys[6]);
  });

  it("stores nothing with capacity 0", () => {
    const window = new DedupWindow(0);
    window.add("a");
    expect(window.has("a")).toBe(false);
  });
});
