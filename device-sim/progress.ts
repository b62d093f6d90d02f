import type { FleetCounters } from "./device.ts";
import { QOS0_SETTLE_MS, type StorageProgress } from "./verify.ts";

/**
 * Shows the run while it goes: one line rewritten in place on a terminal,
 * a plain line every few seconds otherwise. Writes to stderr, so --json
 * output on stdout stays clean.
 */
export function showProgress(counters: FleetCounters, devices: number): () => void {
  const tty = process.stderr.isTTY === true;
  const everyMs = tty ? 500 : 5000;
  let last = { sent: counters.sent, acked: counters.acked, at: performance.now() };
  const timer = setInterval(() => {
    const now = { sent: counters.sent, acked: counters.acked, at: performance.now() };
    const seconds = (now.at - last.at) / 1000;
    const line =
      `connected ${counters.connected}/${devices}  sent ${Math.round((now.sent - last.sent) / seconds)}/s  ` +
      `acked ${Math.round((now.acked - last.acked) / seconds)}/s  in flight ${counters.inflight}  ` +
      `reconnects ${counters.reconnects}  errors ${counters.errors}`;
    process.stderr.write(tty ? `\r\x1b[2K${line}` : `${line}\n`);
    last = now;
  }, everyMs);
  timer.unref();
  return () => {
    clearInterval(timer);
    if (tty) process.stderr.write("\n");
  };
}

/**
 * Shows verification waiting for the service to store the run: on a terminal
 * one line rewritten after each check, otherwise a plain line every few
 * seconds and one when the wait ends. Writes to stderr, as above.
 */
export function showStorageProgress(): (progress: StorageProgress) => void {
  const tty = process.stderr.isTTY === true;
  let shownAt: number | undefined;
  const n = (value: number) => value.toLocaleString("en-US");
  return (progress) => {
    const deadLetters =
      progress.badExpected > 0
        ? `, ${n(progress.deadLetters)}/${n(progress.badExpected)} dead letters`
        : "";
    const stored = `verify: ${n(progress.stored)}/${n(progress.expected)} events stored${deadLetters}`;
    const line =
      progress.ended === "stored"
        ? `${stored}, ${progress.waitedS} s after the run`
        : progress.ended === "timeout"
          ? `${stored}; stopped waiting after ${progress.waitedS} s`
          : progress.ended === "settled"
            ? `${stored}; nothing more stored for ${QOS0_SETTLE_MS / 1000} s, the rest taken as lost (QoS 0)`
            : `${stored}, waiting up to ${progress.leftS} s more`;
    const now = performance.now();
    if (tty) {
      process.stderr.write(`\r\x1b[2K${line}${progress.ended ? "\n" : ""}`);
    } else if (progress.ended || shownAt === undefined || now - shownAt >= 5000) {
      process.stderr.write(`${line}\n`);
      shownAt = now;
    }
  };
}
