/**
 * The agent's structured JSON logs (the factory in src/host). The join token is never passed to
 * the logger; the redact list is a second line of defence.
 *
 * @module
 */
import type { DestinationStream } from 'pino';
import { createLogger, type LogFormat, type Logger } from '../host/index.js';

const REDACT = ['join_token', '*.join_token', 'token'];

export function createAgentLogger(
  settings: { log_level: string; log_format: LogFormat },
  destination?: DestinationStream,
): Logger {
  return createLogger(
    { name: 'ironroot-agent', level: settings.log_level, format: settings.log_format, redact: REDACT },
    destination,
  );
}
