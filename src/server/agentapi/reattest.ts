/**
 * Continuous attestation: the server asks every attested TPM node for a fresh quote every
 * `reattest_interval` (and when an operator asks), over the Reattest stream the agent keeps open,
 * and judges the answer as renewal does (verifyAnswer with the recorded AK), plus what only a
 * series of quotes can show: the TPM's reset and restart counters never go back, a changed reset
 * count is a reboot, and the event log only grows. A failed or missing answer makes the node
 * untrusted, which the agent API then enforces (no renewal, no entries, no workload SVIDs).
 *
 * One timer drives everything: a wheel of buckets `TICK_MS` wide holding the nodes due in them, the
 * timer armed for the earliest non-empty bucket only (a server without TPM nodes never wakes for
 * it). Due times are spread with jitter, so thousands of nodes never quote (nor write to the datastore) at
 * the same instant. Scheduling runs on the monotonic clock: a wall-clock jump must not make every
 * node miss its deadline at once.
 *
 * Servers sharing a datastore each hold the Reattest streams of the agents connected to them, and
 * each schedules every node. A challenge that never reached its agent here (no stream on this
 * server, or its stream closed before the answer) is judged from the datastore at its deadline (its
 * nonce, a datastore write, is made only if the stream arrives meanwhile):
 * when the node's last verified quote, which every server records, is recent enough for another
 * server to be re-quoting it, there is no verdict here; only a node no server has heard from lately
 * becomes untrusted.
 *
 * @module
 */
import { Metadata, type ServerDuplexStream, type ServerErrorResponse } from '@grpc/grpc-js';
import type { Counter } from 'prom-client';
import type { ReattestChallenge, ReattestRequest } from '../../agent-api/proto.js';
import { parseAttest, parseTpm2bPublic } from '../../tpm/index.js';
import { type Clock, nowSeconds } from '../clock.js';
import type { AttestedNode, Datastore, NodeTrust } from '../datastore/datastore.js';
import { AgentNotFoundError, NodeAttestedAgainError, ServerError } from '../errors.js';
import type { Logger } from '../log.js';
import { AttestationError, type AttestationErrorCode } from '../nodeattestor/errors.js';
import { NonceStore } from '../nodeattestor/nonces.js';
import type { BootSubject, TpmPolicy } from '../nodeattestor/policy.js';
import {
  type LastQuote,
  lastQuote,
  ProfileViolationError,
  type VerifiedAnswer,
  verifyAnswer,
} from '../nodeattestor/tpm.js';

const ACTOR = 'reattest';
/** Width of one wheel bucket: due times are honoured to within this. */
const TICK_MS = 250;
/** Each next due time moves by up to this fraction of the interval either way. */
const JITTER = 0.1;
/** verifyAnswer raises these before (or while) it verifies the quote; any other refusal comes after. */
const BEFORE_QUOTE_VERIFIED: ReadonlySet<AttestationErrorCode> = new Set([
  'ERR_ATTEST_BAD_REQUEST',
  'ERR_ATTEST_NONCE_EXPIRED',
  'ERR_ATTEST_NONCE_REPLAYED',
  'ERR_ATTEST_SECRET_MISMATCH',
  'ERR_ATTEST_QUOTE_SIGNATURE',
  'ERR_ATTEST_QUOTE_INVALID',
  'ERR_ATTEST_PCR_DIGEST',
]);

export type ReattestStream = ServerDuplexStream<ReattestRequest, ReattestChallenge>;

export interface ReattestResult {
  trusted: boolean;
  code: string;
  reason: string;
  durationMs: number;
}

export interface ReattestOptions {
  datastore: Datastore;
  /** Wall clock, for what is stored (when trust changed, when a quote was verified). */
  clock: Clock;
  logger: Logger;
  policy: TpmPolicy;
  intervalSeconds: number;
  deadlineSeconds: number;
  reattestations: Counter<'result'>;
}

