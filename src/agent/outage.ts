/**
 * One backoff for every call the agent makes to the server on its own (attestation, renewal, entry
 * sync, the re-quote stream), and one log story for an outage: a warn line when calls start to
 * fail (and when the cause changes), a summary every {@link SUMMARY_INTERVAL_MS} while they keep
 * failing, and an info line when a call succeeds again. Not a line per attempt: an agent whose
 * server is away for hours must not fill the disk. A server the agent cannot trust as configured
 * (a stale bundle, another trust domain) is told the same way, by its own code.
 *
 * While the server is unreachable the loops share the earliest time of the next attempt, so a
 * wake-up in one loop (an SVID due, a re-attestation asked for) cannot bypass the backoff another
 * loop's failure set.
 *
 * @module
 */
import type { Logger } from 'pino';
import { type AgentError, SERVER_TRUST_CODES } from './errors.js';

/** While calls keep failing, a summary line this often. */
export const SUMMARY_INTERVAL_MS = 5 * 60_000;

/** Which loop made a call: the agent SVID's (attest, renew), the entry sync, the re-quote stream. */
export type CallPath = 'agent_svid' | 'sync' | 'reattest';

const UNREACHABLE = 'ERR_AGENT_SERVER_UNAVAILABLE';

/** Failures of the server as the agent sees it, whichever loop met them: every loop waits them out. */
function isServerWide(code: string): boolean {
  return code === UNREACHABLE || SERVER_TRUST_CODES.has(code);
}

function firstLine(code: string): string {
  if (code === UNREACHABLE)
    return 'the server is unreachable; serving the cached SVIDs and retrying with backoff';
  if (SERVER_TRUST_CODES.has(code))
    return 'the server cannot be authenticated (a configuration to fix, see reason); serving the cached SVIDs and retrying with backoff';
  return 'the server refuses this agent; serving the cached SVIDs and retrying with backoff';
}

export class ServerContact {
  readonly #initialMs: number;
  readonly #maxMs: number;
  readonly #logger: Logger;
  /**
   * The server unreachable (or not to be trusted as configured) is one state for every loop (any
   * call that gets through ends it); a refusal is the refused loop's own (a renewal refused says
   * nothing of the sync), and only a success of that loop ends it, so a sync that works cannot
   * reset a refused renewal's backoff.
   */
  #unreachable: { failures: number; notBefore: number } | undefined;
  readonly #refused = new Map<CallPath, { error: AgentError; failures: number; notBefore: number }>();
  #failures = 0;
  #since: number | undefined;
  #lastError: AgentError | undefined;
  #lastSummary = 0;

  constructor(options: { retryInitialMs: number; retryMaxMs: number; logger: Logger }) {
    this.#initialMs = options.retryInitialMs;
    this.#maxMs = Math.max(options.retryMaxMs, options.retryInitialMs);
    this.#logger = options.logger;
  }

  /** Failed calls since the last time every call succeeded. */
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

  /** How long `path` waits before its next call: while the server is unreachable, every path waits. */
  waitMs(path: CallPath): number {
    const notBefore = Math.max(this.#unreachable?.notBefore ?? 0, this.#refused.get(path)?.notBefore ?? 0);
    return Math.max(0, notBefore - Date.now());
  }

  /** Records a failed call; returns the wait before `path` calls again. */
  failed(error: AgentError, path: CallPath): number {
    const now = Date.now();
    this.#failures++;
    const previous = this.#lastError;
    this.#lastError = error;
    if (this.#since === undefined) {
      this.#since = now;
      this.#lastSummary = now;
      this.#logger.warn({ reason: error.code, err_message: error.message, path }, firstLine(error.code));
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
    if (isServerWide(error.code)) {
      const state = this.#unreachable ?? { failures: 0, notBefore: 0 };
      state.failures++;
      state.notBefore = Math.max(state.notBefore, now + this.#delayMs(state.failures));
      this.#unreachable = state;
      this.#refused.delete(path);
      return state.notBefore - now;
    }
    const state = this.#refused.get(path) ?? { error, failures: 0, notBefore: 0 };
    state.error = error;
    state.failures++;
    state.notBefore = now + this.#delayMs(state.failures);
    this.#refused.set(path, state);
    return this.waitMs(path);
  }

  /**
   * Records a call of `path` that succeeded (`every`: one that resets them all, a full attestation):
   * when no refusal is left, ends the outage, logging it.
   */
  succeeded(path: CallPath, every = false): void {
    this.#unreachable = undefined;
    if (every) this.#refused.clear();
    else this.#refused.delete(path);
    const left = [...this.#refused.values()].at(-1);
    if (left !== undefined) {
      this.#lastError = left.error;
      return;
    }
    if (this.#since !== undefined)
      this.#logger.info(
        { down_ms: Date.now() - this.#since, attempts: this.#failures, reason: this.#lastError?.code },
        'the server is reachable again',
      );
    this.#failures = 0;
    this.#since = undefined;
    this.#lastError = undefined;
  }

  /** Exponential from retry_initial, capped at retry_max, with full jitter in its upper half. */
  #delayMs(failures: number): number {
    const capped = Math.min(this.#initialMs * 2 ** Math.min(failures - 1, 30), this.#maxMs);
    return capped / 2 + (Math.random() * capped) / 2;
  }
}
