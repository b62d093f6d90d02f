/**
 * npm run bench -- [--messages N] [--rows N] [--batch N] [--window-keys N] [--storm-devices N] [--json]
 *   [--only bridge] [--bridge-load stream,backlog] [--bridge-connections 1,4] [--bridge-protocol 4|5]
 *   [--bridge-inflight N]
 * npm run bench -- --soak SECONDS --soak-rate MSG_PER_S
 *
 * Runs against DATABASE_URL when set, otherwise a throwaway embedded PostgreSQL.
 */
import { parseArgs } from "node:util";
import { AUTH_DEFAULTS } from "../broker/auth/authenticator.ts";
import { startTestServer, type TestServer } from "../test/helpers/embedded-server.ts";
import {
  BRIDGE_LOADS,
  type BridgeLoad,
  type BridgeReport,
  benchBridgeMode,
  sharedVariant,
} from "./bridge-mode.ts";
import { benchConnectStorm } from "./connect-storm.ts";
import { benchDedupWindow } from "./dedup-window.ts";
import {
  benchScenario,
  mosquittoAnswers,
  SCENARIOS,
  type ScenarioResult,
  SHAPES,
  type Shape,
} from "./pipeline.ts";
import { benchReading } from "./reading.ts";
import { benchWriters, ROUNDS, WRITERS } from "./writer.ts";

const { values: args } = parseArgs({
  options: {
    messages: { type: "string", default: "30000" },
    rows: { type: "string", default: "200000" },
    batch: { type: "string", default: "5000" },
    "window-keys": { type: "string", default: "1000000" },
    "storm-devices": { type: "string", default: "" },
    soak: { type: "string", default: "" },
    "soak-rate": { type: "string", default: "5000" },
    only: { type: "string", default: "" },
    "bridge-load": { type: "string", default: BRIDGE_LOADS.join(",") },
    "bridge-connections": { type: "string", default: "1,4" },
    "bridge-protocol": { type: "string", default: "4" },
    "bridge-inflight": { type: "string", default: "0" },
    json: { type: "boolean", default: false },
  },
});

function positive(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
  return n;
}

const progress = (line: string) => {
  if (!args.json) console.error(line);
};
const fmt = (n: number | undefined, digits = 0) =>
  n === undefined
    ? "–"
    : n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

/** ours at a fixed rate for a long time: does the service's memory stay flat? */
async function soak(serverUrl: string, seconds: number, rate: number): Promise<void> {
  const fleet = SHAPES[0] as Shape;
  const shape: Shape = {
    ...fleet,
    label: `soak at ${rate} msg/s`,
    ratePerDevice: rate / fleet.devices,
  };
  const samples: { atS: number; rssMiB: number }[] = [];
  const result = await benchScenario(
    serverUrl,
    "ours",
    shape,
    Math.round(rate * seconds),
    (rssMiB, atS) => {
      samples.push({ atS: Math.round(atS), rssMiB: Math.round(rssMiB) });
      progress(`  ${Math.round(atS)} s: RSS ${Math.round(rssMiB)} MiB`);
    },
  );
  const settled = samples.slice(Math.floor(samples.length / 5));
  const growth = (settled.at(-1)?.rssMiB ?? 0) - (settled[0]?.rssMiB ?? 0);
  if (args.json) {
    console.log(JSON.stringify({ soak: result, samples, growthMiB: growth }, null, 2));
    return;
  }
  console.log(
    `\nsoak: ${fmt(result.messages)} messages in ${fmt(result.seconds)} s (${fmt(result.perSecond)} msg/s), ` +
      `p50 ${fmt(result.p50Ms, 1)} ms, p99 ${fmt(result.p99Ms, 1)} ms, max ${fmt(result.maxMs, 1)} ms, ` +
      `exactly once: ${result.exactlyOnce ? "yes" : "NO"}`,
  );
  console.log(`RSS (MiB) every 10 s: ${samples.map((s) => s.rssMiB).join(" ")}`);
  console.log(`growth after the first fifth: ${growth} MiB; peak ${fmt(result.peakRssMiB)} MiB`);
}