interface Pending {
  readonly id: number;
  /** Undefined until the datastore has it: only then does the challenge go out. */
  nonce: Uint8Array | undefined;
  /**
   * Set once the nonce was asked of the datastore, which happens only when the node's stream is
   * here: a server re-quoting a node connected elsewhere (or nowhere) writes nothing for it.
   */
  nonceAsked: boolean;
  readonly sentAt: number;
  /** Wall-clock seconds at issue, to compare with quotes other servers record. */
  readonly issuedAt: number;
  readonly deadlineAt: number;
  /** Set once an answer is being judged: later answers and the deadline leave it alone. */
  answered: boolean;
  /** Set once the challenge went out on a stream of this server. */
  sent: boolean;
  /** Operators waiting for this verdict (`agent reattest`). */
  readonly waiters: { resolve: (result: ReattestResult) => void; reject: (error: Error) => void }[];
}

interface Session {
  readonly agentId: string;
  stream: ReattestStream | undefined;
  dueAt: number;
  pending: Pending | undefined;
  trust: NodeTrust['state'];
}

/** Buckets of agent IDs by due time; one timer walks them. Stale entries are ignored by the caller. */
class TimerWheel {
  readonly #buckets = new Map<number, Set<string>>();
  #cursor: number;

  constructor(now: number) {
    this.#cursor = Math.floor(now / TICK_MS);
  }

