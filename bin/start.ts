import { ConfigError, loadConfig } from "../bridge/config.ts";
import { createLogger, type Logger } from "../bridge/logger.ts";
import { announce, listeningOf } from "./announce.ts";
import { startService } from "./service.ts";
import { announceWorker, isWorker, startWorkers, workerReports } from "./workers.ts";

/**
 * One signal often arrives twice within milliseconds: npm forwards the SIGINT
 * or SIGTERM it receives, and the terminal (Ctrl-C) or `timeout` sends the
 * same to the whole process group. A repeat this soon after the first is
 * taken as the same signal; a later one forces the exit.
 */
const REPEAT_WINDOW_MS = 1000;

/**
 * Calls `stop` on the first SIGINT or SIGTERM, then exits 0 once it resolves
 * (1 if it fails); a repeat within REPEAT_WINDOW_MS is the same signal, a
 * later one forces the exit.
 */
function onShutdownSignals(logger: Logger, stop: () => Promise<void>): void {
  let firstSignalAt: number | undefined;
  const shutdown = (signal: NodeJS.Signals) => {
    const now = performance.now();
    if (firstSignalAt !== undefined) {
      if (now - firstSignalAt < REPEAT_WINDOW_MS) {
        logger.info({ signal }, "same signal again within 1 s: still shutting down");
        return;
      }
      logger.warn({ signal }, "second signal: exiting without waiting");
      process.exit(1);
    }
    firstSignalAt = now;
    logger.info({ signal }, "shutting down: committing what was received (signal again to force)");
    stop().then(
      () => {
        logger.info("stopped");
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", shutdown);
  process.on("SIGTERM", shutdown);
}

/** `npm start`: everything on one machine, until SIGINT or SIGTERM. */
async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`invalid configuration: ${error.message}`);
    process.exit(2);
  }
  const logger = createLogger(config.logLevel);
  if (config.workers > 1 && !isWorker) {
    const starting = startWorkers(config, logger);
    // A signal during start-up waits for it, so that what it started (the
    // embedded PostgreSQL above all) is stopped too.
    onShutdownSignals(logger, () => starting.then((started) => started.stop()));
    const started = await starting;
    announce(config, { ...started.listening, embedded: started.embedded }, logger);
    return;
  }
  const starting = startService(config, logger, isWorker ? workerReports : undefined);
  onShutdownSignals(logger, () => starting.then((started) => started.close()));
  // As for Mosquitto, SIGHUP re-reads the TLS certificates (their files are also watched).
  process.on("SIGHUP", () => void starting.then((started) => started.mqtt?.reloadCertificates()));
  const listening = listeningOf(await starting);
  if (isWorker) announceWorker(listening);
  else announce(config, listening, logger);
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : String(error));
  process.exit(1);
});
