/**
 * The server's structured JSON logs (the factory in src/host). Fields are named (`uid`, `method`,
 * `result`, `duration_ms`, …); secrets are never passed to the logger, and the redact list is a
 * second line of defence.
 *
 * @module
 */
import type { DestinationStream } from 'pino';
import { createLogger, type LogFormat, type Logger } from '../host/index.js';

export type { Logger };

const REDACT = ['token', '*.token', 'pin', '*.pin'];

export function createServerLogger(
  settings: { log_level: string; log_format: LogFormat },
  destination?: DestinationStream,
): Logger {
  return createLogger(
    { name: 'ironroot-server', level: settings.log_level, format: settings.log_format, redact: REDACT },
    destination,
  );
}
