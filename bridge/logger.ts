import { pino } from "pino";
import type { LogLevel } from "./config.ts";

export type Logger = pino.Logger;

/** JSON lines for machines; pino-pretty when a person is watching a terminal. */
export function createLogger(level: LogLevel): Logger {
  if (process.stdout.isTTY) {
    return pino({ level, transport: { target: "pino-pretty", options: { colorize: true } } });
  }
  return pino({ level });
}
