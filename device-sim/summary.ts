import type { Identity } from "../bridge/mappings.ts";
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
  /** The devices' profile, and how the service tells its rows apart; absent for the default shape. */
  profile?: { name: string; mappingsFile: string; identity: Identity };
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
    ...(options.profile && {
      profile: {
        name: options.profile.profile.name,
        mappingsFile: options.profile.profile.mappingsFile,
        identity: options.profile.identity,
      },
    }),
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
  const profile = summary.profile ? `, profile ${summary.profile.name}` : "";
  const lines = [
    `run ${summary.runId} (seed ${summary.seed}): ${n(summary.devices)} devices, ${summary.seconds} s, QoS ${summary.qos}${profile}`,
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
    const duplicated =
      summary.profile?.identity === "none"
        ? `${n(v.duplicated)} stored more than once (allowed: at least once)`
        : `${n(v.duplicated)} stored twice`;
    lines.push(
      `verify: ${v.pass ? "PASS" : "FAIL"}  ${n(v.expected)} expected, ${n(v.stored)} stored, ` +
        `${n(v.missing)} missing, ${duplicated}, ${n(v.unexpected)} unexpected, ` +
        `${n(v.rejected)} in telemetry_rejected for ${n(v.badExpected)} bad`,
    );
    for (const problem of v.problems) lines.push(`  ${problem}`);
  }
  return lines.join("\n");
}
