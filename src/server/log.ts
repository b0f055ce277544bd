/**
 * Structured JSON logs (pino). Fields are named (`uid`, `method`, `result`, `duration_ms`, …);
 * secrets are never passed to the logger, and the redact list is a second line of defence.
 *
 * @module
 */
import { type Logger, pino } from 'pino';

export type { Logger };

export function createLogger(level: string): Logger {
  return pino({
    name: 'ironroot-server',
    level,
    redact: { paths: ['token', '*.token', 'pin', '*.pin'], censor: 'REDACTED' },
  });
}
