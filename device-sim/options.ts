import fs from "node:fs";
import { parseArgs } from "node:util";
import { MappingError } from "../bridge/mappings.ts";
import {
  maxDevices,
  maxRate,
  type OpenProfile,
  openProfile,
  PROFILES,
  profilesHelp,
  refusedFlags,
} from "./profiles/index.ts";

/** Every flag of the simulator: its default and what it does; `--help` prints this table. */
const FLAGS = {
  url: { default: "mqtt://localhost:1883", help: "broker URL" },
  profile: {
    default: "default",
    help: `what the devices publish: ${["default", ...PROFILES.map((profile) => profile.name)].join(", ")}; each but default is stored by a service started with its MAPPINGS_FILE (Profiles, below)`,
  },
  devices: { default: "100", help: "simulated devices, each its own MQTT connection" },
  rate: {
    default: "1",
    help: `messages per second per device (fractions allowed); at most ${PROFILES.flatMap((profile) => (maxRate(profile) ? [`${maxRate(profile)} for ${profile.name}`] : [])).join(", ")}, whose devices never repeat a time (Profiles, below)`,
  },
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
  "run-id": {
    default: "",
    shown: "random",
    help: "tag in every event_id, and in the device ids that are not identities",
  },
  "topic-prefix": {
    default: "telemetry",
    help: "first topic level of the default profile: <prefix>/<device_id>/env",
  },
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
  credentials: {
    default: "",
    shown: "none",
    help: "id:secret lines, as npm run devices -- add --count writes them: device n is the identity on line n; --devices defaults to one per line",
  },
  username: {
    default: "",
    shown: "none",
    help: "every device logs in as this identity: one device is the identity itself; several are sim-<run-id>-<n> and need an admin identity, or a gateway its rules allow (a device identity is bound to one connection)",
  },
  password: {
    default: "",
    shown: "none",
    help: "the secret of --username (visible in ps: on a shared machine prefer --credentials)",
  },
  verify: {
    default: "",
    shown: "off",
    help: "after the run, check that PostgreSQL at this URL (or $DATABASE_URL with --verify env) holds each acknowledged event once (at least once for a profile without id or time)",
  },
  "verify-wait": {
    default: "0",
    help: "with --verify, check again every second for up to this many seconds until PostgreSQL holds every acknowledged event and dead letter: in bridge mode (SOURCE_URL) the broker acknowledges before the service stores",
  },
  json: { default: "", shown: "off", help: "print the summary as JSON", boolean: true },
  help: { default: "", shown: "off", help: "show this help", boolean: true },
} as const;

type Flag = keyof typeof FLAGS;

/** An identity's id and secret: the MQTT user name and password. */
export interface Login {
  username: string;
  password: string;
}

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
  /** --credentials: device n logs in as the identity on line n, and is that identity. */
  credentials: Login[] | undefined;
  /** --username and --password: every device logs in as this identity. */
  login: Login | undefined;
  verifyUrl: string | undefined;
  /** --verify-wait: how long verification waits for the events to be stored; 0 checks once. */
  verifyWaitS: number;
  json: boolean;
  /** --profile and its mapping file; undefined for the default shape. */
  profile: OpenProfile | undefined;
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
    ...profilesHelp(),
    "",
    "Examples: npm run sim -- --devices 1000 --rate 2 --duration 30 --dup-rate 0.05 --verify env",
    "          npm run sim -- --credentials secrets.txt --rate 2 --duration 30 --verify env",
    "          npm run sim -- --url mqtt://mosquitto:1883 --verify env --verify-wait 60   (bridge mode)",
    "          MAPPINGS_FILE=mappings/tasmota.yaml npm start, then npm run sim -- --profile tasmota --verify env",
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

/**
 * The file `npm run devices -- add --count` writes: one `id:secret` a line
 * (blank lines skipped). An id becomes a topic level, so it cannot hold a
 * wildcard or a `/`.
 */
function readCredentials(file: string): Login[] {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (error) {
    throw new UsageError(`--credentials: cannot read ${file}: ${(error as Error).message}`);
  }
  const logins: Login[] = [];
  const seen = new Set<string>();
  for (const [n, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (line === "") continue;
    const cut = line.indexOf(":");
    const username = line.slice(0, cut);
    const password = line.slice(cut + 1);
    if (cut < 1 || password === "" || /[/+#]/.test(username) || username.includes("\u0000")) {
      throw new UsageError(`--credentials: line ${n + 1} of ${file} is not id:secret`);
    }
    if (seen.has(username)) {
      throw new UsageError(`--credentials: ${username} is on two lines of ${file}`);
    }
    seen.add(username);
    logins.push({ username, password });
  }
  if (logins.length === 0) throw new UsageError(`--credentials: ${file} holds no id:secret line`);
  return logins;
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
  const verifyWaitS = number("verify-wait", get("verify-wait"), 0, 86_400);
  if (verifyWaitS > 0 && !verifyUrl) {
    throw new UsageError("--verify-wait needs --verify: it is how long verification waits");
  }
  const credentialsFile = get("credentials");
  const username = get("username");
  const password = get("password");
  if (credentialsFile && (username || password)) {
    throw new UsageError("use --credentials or --username and --password, not both");
  }
  if (Boolean(username) !== Boolean(password)) {
    throw new UsageError("--username and --password go together");
  }
  const credentials = credentialsFile ? readCredentials(credentialsFile) : undefined;
  const devices = number(
    "devices",
    credentials && values.devices === undefined ? String(credentials.length) : get("devices"),
    1,
    100_000,
    true,
  );
  if (credentials && credentials.length < devices) {
    throw new UsageError(
      `--credentials: ${credentialsFile} holds ${credentials.length} identities, and --devices ${devices} needs one each`,
    );
  }
  const options: SimOptions = {
    url,
    devices,
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
    credentials,
    login: username ? { username, password } : undefined,
    verifyUrl,
    verifyWaitS,
    json: values.json === true,
    profile: readProfile(get("profile")),
  };
  if (options.profile) {
    checkProfile(options, options.profile, (flag) => get(flag) !== FLAGS[flag].default);
  }
  return options;
}

function readProfile(name: string): OpenProfile | undefined {
  if (name === "default") return undefined;
  const profile = PROFILES.find((candidate) => candidate.name === name);
  if (!profile) {
    const names = ["default", ...PROFILES.map((candidate) => candidate.name)];
    throw new UsageError(`--profile must be one of ${names.join(", ")} (got "${name}")`);
  }
  try {
    return openProfile(profile);
  } catch (error) {
    if (!(error instanceof MappingError)) throw error;
    throw new UsageError(`--profile ${name}: ${error.message}`);
  }
}

/** Refuses what a profile's devices cannot do. */
function checkProfile(
  options: SimOptions,
  { profile }: OpenProfile,
  given: (flag: Flag) => boolean,
): void {
  for (const { flag, reason } of refusedFlags(profile)) {
    if (given(flag as Flag)) {
      throw new UsageError(`--profile ${profile.name} takes no --${flag}: ${reason}`);
    }
  }
  const most = maxDevices(profile);
  if (most !== undefined && options.devices > most) {
    throw new UsageError(
      `--devices ${options.devices}: a ${profile.name} device is an edge node, and the service keeps the aliases of at most ${most.toLocaleString("en-US")}`,
    );
  }
  const max = maxRate(profile);
  if (max !== undefined && options.rate > max) {
    throw new UsageError(
      `--rate ${options.rate}: a ${profile.name} device sends at most ${max} message${max === 1 ? "" : "s"} a second, as it never repeats a ${profile.time?.field.join(".")} on its topic`,
    );
  }
}
