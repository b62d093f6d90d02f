import { parseArgs } from "node:util";

/** Every flag of the simulator: its default and what it does; `--help` prints this table. */
const FLAGS = {
  url: { default: "mqtt://localhost:1883", help: "broker URL" },
  devices: { default: "100", help: "simulated devices, each its own MQTT connection" },
  rate: { default: "1", help: "messages per second per device (fractions allowed)" },
  duration: { default: "10", help: "seconds each device publishes (ignored with --count)" },
  count: {
    default: "",
    shown: "none: --duration applies",
    help: "messages per device, instead of --duration",
  },
  qos: { default: "1", help: "0 or 1" },
  inflight: { default: "1", help: "unacknowledged QoS 1 messages a device may have at once" },
  ramp: { default: "0", help: "seconds over which devices connect, to avoid a connect storm" },
  seed: {
    default: "",
    shown: "random",
    help: "seed for readings and faults, for a reproducible run",
  },
  "run-id": { default: "", shown: "random", help: "tag in every device id and event_id" },
  "topic-prefix": { default: "telemetry", help: "first topic level: <prefix>/<device_id>/env" },
  "clock-skew": { default: "0", help: "device clocks are off by up to ± this many seconds" },
  "dup-rate": {
    default: "0",
    help: "share of acknowledged events sent again (same event_id and ts)",
  },
  "reconnect-rate": {
    default: "0",
    help: "share of messages after which the connection is dropped abruptly",
  },
  "bad-rate": { default: "0", help: "share of messages replaced by a malformed payload" },
  "late-rate": { default: "0", help: "share of events stamped hours or days in the past" },
  verify: {
    default: "",
    shown: "off",
    help: "after the run, check that PostgreSQL at this URL (or $DATABASE_URL with --verify env) holds each acknowledged event once",
  },
  json: { default: "", shown: "off", help: "print the summary as JSON", boolean: true },
  help: { default: "", shown: "off", help: "show this help", boolean: true },
} as const;

type Flag = keyof typeof FLAGS;

export interface SimOptions {
  url: string;
  devices: number;
  rate: number;
  durationS: number;
  count: number | undefined;
  qos: 0 | 1;
  inflight: number;
  rampS: number;
  seed: number;
  runId: string;
  topicPrefix: string;
  clockSkewS: number;
  dupRate: number;
  reconnectRate: number;
  badRate: number;
  lateRate: number;
  verifyUrl: string | undefined;
  json: boolean;
}

export class UsageError extends Error {
  override name = "UsageError";
}

export function helpText(): string {
  const width = Math.max(...Object.keys(FLAGS).map((flag) => flag.length)) + 4;
  const lines = Object.entries(FLAGS).map(([flag, spec]) => {
    const shown = "shown" in spec ? spec.shown : spec.default;
    return `  --${flag.padEnd(width)}${spec.help} (default: ${shown})`;
  });
  return [
    "npm run sim -- [flags]",
    "",
    "A fleet of simulated devices publishing JSON readings over MQTT 3.1.1.",
    "",
    ...lines,
    "",
    "Example: npm run sim -- --devices 1000 --rate 2 --duration 30 --dup-rate 0.05 --verify env",
  ].join("\n");
}

function number(flag: Flag, raw: string, min: number, max: number, integer = false): number {
  const value = Number(raw);
  if (
    raw.trim() === "" ||
    !Number.isFinite(value) ||
    value < min ||
    value > max ||
    (integer && !Number.isInteger(value))
  ) {
    throw new UsageError(
      `--${flag} must be ${integer ? "an integer" : "a number"} from ${min} to ${max} (got "${raw}")`,
    );
  }
  return value;
}

function randomTag(): string {
  return Math.random().toString(36).slice(2, 8);
}

/** Parses argv; returns undefined when help was asked for. */
export function parseOptions(
  argv: string[],
  env: Record<string, string | undefined> = process.env,
): SimOptions | undefined {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: Object.fromEntries(
        Object.entries(FLAGS).map(([flag, spec]) => [
          flag,
          { type: "boolean" in spec ? "boolean" : "string" },
        ]),
      ),
      strict: true,
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.help) return undefined;
  const get = (flag: Flag) => {
    const value = values[flag];
    return typeof value === "string" ? value : FLAGS[flag].default;
  };
  const url = get("url");
  if (!/^mqtts?:\/\//.test(url))
    throw new UsageError(`--url must look like mqtt://host:1883 (got "${url}")`);
  const qos = number("qos", get("qos"), 0, 1, true) as 0 | 1;
  const runId = get("run-id") || randomTag();
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(runId))
    throw new UsageError("--run-id must be 1–32 letters, digits, - or _");
  const topicPrefix = get("topic-prefix");
  if (topicPrefix === "" || /[#+]/.test(topicPrefix) || topicPrefix.includes("\u0000")) {
    throw new UsageError("--topic-prefix must be a non-empty topic without wildcards");
  }
  let verifyUrl: string | undefined = get("verify") || undefined;
  if (verifyUrl === "env") {
    verifyUrl = env.DATABASE_URL;
    if (!verifyUrl) throw new UsageError("--verify env needs DATABASE_URL to be set");
  }
  if (verifyUrl && !/^postgres(ql)?:\/\//.test(verifyUrl)) {
    throw new UsageError(`--verify must be a postgres:// URL or "env" (got "${verifyUrl}")`);
  }
  return {
    url,
    devices: number("devices", get("devices"), 1, 100_000, true),
    rate: number("rate", get("rate"), 0.001, 10_000),
    durationS: number("duration", get("duration"), 0.1, 7 * 86_400),
    count: get("count") ? number("count", get("count"), 1, 100_000_000, true) : undefined,
    qos,
    inflight: number("inflight", get("inflight"), 1, 65_535, true),
    rampS: number("ramp", get("ramp"), 0, 86_400),
    seed: get("seed")
      ? number("seed", get("seed"), 0, 2 ** 32 - 1, true)
      : Math.floor(Math.random() * 2 ** 32),
    runId,
    topicPrefix,
    clockSkewS: number("clock-skew", get("clock-skew"), 0, 365 * 86_400),
    dupRate: number("dup-rate", get("dup-rate"), 0, 1),
    reconnectRate: number("reconnect-rate", get("reconnect-rate"), 0, 1),
    badRate: number("bad-rate", get("bad-rate"), 0, 1),
    lateRate: number("late-rate", get("late-rate"), 0, 1),
    verifyUrl,
    json: values.json === true,
  };
}
