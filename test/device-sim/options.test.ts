import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { deviceIdentity } from "../../device-sim/device.ts";
import { helpText, parseOptions, type SimOptions, UsageError } from "../../device-sim/options.ts";

const dir = await fs.mkdtemp(path.join(os.tmpdir(), "sim-options-"));
afterAll(() => fs.rm(dir, { recursive: true, force: true }));
let files = 0;

async function credentialsFile(text: string): Promise<string> {
  const file = path.join(dir, `fleet-${++files}.txt`);
  await fs.writeFile(file, text, { mode: 0o600 });
  return file;
}

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
      credentials: undefined,
      login: undefined,
      verifyUrl: undefined,
      verifyWaitS: 0,
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
        ...["--username", "ops", "--password", "s3:cret", "--verify", "env", "--json"],
        ...["--verify-wait", "2.5"],
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
      credentials: undefined,
      login: { username: "ops", password: "s3:cret" },
      verifyUrl: "postgres://db/x",
      verifyWaitS: 2.5,
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
      [["--verify-wait", "30"], /^--verify-wait needs --verify/],
      [
        ["--verify", "postgres://db/x", "--verify-wait=-1"],
        /^--verify-wait must be a number from 0 to 86400/,
      ],
      [["--verify", "postgres://db/x", "--verify-wait", "soon"], /^--verify-wait must be a number/],
      [["--frobnicate"], /frobnicate/],
      [["--username", "ops"], /--username and --password go together/],
      [["--password", "x"], /--username and --password go together/],
      [["--credentials", "/nonexistent/fleet.txt"], /cannot read \/nonexistent\/fleet.txt/],
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
      ...["credentials", "username", "password", "verify", "verify-wait", "json", "help"],
    ];
    for (const flag of flags) {
      expect(help).toMatch(new RegExp(`^  --${flag} .*\\(default: [^)]+\\)$`, "m"));
    }
  });

  it("give each device its identity from --credentials, one a line", async () => {
    const file = await credentialsFile("dev-1:aaa\r\ndev-2:bbb\n\ndev-3:ccc\n");
    const options = parseOptions(["--credentials", file, "--run-id", "r1"], {}) as SimOptions;
    expect(options.devices).toBe(3);
    expect(options.credentials).toEqual([
      { username: "dev-1", password: "aaa" },
      { username: "dev-2", password: "bbb" },
      { username: "dev-3", password: "ccc" },
    ]);
    expect(deviceIdentity(options, 2)).toEqual({
      deviceId: "dev-3",
      login: { username: "dev-3", password: "ccc" },
    });
    expect(parseOptions(["--credentials", file, "--devices", "2"], {})?.devices).toBe(2);
  });

  it("make one --username device that identity, and several devices names of the run", () => {
    const login = ["--username", "ops", "--password", "x", "--run-id", "r1"];
    const one = parseOptions([...login, "--devices", "1"], {}) as SimOptions;
    expect(deviceIdentity(one, 0)).toEqual({
      deviceId: "ops",
      login: { username: "ops", password: "x" },
    });
    const many = parseOptions([...login, "--devices", "3"], {}) as SimOptions;
    expect(deviceIdentity(many, 2)).toEqual({
      deviceId: "sim-r1-2",
      login: { username: "ops", password: "x" },
    });
    const anonymous = parseOptions(["--run-id", "r1"], {}) as SimOptions;
    expect(deviceIdentity(anonymous, 0)).toEqual({ deviceId: "sim-r1-0", login: undefined });
  });

  it("refuse a credentials file that cannot serve the fleet", async () => {
    const two = await credentialsFile("dev-1:aaa\ndev-2:bbb\n");
    const cases: [string[], RegExp][] = [
      [
        ["--credentials", two, "--devices", "3"],
        /holds 2 identities, and --devices 3 needs one each/,
      ],
      [["--credentials", two, "--username", "ops", "--password", "x"], /not both/],
      [
        ["--credentials", await credentialsFile("dev-1:aaa\njust-an-id\n")],
        /line 2 of .* is not id:secret/,
      ],
      [["--credentials", await credentialsFile("dev/1:aaa\n")], /line 1 of .* is not id:secret/],
      [["--credentials", await credentialsFile("dev-1:aaa\ndev-1:bbb\n")], /dev-1 is on two lines/],
      [["--credentials", await credentialsFile("\n")], /holds no id:secret line/],
    ];
    for (const [argv, message] of cases) {
      expect(() => parseOptions(argv, {})).toThrow(UsageError);
      expect(() => parseOptions(argv, {})).toThrow(message);
    }
  });
});
