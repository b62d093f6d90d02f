import { describe, expect, it } from "vitest";
import * as copy from "../../bridge/copy-format.ts";

describe("COPY text encoders", () => {
  it("write timestamps exactly as Date#toISOString does", () => {
    const samples = [0, 1, 999, 86_399_999, 86_400_000, Date.UTC(9999, 11, 31, 23, 59, 59, 999)];
    for (let i = 0; i < 10_000; i++) samples.push(Math.floor(Math.random() * Date.UTC(9999, 0, 1)));
    for (const ms of samples) expect(copy.timestamp(ms)).toBe(new Date(ms).toISOString());
  });

  it("escape the characters that frame rows and columns", () => {
    expect(copy.text("plain")).toBe("plain");
    expect(copy.text('a\tb\nc\rd\\e"')).toBe('a\\tb\\nc\\rd\\\\e"');
    expect(copy.nullableText(null)).toBe("\\N");
    expect(copy.nullableText("\\N")).toBe("\\\\N");
    expect(copy.bytea(Buffer.from([0, 255, 10]))).toBe("\\\\x00ff0a");
  });
});
