import { percentile } from "../bridge/percentile.ts";
import type { FleetRun } from "./fleet.ts";
import type { SimOptions } from "./options.ts";
import type { Verification } from "./verify.ts";

export interface Summary {
  runId: string;
  seed: number;
  devices: number;
  seconds: number;
  qos: 0 | 1;
  uniqueEventsSent: number;
  uniqueEventsAcknowledged: number;
  messagesSent: number;
  messagesAcknowledged: number;
  acknowledgedPerSecond: number;
  duplicatesInjected: number;
  badInjected: number;
  badAcknowledged: number;
  lateInjected: number;
  reconnects: number;
  errors: number;
  latencyMs: { p50: number; p99: number; max: number } | null;
  verification?: Verification;
}

export function summarize(options: SimOptions, run: FleetRun): Summary {
  const c = run.counters;
  const sorted = [...c.latencies].sort((a, b) => a - b);
  const round = (ms: number) => Math.round(ms * 10) / 10;
  return {
    runId: options.runId,
    seed: options.seed,
    devices: options.devices,
    seconds: round(run.seconds),
    qos: options.qos,
    uniqueEventsSent: c.uniqueSent,
    uniqueEventsAcknowledged: c.uniqueAcked,
    messagesSent: c.sent,
    messagesAcknowledged: c.acked,
    acknowledgedPerSecond: Math.round(c.acked / run.seconds),
    duplicatesInjected: c.duplicatesSent,
    badInjected: c.badSent,
    badAcknowledged: c.badAcked,
    lateInjected: c.lateSent,
    reconnects: c.reconnects,
    errors: c.errors,
    latencyMs:
      sorted.length === 0
        ? null
        : {
            p50: round(percentile(sorted, 50)),
            p99: round(percentile(sorted, 99)),
            max: round(sorted.at(-1) ?? 0),
          },
  };
}

export function formatSummary(summary: Summary): string {
  const n = (value: number) => value.toLocaleString("en-US");
  const lines = [
    `run ${summary.runId} (seed ${summary.seed}): ${n(summary.devices)} devices, ${summary.seconds} s, QoS ${summary.qos}`,
    `  unique events      ${n(summary.uniqueEventsSent)} sent, ${n(summary.uniqueEventsAcknowledged)} acknowledged`,
    `  messages           ${n(summary.messagesSent)} sent, ${n(summary.messagesAcknowledged)} acknowledged (${n(summary.acknowledgedPerSecond)}/s)`,
    `  duplicates         ${n(summary.duplicatesInjected)} injected`,
    `  bad messages       ${n(summary.badInjected)} injected, ${n(summary.badAcknowledged)} acknowledged`,
    `  late events        ${n(summary.lateInjected)} injected`,
    `  reconnects         ${n(summary.reconnects)}`,
    `  errors             ${n(summary.errors)}`,
  ];
  if (summary.latencyMs) {
    const { p50, p99, max } = summary.latencyMs;
    lines.push(`  publish→PUBACK     p50 ${p50} ms, p99 ${p99} ms, max ${max} ms`);
  }
  const v = summary.verification;
  if (v) {
    lines.push(
      `verify: ${v.pass ? "PASS" : "FAIL"}  ${n(v.expected)} expected, ${n(v.stored)} stored, ` +
        `${n(v.missing)} missing, ${n(v.duplicated)} stored twice, ${n(v.unexpected)} unexpected, ` +
        `${n(v.rejected)} in telemetry_rejected for ${n(v.badExpected)} bad`,
    );
    for (const problem of v.problems) lines.push(`  ${problem}`);
  }
  return lines.join("\n");
}
