/**
 * One backoff for every call the agent makes to the server on its own (attestation, renewal, entry
 * sync, the re-quote stream), and one log story for an outage: a warn line when calls start to
 * fail (and when the cause changes), a summary every {@link SUMMARY_INTERVAL_MS} while they keep
 * failing, and an info line when a call succeeds again. Not a line per attempt: an agent whose
 * server is away for hours must not fill the disk.
 *
 * The loops share the earliest time of the next attempt, so a wake-up in one loop (an SVID due, a
 * re-attestation asked for) cannot bypass the backoff another loop's failure set.
 *
 * @module
 */
import type { Logger } from 'pino';
import type { AgentError } from './errors.js';

/** While calls keep failing, a summary line this often. */
export const SUMMARY_INTERVAL_MS = 5 * 60_000;

export class ServerContact {
  readonly #initialMs: number;
  readonly #maxMs: number;
  readonly #logger: Logger;
  #failures = 0;
  #since: number | undefined;
  #lastError: AgentError | undefined;
  #lastSummary = 0;
  #notBefore = 0;

  constructor(options: { retryInitialMs: number; retryMaxMs: number; logger: Logger }) {
    this.#initialMs = options.retryInitialMs;
    this.#maxMs = Math.max(options.retryMaxMs, options.retryInitialMs);
    this.#logger = options.logger;
  }

  /** Failed calls since the last one that succeeded. */
  get consecutiveFailures(): number {
    return this.#failures;
  }

  get lastError(): AgentError | undefined {
    return this.#lastError;
  }

  /** Unix milliseconds of the first failure of the current outage; undefined when calls succeed. */
  get failingSince(): number | undefined {
    return this.#since;
  }

  /** How long to wait before the next call to the server; 0 when calls succeed. */
  waitMs(): number {
    return Math.max(0, this.#notBefore - Date.now());
  }

  /** Records a failed call (from `path`: which loop made it); returns the wait before the next. */
  failed(error: AgentError, path: string): number {
    const now = Date.now();
    this.#failures++;
    const previous = this.#lastError;
    this.#lastError = error;
    if (this.#since === undefined) {
      this.#since = now;
      this.#lastSummary = now;
      this.#logger.warn(
        { reason: error.code, err_message: error.message, path },
        error.code === 'ERR_AGENT_SERVER_UNAVAILABLE'
          ? 'the server is unreachable; serving the cached SVIDs and retrying with backoff'
          : 'the server refuses this agent; serving the cached SVIDs and retrying with backoff',
      );
    } else if (previous?.code !== error.code) {
      this.#logger.warn(
        { reason: error.code, err_message: error.message, path, previous_reason: previous?.code },
        'calls to the server fail for another reason now; still retrying with backoff',
      );
    } else if (now - this.#lastSummary >= SUMMARY_INTERVAL_MS) {
      this.#lastSummary = now;
      this.#logger.warn(
        {
          reason: error.code,
          err_message: error.message,
          attempts: this.#failures,
          since: new Date(this.#since).toISOString(),
        },
        'calls to the server still fail; retrying with backoff',
      );
    }
    this.#notBefore = Math.max(this.#notBefore, now + this.#delayMs());
    return this.#notBefore - now;
  }

  /** Records a call that succeeded: ends the outage (logging it) and the backoff. */
  succeeded(): void {
    if (this.#since !== undefined)
      this.#logger.info(
        { down_ms: Date.now() - this.#since, attempts: this.#failures, reason: this.#lastError?.code },
        'the server is reachable again',
      );
    this.#failures = 0;
    this.#since = undefined;
    this.#lastError = undefined;
    this.#notBefore = 0;
  }

  /** Exponential from retry_initial, capped at retry_max, with full jitter in its upper half. */
  #delayMs(): number {
    const capped = Math.min(this.#initialMs * 2 ** Math.min(this.#failures - 1, 30), this.#maxMs);
    return capped / 2 + (Math.random() * capped) / 2;
  }
}
