/**
 * The demo's one error type: a message for the operator and, when a child process was involved,
 * that child, so the report can show the end of its log.
 *
 * @module
 */

/** Anything with a name and the tail of a log (a {@link Child}). */
export interface LogSource {
  readonly name: string;
  readonly logFile: string;
  tail(lines?: number): string;
}

export class DemoError extends Error {
  readonly source: LogSource | undefined;

  constructor(message: string, source?: LogSource, options?: ErrorOptions) {
    super(message, options);
    this.name = 'DemoError';
    this.source = source;
  }
}

/** Raised by the step runner: which step failed, and why. */
export class StepError extends Error {
  readonly step: string;
  readonly number: number;
  readonly source: LogSource | undefined;

  constructor(number: number, step: string, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super(`step ${number} "${step}" failed: ${reason}`, { cause });
    this.name = 'StepError';
    this.step = step;
    this.number = number;
    this.source = cause instanceof DemoError ? cause.source : undefined;
  }
}
