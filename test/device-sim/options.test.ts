import { describe, expect, it } from "vitest";
import { helpText, parseOptions, UsageError } from "../../device-sim/options.ts";

describe("simulator flags", () => {
  it("have defaults", () => {
    const options = parseOptions([], {});
    expect(options).toMatchObject({
      url: "mqtt://localhost:1883",
      devices: 100,
      rate: 1,
      durationS: 10,
      count: undefined,
      qos: 1,
      inflight: 1,
      rampS: 0,
      topicPrefix: "telemetry",
      clockSkewS: 0,
      dupRate: 0,
      reconnectRate: 0,
      badRate: 0,
      lateRate: 0,
      verifyUrl: undefined,
      json: false,
    });
    expect(options?.runId).toMatch(/^[a-z0-9]{1,8}$/);
  });

  it("read every flag", () => {
    const options = parseOptions(
      [
        ...["--url", "mqtt://broker:1884", "--devices", "5", "--rate", "0.5", "--count", "7"],
        ...["--qos", "0", "--inflight", "3", "--ramp", "2", "--seed", "42", "--run-id", "r1"],
        ...["--topic-prefix", "plant", "--clock-skew", "60", "--dup-rate", "0.1"],
        ...["--reconnect-rate", "0.01", "--bad-rate", "0.02", "--late-rate", "0.03"],
        ...["--verify", "env", "--json"],
      ],
      { DATABASE_URL: "postgres://db/x" },
    );
    expect(options).toEqual({
      url: "mqtt://broker:1884",
      devices: 5,
      rate: 0.5,
      durationS: 10,
      count: 7,
      qos: 0,
      inflight: 3,
      rampS: 2,
      seed: 42,
      runId: "r1",
      topicPrefix: "plant",
      clockSkewS: 60,
      dupRate: 0.1,
      reconnectRate: 0.01,
      badRate: 0.02,
      lateRate: 0.03,
      verifyUrl: "postgres://db/x",
      json: true,
    });
  });

  it("refuse bad values with a line naming the flag", () => {
    const cases: [string[], RegExp][] = [
      [["--devices", "0"], /^--devices must be an integer from 1/],
      [["--rate", "fast"], /^--rate must be a number/],
      [["--qos", "2"], /^--qos /],
      [["--dup-rate", "1.5"], /^--dup-rate /],
      [["--url", "http://x"], /^--url must look like mqtt:/],
      [["--verify", "env"], /needs DATABASE_URL/],
      [["--topic-prefix", "a/#"], /^--topic-prefix/],
      [["--frobnicate"], /frobnicate/],
    ];
    for (const [argv, message] of cases) {
      expect(() => parseOptions(argv, {})).toThrow(UsageError);
      expect(() => parseOptions(argv, {})).toThrow(message);
    }
  });

  it("are all documented in --help with their default", () => {
    expect(parseOptions(["--help"], {})).toBeUndefined();
    const help = helpText();
    const flags = [
      ...[
        "url",
        "devices",
        "rate",
        "duration",
        "count",
        "qos",
        "inflight",
        "ramp",
        "seed",
        "run-id",
      ],
      ...["topic-prefix", "clock-skew", "dup-rate", "reconnect-rate", "bad-rate", "late-rate"],
      ...["verify", "json", "help"],
    ];
    for (const flag of flags) {
      expect(help).toMatch(new RegExp(`^  --${flag} .*\\(default: [^)]+\\)$`, "m"));
    }
  });
});
