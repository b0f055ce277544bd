/**
 * Single-use nonces with a lifetime, kept in the datastore: a nonce is issued with a challenge and
 * consumed by the answer, so a quote replayed after a server restart, or to another server sharing
 * the store, is still refused as a replay. Consumed nonces are remembered for `RETAIN_MS` after
 * they expired, so a quote replayed from an earlier handshake is reported as a replay rather than as
 * a mere nonce mismatch. Only hashes are stored: of the nonce (the row's key) and of the
 * credential-activation secret (compared in constant time with the hash of the agent's answer).
 *
 * @module
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../clock.js';
import type { Datastore } from '../datastore/datastore.js';
import { AttestationError } from './errors.js';

const NONCE_BYTES = 32;
/** How long a nonce is remembered after it expired, to name a late replay a replay. */
const RETAIN_MS = 15 * 60 * 1000;
/** Expired rows are pruned at most this often, in batches of `PRUNE_BATCH`. */
const PRUNE_EVERY_MS = 10_000;
const PRUNE_BATCH = 500;

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The refusal for an answer that came after the nonce's lifetime. */
export function nonceExpired(ttlSeconds: number): AttestationError {
  return new AttestationError(
    'ERR_ATTEST_NONCE_EXPIRED',
    `the challenge expired before the agent answered (nonce lifetime ${ttlSeconds}s); retry, and check the agent's TPM is not overloaded`,
  );
}

export class NonceStore {
  readonly #datastore: Datastore;
  readonly #clock: Clock;
  readonly #ttlSeconds: number;
  #prunedAt = Number.NEGATIVE_INFINITY;

  constructor(options: { datastore: Datastore; clock: Clock; ttlSeconds: number }) {
    this.#datastore = options.datastore;
    this.#clock = options.clock;
    this.#ttlSeconds = options.ttlSeconds;
  }

  get ttlSeconds(): number {
    return this.#ttlSeconds;
  }

  /** A fresh nonce, stored with the hash of the challenge's secret when it has one. */
  async issue(secret?: Uint8Array): Promise<Uint8Array> {
    const now = this.#clock.now();
    await this.#prune(now);
    const nonce = randomBytes(NONCE_BYTES);
    await this.#datastore.issueNonce({
      nonceHash: sha256(nonce),
      ...(secret !== undefined ? { secretHash: sha256(secret) } : {}),
      expiresAt: now + this.#ttlSeconds * 1000,
    });
    return nonce;
  }

  /**
   * Marks `nonce` used and, when its challenge had a secret, checks `activatedSecret` against it;
   * throws when the nonce was used before, never issued, has expired, or the secret is wrong.
   */
  async consume(nonce: Uint8Array, activatedSecret: Uint8Array): Promise<void> {
    const found = await this.#datastore.consumeNonce(sha256(nonce), this.#clock.now());
    if (found.outcome === 'expired') throw nonceExpired(this.#ttlSeconds);
    if (found.outcome !== 'fresh')
      throw new AttestationError(
        'ERR_ATTEST_NONCE_REPLAYED',
        found.outcome === 'replayed'
          ? 'this nonce was already used; start a new attestation'
          : 'this nonce was not issued by this server; start a new attestation',
      );
    if (found.secretHash === undefined) return;
    const expected = Buffer.from(found.secretHash, 'hex');
    const got = createHash('sha256').update(activatedSecret).digest();
    if (!timingSafeEqual(got, expected))
      throw new AttestationError(
        'ERR_ATTEST_SECRET_MISMATCH',
        'the activated secret is wrong: the AK does not live in the TPM that holds this EK',
      );
  }

  /** True when `nonce` was issued and already consumed (a replayed quote carries such a nonce). */
  async wasConsumed(nonce: Uint8Array): Promise<boolean> {
    return this.#datastore.nonceConsumed(sha256(nonce));
  }

  /** Deletes nonces long expired, batch by batch, at most every `PRUNE_EVERY_MS`. */
  async #prune(now: number): Promise<void> {
    if (now - this.#prunedAt < PRUNE_EVERY_MS) return;
    this.#prunedAt = now;
    let deleted: number;
    do deleted = await this.#datastore.pruneNonces(now - RETAIN_MS, PRUNE_BATCH);
    while (deleted === PRUNE_BATCH);
  }
}