  /** Returns the bucket `agentId` went into. */
  schedule(agentId: string, at: number): number {
    const bucket = Math.max(Math.ceil(at / TICK_MS), this.#cursor + 1);
    const ids = this.#buckets.get(bucket) ?? new Set<string>();
    ids.add(agentId);
    this.#buckets.set(bucket, ids);
    return bucket;
  }

  /** The earliest non-empty bucket, if any. */
  next(): number | undefined {
    let earliest: number | undefined;
    for (const bucket of this.#buckets.keys())
      if (earliest === undefined || bucket < earliest) earliest = bucket;
    return earliest;
  }

  /** Removes and returns every ID in buckets up to `now`. */
  take(now: number): string[] {
    const upto = Math.floor(now / TICK_MS);
    const due: string[] = [];
    const buckets =
      upto - this.#cursor <= this.#buckets.size
        ? Array.from({ length: upto - this.#cursor }, (_, i) => this.#cursor + 1 + i)
        : [...this.#buckets.keys()].filter((b) => b <= upto);
    for (const bucket of buckets) {
      const ids = this.#buckets.get(bucket);
      if (ids === undefined) continue;
      this.#buckets.delete(bucket);
      due.push(...ids);
    }
    this.#cursor = Math.max(this.#cursor, upto);
    return due;
  }

  clear(): void {
    this.#buckets.clear();
  }
}

const monotonic: Clock = { now: () => performance.now() };

export class ContinuousAttestation {
  readonly #o: ReattestOptions;
  readonly #sessions = new Map<string, Session>();
  readonly #wheel = new TimerWheel(monotonic.now());
  readonly #nonces: NonceStore;
  readonly #intervalMs: number;
  readonly #deadlineMs: number;
  #nextId = 0;
  #timer: NodeJS.Timeout | undefined;
  /** Set while datastore calls fail: other servers cannot record re-quotes either. */
  #storeDown = false;
  /** When the datastore answered again after failing (unix seconds): quotes are judged from then. */
  #storeBackAt = 0;
  /** The bucket {@link #timer} is armed for; undefined while it sleeps. */
  #armed: number | undefined;
  #running = false;

  constructor(options: ReattestOptions) {
    this.#o = options;
    this.#intervalMs = options.intervalSeconds * 1000;
    this.#deadlineMs = options.deadlineSeconds * 1000;
    // The deadline is kept on the monotonic clock by the wheel; the stored nonce expiry is wall
    // clock, so it gets a margin that a clock step during a re-quote does not exhaust.
    this.#nonces = new NonceStore({
      datastore: options.datastore,
      clock: options.clock,
      ttlSeconds: options.deadlineSeconds * 2,
    });
  }

  /**
   * Schedules every attested TPM node, connected or not: a node whose agent never comes back must
   * still become untrusted. After a server start agents need a moment to reconnect, so the first
   * re-quotes come one to two intervals later.
   */
  async start(): Promise<void> {
    const now = monotonic.now();
    for (const node of await this.#o.datastore.listNodes()) {
      if (node.attestationType !== 'tpm' || node.banned) continue;
      this.#session(node.spiffeId, node.trust.state, now + this.#intervalMs * (1 + Math.random()));
    }
    this.#running = true;
    this.#arm(this.#wheel.next());
  }

  stop(): void {
    this.#running = false;
    clearTimeout(this.#timer);
    this.#armed = undefined;
    this.#wheel.clear();
    for (const session of this.#sessions.values()) session.stream?.end();
    this.#sessions.clear();
  }

  /** The number of nodes whose last re-quote failed (a gauge). */
  get untrusted(): number {
    let count = 0;
    for (const session of this.#sessions.values()) if (session.trust === 'untrusted') count++;
    return count;
  }

  /** A node attested (again): it is trusted, and its first re-quote is one interval away. */
  attested(agentId: string): void {
    const session = this.#sessions.get(agentId);
    if (session === undefined) this.#session(agentId, 'trusted', monotonic.now() + this.#nextInterval());
    else session.trust = 'trusted';
  }

  /**
   * The agent's stream (authenticated by the caller): challenges go out on it, answers come in.
   * False, and nothing changes, when the stream is already over: the agent went away while it was
   * being admitted, and grpc-js emitted its last events before anyone listened. Held, such a stream
   * would pass for the agent's until it came back here: every challenge "sent" on it, none answered,
   * the node made untrusted while another server re-quotes it.
   */
  attach(agentId: string, stream: ReattestStream): boolean {
    if (stream.cancelled || stream.destroyed) return false;
    const now = monotonic.now();
    const session =
      this.#sessions.get(agentId) ?? this.#session(agentId, 'trusted', now + this.#nextInterval());
    // One stream per node: a reconnecting agent replaces the stream it left behind.
    if (session.stream !== undefined && session.stream !== stream) session.stream.end();
    session.stream = stream;
    const detach = () => {
      if (session.stream !== stream) return;
      session.stream = undefined;
      // The agent left (restarted, failed over to another server) with a challenge unanswered: it is
      // judged like one that never reached it. An agent that keeps its stream and stays silent is not.
      const pending = session.pending;
      if (pending !== undefined && !pending.answered) pending.sent = false;
    };
    stream.on('data', (message: ReattestRequest) => this.#answer(session, stream, message));
    stream.on('end', () => {
      detach();
      stream.end();
    });
    stream.on('error', detach);
    stream.on('cancelled', detach);
    stream.on('close', detach);
    const pending = session.pending;
    if (pending !== undefined && !pending.answered) {
      if (pending.nonceAsked) this.#send(session);
      else this.#askNonce(session, pending);
    } else if (session.trust === 'untrusted' && session.pending === undefined) {
      // An agent back after an outage need not wait an interval to be trusted again.
      session.dueAt = now;
      this.#schedule(agentId, now);
    }
    return true;
  }

  /** One re-quote now (or joins the one in flight), resolved with its outcome. */
  async reattestNow(agentId: string): Promise<ReattestResult> {
    const node = await this.#o.datastore.getNode(agentId);
    if (node === undefined) throw new AgentNotFoundError(agentId);
    if (node.attestationType !== 'tpm')
      throw new ServerError(
        'ERR_INVALID_ARGUMENT',
        `agent ${agentId} attested by ${node.attestationType}: only TPM nodes can be re-quoted`,
      );
    const session =
      this.#sessions.get(agentId) ??
      this.#session(agentId, node.trust.state, monotonic.now() + this.#nextInterval());
    return new Promise((resolve, reject) => {
      const pending = session.pending ?? this.#issue(session, monotonic.now());
      pending.waiters.push({ resolve, reject });
    });
  }

  #session(agentId: string, trust: NodeTrust['state'], dueAt: number): Session {
    const session: Session = { agentId, stream: undefined, dueAt, pending: undefined, trust };
    this.#sessions.set(agentId, session);
    this.#schedule(agentId, dueAt);
    return session;
  }

  /** Puts `agentId` on the wheel, waking the timer earlier if this is now the first bucket due. */
  #schedule(agentId: string, at: number): void {
    const bucket = this.#wheel.schedule(agentId, at);
    if (this.#armed === undefined || bucket < this.#armed) this.#arm(bucket);
  }

  /** Arms the one timer for `bucket` (none: it sleeps until something is scheduled). */
  #arm(bucket: number | undefined): void {
    if (!this.#running) return;
    clearTimeout(this.#timer);
    this.#armed = bucket;
    if (bucket === undefined) return;
    // A timer that fires a little early finds nothing yet and is armed again for the same bucket.
    const delay = Math.min(2 ** 31 - 1, Math.max(0, Math.ceil(bucket * TICK_MS - monotonic.now())));
    this.#timer = setTimeout(() => this.#tick(), delay);
    this.#timer.unref();
  }

  #nextInterval(): number {
    return this.#intervalMs * (1 + (Math.random() * 2 - 1) * JITTER);
  }

  #tick(): void {
    const now = monotonic.now();
    this.#armed = undefined;
    for (const agentId of this.#wheel.take(now)) {
      const session = this.#sessions.get(agentId);
      if (session === undefined) continue;
      const pending = session.pending;
      if (pending !== undefined) {
        if (!pending.answered && now >= pending.deadlineAt) this.#expire(session, pending);
        // Due while a challenge is out (or in the very bucket of its deadline, which the wheel holds
        // once): the next one follows once it is settled.
        if (now >= session.dueAt) {
          session.dueAt = now + this.#nextInterval();
          this.#schedule(agentId, session.dueAt);
        }
      } else if (now >= session.dueAt) this.#issue(session, now);
    }
    this.#arm(this.#wheel.next());
  }

  #issue(session: Session, now: number): Pending {
    const pending: Pending = {
      id: ++this.#nextId,
      nonce: undefined,
      nonceAsked: false,
      sentAt: now,
      issuedAt: nowSeconds(this.#o.clock),
      deadlineAt: now + this.#deadlineMs,
      answered: false,
      sent: false,
      waiters: [],
    };
    session.pending = pending;
    session.dueAt = now + this.#nextInterval();
    this.#schedule(session.agentId, pending.deadlineAt);
    this.#schedule(session.agentId, session.dueAt);
    // Without the stream here the challenge cannot go out (attach asks when it comes): it is judged
    // at its deadline from the datastore alone, and the nonce would be a write for nothing.
    if (session.stream !== undefined) this.#askNonce(session, pending);
    return pending;
  }

  #askNonce(session: Session, pending: Pending): void {
    pending.nonceAsked = true;
    this.#nonces.issue().then(
      (nonce) => {
        pending.nonce = nonce;
        if (session.pending === pending) this.#send(session);
      },
      (error: unknown) => this.#unissued(session, pending, error),
    );
  }

  /** The nonce could not be stored: no challenge, no verdict; the next interval tries again. */
  #unissued(session: Session, pending: Pending, error: unknown): void {
    pending.answered = true;
    if (session.pending === pending) session.pending = undefined;
    this.#storeDown = true;
    this.#o.logger.error(
      { err: error, agent_id: session.agentId },
      're-quote challenge could not be issued; will retry',
    );
    const failure = error instanceof Error ? error : new Error(String(error));
    for (const waiter of pending.waiters) waiter.reject(failure);
  }

  #send(session: Session): void {
    const pending = session.pending;
    if (session.stream === undefined || pending?.nonce === undefined) return;
    pending.sent = true;
    session.stream.write({
      challenge: {
        challenge_id: pending.id,
        nonce: pending.nonce,
        pcr_selection: this.#o.policy.selection.map((s) => ({ hash_alg: s.hash, pcrs: [...s.pcrs] })),
      },
    });
  }

