import type { FleetCounters } from "./device.ts";

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