/** Bridge mode against a Mosquitto of its own: the report, or why it was skipped. */
function bridgeMode(serverUrl: string, messages: number): Promise<BridgeReport | string> {
  const loads = args["bridge-load"].split(",").map((load) => {
    const name = load.trim();
    if (!(BRIDGE_LOADS as readonly string[]).includes(name)) {
      throw new Error(`--bridge-load takes stream, backlog or stream,backlog (got "${name}")`);
    }
    return name as BridgeLoad;
  });
  const connections = args["bridge-connections"]
    .split(",")
    .map((n) => positive("bridge-connections", n.trim()));
  const protocol = args["bridge-protocol"];
  if (protocol !== "4" && protocol !== "5") throw new Error("--bridge-protocol must be 4 or 5");
  const inflight = Number(args["bridge-inflight"]);
  if (!Number.isInteger(inflight) || inflight < 0) {
    throw new Error("--bridge-inflight must be 0 (no maximum) or a positive integer");
  }
  return benchBridgeMode(
    serverUrl,
    loads,
    connections.map(sharedVariant),
    { messages, protocolVersion: protocol === "4" ? 4 : 5, inflight },
    progress,
  );
}

const BRIDGE_LOAD_HEADINGS: Record<BridgeLoad, string> = {
  stream:
    "stream: the subscriber subscribed before the publishers start; msg/s from the first message received " +
    "to the last one received (ceiling) or committed (naive, ours), bounded by the publishers' rate; " +
    "subscriber CPU from the first publish",
  backlog:
    "backlog: the subscriber subscribes and stops, every message is published into its session at Mosquitto, " +
    "then it starts again; msg/s from the first message it then receives to the last one received (ceiling) " +
    "or committed (naive, ours), bounded by the subscriber alone; publishers msg/s with the subscriber away; " +
    "subscriber CPU from its start again",
};

function printBridgeMode(bridge: BridgeReport | string, messages: number): void {
  if (typeof bridge === "string") {
    console.log(`\nbridge mode: skipped, ${bridge}`);
    return;
  }
  const { devices, inflight } = bridge.publishers;
  console.log(
    `\nbridge mode, ${fmt(messages)} messages a run from ${devices} publishers × ${inflight} in flight (QoS 1) ` +
      `through ${bridge.mosquitto.version} (${bridge.mosquitto.settings.join(", ")}) ` +
      `to an MQTT ${bridge.protocolVersion === 4 ? "3.1.1" : "5"} subscriber, QoS 1, persistent session`,
  );
  for (const load of BRIDGE_LOADS) {
    const results = bridge.results.filter((r) => r.load === load);
    if (results.length === 0) continue;
    console.log(`\n${BRIDGE_LOAD_HEADINGS[load]}\n`);
    console.log(
      `| ${load} | connections | msg/s | × ceiling | × naive | publishers msg/s | subscriber CPU s | exactly once |`,
    );
    console.log("|---|---|---:|---:|---:|---:|---:|---|");
    const of = (scenario: string) =>
      results.find((r) => r.scenario === scenario)?.perSecond ?? Number.NaN;
    for (const r of results) {
      const connections =
        r.env.SOURCE_SHARE_GROUP === undefined
          ? String(r.connections)
          : `${r.connections} ($share/${r.env.SOURCE_SHARE_GROUP})`;
      console.log(
        `| ${r.scenario} | ${connections} | ${fmt(r.perSecond)} | ${fmt(r.perSecond / of("ceiling"), 2)} | ` +
          `${fmt(r.perSecond / of("naive"), 2)} | ${fmt(r.publishedPerSecond)} | ${fmt(r.cpuSeconds, 1)} | ` +
          `${r.exactlyOnce ? "yes" : "**NO**"} |`,
      );
    }
  }
}

function bridgeFailures(bridge: BridgeReport | string): string[] {
  if (typeof bridge === "string") return [];
  return bridge.results
    .filter((r) => !r.exactlyOnce)
    .map((r) => `bridge mode ${r.load} ${r.scenario} with ${r.connections} connection(s)`);
}