  #expire(session: Session, pending: Pending): void {
    pending.answered = true;
    void this.#settle(session, pending, async (node) => {
      if (!pending.sent) this.#heardElsewhere(node);
      // A quote verified after this challenge went out (the agent attested or renewed, here or on
      // another server) shows the node answering: silence on this challenge is not the node's.
      const quotedAt = storedQuotedAt(node);
      if (quotedAt !== undefined && quotedAt > pending.issuedAt)
        throw new OtherServerError(node.spiffeId, quotedAt, 'since this challenge was sent');
      throw new AttestationError(
        'ERR_REATTEST_NO_ANSWER',
        `the agent did not answer the re-quote within ${this.#deadlineMs / 1000}s (reattest_deadline): it is stopped, cannot reach the server, or its TPM hangs; check ironroot-agent on that node`,
      );
    });
  }

  /**
   * Throws OtherServerError when the node's recorded quote (any server's re-quote, attestation or
   * renewal) is recent enough that the server holding its stream is still re-quoting it: at most a
   * jittered interval and a deadline old, with one wheel tick to spare.
   */
  #heardElsewhere(node: AttestedNode): void {
    const quotedAt = storedQuotedAt(node);
    if (quotedAt === undefined) return;
    const windowSeconds = (this.#intervalMs * (1 + JITTER) + this.#deadlineMs + TICK_MS) / 1000;
    // After an outage the other server gets a whole window to record its next re-quote.
    const since = Math.max(quotedAt, this.#storeBackAt);
    if (nowSeconds(this.#o.clock) - since <= windowSeconds)
      throw new OtherServerError(node.spiffeId, quotedAt);
  }

  #answer(session: Session, stream: ReattestStream, message: ReattestRequest): void {
    const pending = session.pending;
    if (
      session.stream !== stream ||
      pending?.nonce === undefined ||
      pending.answered ||
      message.challenge_id !== pending.id
    ) {
      this.#o.logger.warn(
        { agent_id: session.agentId, challenge_id: message.challenge_id },
        're-quote answer to no open challenge (late, or for another one); ignored',
      );
      return;
    }
    pending.answered = true;
    const nonce = pending.nonce;
    void this.#settle(session, pending, (node) => this.#judge(node, nonce, message));
  }

  /** Judges (or times out) one challenge, records the outcome and tells the agent and any waiters. */
  async #settle(
    session: Session,
    pending: Pending,
    judge: (node: AttestedNode) => Promise<TpmUpdate>,
  ): Promise<void> {
    const agentId = session.agentId;
    let result: ReattestResult | Error;
    try {
      const node = await this.#o.datastore.getNode(agentId, { eventLog: true });
      if (this.#storeDown) {
        this.#storeDown = false;
        this.#storeBackAt = nowSeconds(this.#o.clock);
      }
      if (node === undefined) throw new AgentNotFoundError(agentId);
      let trust: NodeTrust;
      let tpm: TpmUpdate | undefined;
      const now = nowSeconds(this.#o.clock);
      try {
        tpm = await judge(node);
        trust = { state: 'trusted', changedAt: now };
      } catch (error) {
        if (error instanceof OtherServerError) {
          // Another server holds the stream: its verdicts are in the datastore; none is made here.
          session.trust = node.trust.state;
          throw error;
        }
        if (!(error instanceof AttestationError)) throw error;
        trust = {
          state: 'untrusted',
          code: error.code,
          reason: error.message,
          changedAt: now,
          // Every violated rule, per profile, for agent show.
          ...(error instanceof ProfileViolationError
            ? { details: JSON.stringify(Object.fromEntries(error.violations)) }
            : {}),
        };
      }
      const { changed } = await this.#o.datastore.recordNodeTrust(
        agentId,
        { trust, ...(tpm ? { tpm } : {}), judged: node },
        ACTOR,
      );
      session.trust = trust.state;
      result = {
        trusted: trust.state === 'trusted',
        code: trust.code ?? '',
        reason: trust.reason ?? '',
        durationMs: Math.round(monotonic.now() - pending.sentAt),
      };
      this.#o.reattestations.inc({ result: result.trusted ? 'trusted' : result.code });
      const fields = {
        agent_id: agentId,
        result: trust.state,
        reason: result.code,
        duration_ms: result.durationMs,
        changed,
      };
      if (!result.trusted) this.#o.logger.warn(fields, `node re-quote failed: ${result.reason}`);
      else if (changed) this.#o.logger.info(fields, 'node re-quote passed: trusted again');
      else this.#o.logger.debug(fields, 'node re-quote passed');
      session.stream?.write({
        outcome: {
          challenge_id: pending.id,
          trusted: result.trusted,
          code: result.code,
          reason: result.reason,
        },
      });
    } catch (error) {
      if (error instanceof AgentNotFoundError) {
        // Evicted meanwhile: nothing left to re-quote; the agent learns it at its next call.
        this.#sessions.delete(agentId);
        session.stream?.emit(
          'error',
          refusal('ERR_AGENT_NOT_ATTESTED', 'this agent was evicted; attest again'),
        );
      } else if (error instanceof OtherServerError) {
        this.#o.reattestations.inc({ result: error.code });
        this.#o.logger.debug({ agent_id: agentId }, 'node re-quoted by another server; no verdict here');
      } else if (error instanceof NodeAttestedAgainError) {
        // The new attestation was judged when it was made; the next challenge re-quotes its AK.
        this.#o.reattestations.inc({ result: error.code });
        this.#o.logger.info({ agent_id: agentId }, error.message);
      } else {
        this.#storeDown = true;
        this.#o.logger.error({ err: error, agent_id: agentId }, 're-quote could not be judged; will retry');
      }
      // No verdict: the node's trust stays as it was, and an operator waiting is told why.
      result = error instanceof Error ? error : new Error(String(error));
    } finally {
      if (session.pending === pending) session.pending = undefined;
    }
    for (const waiter of pending.waiters)
      if (result instanceof Error) waiter.reject(result);
      else waiter.resolve(result);
  }

  /**
   * Every check of one answer; throws the AttestationError that makes the node untrusted. The
   * counters are checked even when the event log fails, so that a reboot (whose log starts over)
   * is reported as the reboot it is.
   */
  async #judge(node: AttestedNode, nonce: Uint8Array, message: ReattestRequest): Promise<TpmUpdate> {
    if (node.attestationType !== 'tpm' || node.tpm === undefined)
      throw new AttestationError('ERR_REATTEST_NOT_TPM', 'no AK is recorded for this node; attest again');
    const stored = node.tpm.eventLog ?? new Uint8Array();
    const log = extendLog(stored, message.event_log_prior_length, message.event_log_tail);
    const quote = new Uint8Array(message.quote);
    let verified: VerifiedAnswer;
    try {
      verified = await verifyAnswer({
        answer: {
          activatedSecret: new Uint8Array(),
          quote,
          signature: new Uint8Array(message.signature),
          pcrValues: message.pcr_values.map((v) => new Uint8Array(v)),
          eventLog: log instanceof AttestationError ? new Uint8Array() : log,
        },
        challenge: { credential: undefined, nonce },
        ak: parseTpm2bPublic(node.tpm.akPublic),
        policy:
          log instanceof AttestationError ? { ...this.#o.policy, requireEventLog: false } : this.#o.policy,
        nonces: this.#nonces,
        subject: recordedSubject(node),
      });
    } catch (error) {
      // Past the signature check the quote's counters are the TPM's word: a reboot outranks the rest.
      if (error instanceof AttestationError && !BEFORE_QUOTE_VERIFIED.has(error.code))
        checkCounters(node, parseAttest(quote).clockInfo);
      throw error;
    }
    checkCounters(node, verified.quote.clockInfo);
    if (log instanceof AttestationError) throw log;
    return {
      lastQuote: Buffer.from(JSON.stringify(lastQuote(verified.quote, nowSeconds(this.#o.clock)))),
      resetCount: verified.quote.clockInfo.resetCount,
      eventLog: log,
    };
  }
}

/** Whose boot this is, from what attestation verified and recorded (EK hash, issuer, EK selectors). */
function recordedSubject(node: AttestedNode): BootSubject {
  return {
    ekHash: node.tpm?.ekHash ?? '',
    ekIssuer: node.tpm?.ekIssuer,
    selectors: node.selectors
      .filter(
        (s) => s.type === 'tpm' && (s.value.startsWith('manufacturer:') || s.value.startsWith('model:')),
      )
      .map((s) => `${s.type}:${s.value}`),
  };
}

type TpmUpdate = { lastQuote: Uint8Array; resetCount: number; eventLog: Uint8Array };

/**
 * The log the node has now: the stored one with the tail appended, or (prior length 0) the whole
 * log sent again, which must begin with the stored one. Returned, not thrown, so the quote's
 * counters can still be judged.
 */
function extendLog(stored: Uint8Array, priorLength: number, tail: Uint8Array): Uint8Array | AttestationError {
  if (priorLength === stored.length) return Buffer.concat([stored, tail]);
  if (priorLength !== 0)
    return new AttestationError(
      'ERR_REATTEST_EVENTLOG_OFFSET',
      `the event log tail follows ${priorLength} bytes, but the server holds ${stored.length}; the agent resends the whole log next time — if this repeats, the log on the node was replaced`,
    );
  if (
    tail.length < stored.length ||
    !Buffer.from(tail.subarray(0, stored.length)).equals(Buffer.from(stored))
  )
    return new AttestationError(
      'ERR_REATTEST_EVENTLOG_NOT_EXTENSION',
      'the event log is not an extension of the last verified one: events were changed or removed since; the node must attest again (evict it, or restart its agent after a reboot)',
    );
  return tail;
}

/** The TPM's reset and restart counts never go back; a new reset count is a reboot. */
function checkCounters(node: AttestedNode, clock: { resetCount: number; restartCount: number }): void {
  const reset = node.tpm?.resetCount;
  if (reset === undefined) return;
  const restart = storedRestartCount(node);
  if (clock.resetCount > reset)
    throw new AttestationError(
      'ERR_REATTEST_REBOOTED',
      `the TPM was reset (reset count ${reset} → ${clock.resetCount}): the node rebooted, and a reboot needs a full attestation; the agent attests again by itself — if it does not, restart ironroot-agent on the node`,
    );
  if (clock.resetCount < reset || (restart !== undefined && clock.restartCount < restart))
    throw new AttestationError(
      'ERR_REATTEST_COUNTER_ROLLBACK',
      `the TPM's counters went back (reset ${reset} → ${clock.resetCount}, restart ${restart ?? '?'} → ${clock.restartCount}): the quote is not from this TPM's present state; investigate the node before evicting it to let it attest again`,
    );
}

/** The agent's stream is on another server sharing the datastore, which re-quotes it. */
class OtherServerError extends AttestationError {
  constructor(agentId: string, quotedAt: number, since?: string) {
    const at = new Date(quotedAt * 1000).toISOString();
    super(
      'ERR_REATTEST_OTHER_SERVER',
      since === undefined
        ? `agent ${agentId} has no Reattest stream on this server; another server sharing the datastore re-quoted it at ${at}: run agent reattest against the server the agent is connected to`
        : `agent ${agentId} did not answer this challenge, but its TPM was quoted at ${at}, ${since} (an attestation or renewal, here or on another server); no verdict from this challenge`,
    );
  }
}

function storedQuotedAt(node: AttestedNode): number | undefined {
  if (node.tpm?.lastQuote === undefined) return undefined;
  try {
    const quotedAt = (JSON.parse(Buffer.from(node.tpm.lastQuote).toString('utf8')) as LastQuote).quoted_at;
    return typeof quotedAt === 'number' ? quotedAt : undefined;
  } catch {
    return undefined;
  }
}

function storedRestartCount(node: AttestedNode): number | undefined {
  if (node.tpm?.lastQuote === undefined) return undefined;
  try {
    return (JSON.parse(Buffer.from(node.tpm.lastQuote).toString('utf8')) as LastQuote).restart_count;
  } catch {
    return undefined;
  }
}

function refusal(code: AttestationErrorCode, message: string): Partial<ServerErrorResponse> {
  const error = new AttestationError(code, message);
  const metadata = new Metadata();
  metadata.set('ironroot-error-code', code);
  return { code: error.grpcStatus, details: `${code}: ${message}`, metadata };
}
