/**
 * Single-use nonces with a lifetime. A nonce is issued with a challenge and consumed by the answer;
 * consumed nonces are remembered until they would have expired anyway, so a quote replayed from an
 * earlier handshake is reported as a replay rather than as a mere nonce mismatch.
 *
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Clock } from '../clock.js';
import { AttestationError } from './errors.js';

const NONCE_BYTES = 32;

/** Looked up by hash, so the map is never searched by comparing the secret values themselves. */
function key(nonce: Uint8Array): string {
  return createHash('sha256').update(nonce).digest('hex');
}

export class NonceStore {
  readonly #ttlMs: number;
  readonly #clock: Clock;
  readonly #issued = new Map<string, number>();
  readonly #consumed = new Map<string, number>();

  constructor(ttlSeconds: number, clock: Clock) {
    this.#ttlMs = ttlSeconds * 1000;
    this.#clock = clock;
  }

  issue(): Uint8Array {
    this.#prune();
    const nonce = randomBytes(NONCE_BYTES);
    this.#issued.set(key(nonce), this.#clock.now() + this.#ttlMs);
    return nonce;
  }

  /** Marks `nonce` used; throws when it was used before, never issued, or has expired. */
  consume(nonce: Uint8Array): void {
    const k = key(nonce);
    if (this.#consumed.has(k))
      throw new AttestationError(
        'ERR_ATTEST_NONCE_REPLAYED',
        'this nonce was already used; start a new attestation',
      );
    const expiresAt = this.#issued.get(k);
    if (expiresAt === undefined)
      throw new AttestationError(
        'ERR_ATTEST_NONCE_REPLAYED',
        'this nonce was not issued by this server; start a new attestation',
      );
    this.#issued.delete(k);
    this.#consumed.set(k, expiresAt);
    if (this.#clock.now() > expiresAt)
      throw new AttestationError(
        'ERR_ATTEST_NONCE_EXPIRED',
        "the challenge expired before the agent answered; retry, and check the agent's TPM is not overloaded",
      );
  }

  /** True when `nonce` was issued and already consumed (a replayed quote carries such a nonce). */
  wasConsumed(nonce: Uint8Array): boolean {
    return this.#consumed.has(key(nonce));
  }

  #prune(): void {
    const now = this.#clock.now();
    for (const [k, at] of this.#issued) if (at < now - this.#ttlMs) this.#issued.delete(k);
    for (const [k, at] of this.#consumed) if (at < now - this.#ttlMs) this.#consumed.delete(k);
  }
}
