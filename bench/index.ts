/**
 * npm run bench -- [--messages N] [--rows N] [--batch N] [--window-keys N] [--json]
 *
 * Runs against DATABASE_URL when set, otherwise a throwaway embedded PostgreSQL.
 */
import { parseArgs } from "node:util";
import { startTestServer, type TestServer } from "../test/helpers/embedded-server.ts";
import { benchDedupWindow } from "./dedup-window.ts";
import { benchPipeline, type PipelineShape } from "./pipeline.ts";
import { benchWriters, ROUNDS, WRITERS } from "./writer.ts";

const { values: args } = parseArgs({
  options: {
    rows: { type: "string", default: "200000" },
    batch: { type: "string", default: "5000" },
    "window-keys": { type: "string", default: "1000000" },
    messages: { type: "string", default: "100000" },
    json: { type: "boolean", default: false },
  },
});

function positive(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
  return n;
}

const rows = positive("rows", args.rows);
const batch = positive("batch", args.batch);
const windowKeys = positive("window-keys", args["window-keys"]);
const messages = positive("messages", args.messages);
const shapes: PipelineShape[] = [
  { label: "1 device, 100 in flight", devices: 1, inflight: 100, messagesPerDevice: messages },
  {
    label: "500 devices, 1 in flight each",
    devices: 500,
    inflight: 1,
    messagesPerDevice: Math.ceil(messages / 500),
  },
];
const progress = (line: string) => {
  if (!args.json) console.error(line);
};

let server: TestServer | undefined;
let serverUrl = process.env.DATABASE_URL;
if (!serverUrl) {
  progress("starting an embedded PostgreSQL…");
  server = await startTestServer();
  serverUrl = server.url;
}
try {
  const pipeline = [];
  for (const shape of shapes) {
    progress(`pipeline: ${shape.label}…`);
    pipeline.push(await benchPipeline(serverUrl, shape));
  }
  const writers = await benchWriters(serverUrl, rows, batch, progress);
  progress(`dedup window: ${windowKeys} keys…`);
  const window = benchDedupWindow(windowKeys);
  if (args.json) {
    console.log(JSON.stringify({ pipeline, rows, batch, ...writers, window }, null, 2));
  } else {
    console.log("\nend to end (QoS 1, acknowledged after commit)\n");
    console.log("| load | messages | msg/s | p50 ms | p99 ms | max ms |");
    console.log("|---|---:|---:|---:|---:|---:|");
    for (const r of pipeline) {
      console.log(
        `| ${r.label} | ${r.messages} | ${Math.round(r.perSecond).toLocaleString("en-US")} | ` +
          `${r.p50Ms.toFixed(1)} | ${r.p99Ms.toFixed(1)} | ${r.maxMs.toFixed(1)} |`,
      );
    }
    console.log(`\n${rows} rows of ~${writers.payloadBytes}-byte payloads, batches of ${batch}\n`);
    console.log("| writer | round | rows/s | seconds | stored |");
    console.log("|---|---|---:|---:|---:|");
    for (const r of writers.results) {
      const perSecond = Math.round(r.rowsPerSecond).toLocaleString("en-US");
      console.log(
        `| ${r.writer} | ${r.round} | ${perSecond} | ${r.seconds.toFixed(2)} | ${r.stored} |`,
      );
    }
    console.log("");
    for (const round of ROUNDS) {
      const [ours, theirs] = WRITERS.map(
        (name) =>
          writers.results.find((r) => r.writer === name && r.round === round)?.rowsPerSecond ?? 0,
      );
      console.log(`${round}: BatchWriter / INSERT = ${((ours ?? 0) / (theirs ?? 1)).toFixed(2)}×`);
    }
    console.log(
      `\ndedup window: ${window.keys.toLocaleString("en-US")} keys in ${window.heapMiB.toFixed(1)} MiB of heap, ` +
        `${Math.round(window.bytesPerKey)} bytes per key`,
    );
  }
} finally {
  await server?.destroy();
}
