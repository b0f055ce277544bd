/**
 * The one way both executables build their logger: pino JSON lines on standard output, in one of
 * two formats.
 *
 * - `json` (default): `"time"` as ISO-8601 UTC and `"level"` as its name (`"info"`), which log
 *   shippers and people read without a lookup table.
 * - `pino`: pino's own line, `"time"` in epoch milliseconds and `"level"` as its number (30 = info),
 *   for tooling built around pino's native format.
 *
 * @module
 */
import { type DestinationStream, type Logger, type LoggerOptions, pino } from 'pino';

export type { Logger };

export const LOG_FORMATS = ['json', 'pino'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;

export interface LogOptions {
  /** `name` on every line: which executable wrote it. */
  name: string;
  level: string;
  format: LogFormat;
  /** Field paths censored as `REDACTED`; secrets are never passed to the logger, this is a second line of defence. */
  redact: readonly string[];
}

/** A logger writing to `destination` (standard output when absent). */
export function createLogger(options: LogOptions, destination?: DestinationStream): Logger {
  const settings: LoggerOptions = {
    name: options.name,
    level: options.level,
    redact: { paths: [...options.redact], censor: 'REDACTED' },
    ...(options.format === 'json'
      ? {
          timestamp: pino.stdTimeFunctions.isoTime,
          formatters: { level: (label: string) => ({ level: label }) },
        }
      : {}),
  };
  return destination === undefined ? pino(settings) : pino(settings, destination);
}
