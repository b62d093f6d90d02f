import { describe, expect, it } from "vitest";
import { DedupWindow, dedupKey } from "../../bridge/dedup-window.ts";

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
    for (let i = 0; i < 10_000; i++) window.add(dedupKey("telemetry/d", `e-${i}`, i));
    for (let i = 0; i < 10_000; i++) {
      expect(window.has(dedupKey("telemetry/d", `e-${i}`, i + 1))).toBe(false);
      expect(window.has(dedupKey("telemetry/d2", `e-${i}`, i))).toBe(false);
    }
    expect(window.has(dedupKey("telemetry/d", "e-9999", 9999))).toBe(true);
  });

  it("keeps topic and event_id apart in the key", () => {
    expect(dedupKey("a/b", "c", 1)).not.toBe(dedupKey("a", "b/c", 1));
  });

  it("keeps every character of the key, lone surrogates included", () => {
    expect(dedupKey("t/ü/😀", "é", 1)).toBe("t/ü/😀\u0000é\u00001");
    expect(dedupKey("t/d", "\ud800", 1)).not.toBe(dedupKey("t/d", "\ufffd", 1));
  });

  it("stores nothing with capacity 0", () => {
    const window = new DedupWindow(0);
    window.add("a");
    expect(window.has("a")).toBe(false);
  });
});