async function main(serverUrl: string): Promise<void> {
  if (args.soak) {
    await soak(serverUrl, positive("soak", args.soak), positive("soak-rate", args["soak-rate"]));
    return;
  }
  const messages = positive("messages", args.messages);
  if (args.only !== "" && args.only !== "bridge") {
    throw new Error(`--only takes "bridge" (got "${args.only}")`);
  }
  if (args.only === "bridge") {
    const bridge = await bridgeMode(serverUrl, messages);
    if (args.json) console.log(JSON.stringify({ bridge }, null, 2));
    else printBridgeMode(bridge, messages);
    const failed = bridgeFailures(bridge);
    if (failed.length > 0) throw new Error(`not exactly once: ${failed.join("; ")}`);
    return;
  }
  const rows = positive("rows", args.rows);
  const batch = positive("batch", args.batch);
  const windowKeys = positive("window-keys", args["window-keys"]);
  // A short run (.ci/run's) storms fewer devices, so that hashing their secrets stays short too.
  const stormDevices = args["storm-devices"]
    ? positive("storm-devices", args["storm-devices"])
    : Math.min(1000, Math.ceil(messages / 20));
  // Past the service's queue of waiting hashes, a cold storm is answered CONNACK 3 (busy).
  if (stormDevices > AUTH_DEFAULTS.maxQueuedHashes) {
    throw new Error(`--storm-devices must be at most ${AUTH_DEFAULTS.maxQueuedHashes}`);
  }

  const withMosquitto = await mosquittoAnswers();
  const pipeline: ScenarioResult[] = [];
  for (const shape of SHAPES) {
    for (const scenario of SCENARIOS) {
      if (scenario === "mosquitto" && !withMosquitto) continue;
      progress(`${scenario}, ${shape.label}: ${messages} messages…`);
      pipeline.push(await benchScenario(serverUrl, scenario, shape, messages));
    }
  }
  const bridge = await bridgeMode(serverUrl, messages);
  progress(`connect storm: ${stormDevices} devices…`);
  const storm = await benchConnectStorm(serverUrl, stormDevices);
  const writers = await benchWriters(serverUrl, rows, batch, progress);
  progress(`dedup window: ${windowKeys} keys…`);
  const window = benchDedupWindow(windowKeys);
  progress("reading a message: default shape and mappings…");
  const reading = benchReading(Math.max(20_000, messages * 5));

  const failed = pipeline.filter((r) => r.exactlyOnce === false);
  const databaseLimit = writers.results.find((r) => r.writer === WRITERS[2])?.rowsPerSecond ?? 0;
  const ratios = SHAPES.map((shape) => {
    const of = (scenario: string) =>
      pipeline.find((r) => r.shape === shape.label && r.scenario === scenario)?.perSecond;
    const ours = of("ours") ?? 0;
    return {
      shape: shape.label,
      oursPerCeiling: ours / (of("ceiling") ?? Number.NaN),
      oursAuthPerCeiling: (of("ours+auth") ?? Number.NaN) / (of("ceiling") ?? Number.NaN),
      oursWorkersPerOurs: (of("ours+workers") ?? Number.NaN) / ours,
      oursPerNaive: ours / (of("naive") ?? Number.NaN),
      oursPerDatabaseLimit: ours / databaseLimit,
      mosquittoPerCeiling: (of("mosquitto") ?? Number.NaN) / (of("ceiling") ?? Number.NaN),
    };
  });

  if (args.json) {
    console.log(
      JSON.stringify(
        { pipeline, ratios, bridge, storm, batch, ...writers, window, reading },
        null,
        2,
      ),
    );
  } else {
    console.log(`\nend to end, QoS 1, ${fmt(messages)} messages a run, publish → PUBACK\n`);
    console.log(
      "| scenario | load | msg/s | p50 ms | p99 ms | max ms | broker CPU s | broker peak RSS MiB | exactly once |",
    );
    console.log("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for (const r of pipeline) {
      const once = r.exactlyOnce === undefined ? "–" : r.exactlyOnce ? "yes" : "**NO**";
      console.log(
        `| ${r.scenario} | ${r.shape} | ${fmt(r.perSecond)} | ${fmt(r.p50Ms, 1)} | ${fmt(r.p99Ms, 1)} | ` +
          `${fmt(r.maxMs, 1)} | ${fmt(r.cpuSeconds, 1)} | ${fmt(r.peakRssMiB)} | ${once} |`,
      );
    }
    console.log(
      "\n| load | ours / ceiling | ours+workers / ours | ours+auth / ceiling | ours / naive | ours / database limit | Mosquitto / ceiling |",
    );
    console.log("|---|---:|---:|---:|---:|---:|---:|");
    for (const r of ratios) {
      console.log(
        `| ${r.shape} | ${fmt(r.oursPerCeiling, 2)} | ${fmt(r.oursWorkersPerOurs, 2)} | ${fmt(r.oursAuthPerCeiling, 2)} | ${fmt(r.oursPerNaive, 1)} | ${fmt(r.oursPerDatabaseLimit, 2)} | ${
          Number.isNaN(r.mosquittoPerCeiling) ? "–" : fmt(r.mosquittoPerCeiling, 2)
        } |`,
      );
    }
    printBridgeMode(bridge, messages);
    console.log(
      `\nconnect storm: ${fmt(stormDevices)} devices connecting at once to a freshly started service, then again after all disconnected\n`,
    );
    console.log(
      "| scenario | storm | seconds to the last CONNACK | service CPU s | CPU ms per CONNECT |",
    );
    console.log("|---|---|---:|---:|---:|");
    for (const r of storm) {
      console.log(
        `| ${r.scenario} | ${r.phase} | ${fmt(r.seconds, 2)} | ${fmt(r.cpuSeconds, 2)} | ${fmt((r.cpuSeconds * 1000) / r.devices, 2)} |`,
      );
    }
    console.log(
      `\nstorage, ${fmt(rows)} rows of ~${writers.payloadBytes}-byte payloads, batches of ${batch}\n`,
    );
    console.log("| writer | round | rows/s | seconds |");
    console.log("|---|---|---:|---:|");
    for (const r of writers.results) {
      console.log(`| ${r.writer} | ${r.round} | ${fmt(r.rowsPerSecond)} | ${fmt(r.seconds, 2)} |`);
    }
    for (const round of ROUNDS) {
      const [ours, theirs] = WRITERS.map(
        (name) =>
          writers.results.find((r) => r.writer === name && r.round === round)?.rowsPerSecond ?? 0,
      );
      console.log(`${round}: BatchWriter / INSERT = ${fmt((ours ?? 0) / (theirs ?? 1), 2)}×`);
    }
    console.log(
      `\ndedup window: ${fmt(window.keys)} keys in ${fmt(window.heapMiB, 1)} MiB of heap, ${fmt(window.bytesPerKey)} bytes per key`,
    );
    const ours = pipeline.find((r) => r.scenario === "ours");
    const serviceMicroseconds =
      ours?.cpuSeconds === undefined ? Number.NaN : (ours.cpuSeconds * 1e6) / ours.messages;
    console.log(
      `\nreading a message, in-process (the service spends ${fmt(serviceMicroseconds, 1)} µs of CPU per message in all, ${SHAPES[0]?.label})\n`,
    );
    console.log("| payload | µs per message | × default | service CPU per message, × default |");
    console.log("|---|---:|---:|---:|");
    const base = reading[0]?.microseconds ?? 0;
    for (const r of reading) {
      console.log(
        `| ${r.label} | ${fmt(r.microseconds, 2)} | ${fmt(r.perDefault, 2)} | ${fmt((serviceMicroseconds - base + r.microseconds) / serviceMicroseconds, 2)} |`,
      );
    }
  }
  const notOnce = [...failed.map((r) => `${r.scenario}, ${r.shape}`), ...bridgeFailures(bridge)];
  if (notOnce.length > 0) throw new Error(`not exactly once: ${notOnce.join("; ")}`);
}

let server: TestServer | undefined;
let serverUrl = process.env.DATABASE_URL;
if (!serverUrl) {
  progress("starting an embedded PostgreSQL…");
  server = await startTestServer();
  serverUrl = server.url;
}
try {
  await main(serverUrl);
} catch (error) {
  console.error((error as Error).message);
  process.exitCode = 1;
} finally {
  await server?.destroy();
}
