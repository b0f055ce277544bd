/**
 * Token buckets per source address: attestation is expensive for the server (RSA decryption on the
 * agent, but MakeCredential and chain building here), so one address cannot make it do that
 * without bound.
 *
 * @module
 */
import type { Clock } from '../clock.js';

const MAX_TRACKED = 10_000;

export class RateLimiter {
  readonly #perSecond: number;
  readonly #burst: number;
  readonly #clock: Clock;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  constructor(perSecond: number, burst: number, clock: Clock) {
    this.#perSecond = perSecond;
    this.#burst = burst;
    this.#clock = clock;
  }

  /** Takes one token for `address`; false when its bucket is empty. */
  take(address: string): boolean {
    const now = this.#clock.now();
    const bucket = this.#buckets.get(address) ?? { tokens: this.#burst, at: now };
    bucket.tokens = Math.min(this.#burst, bucket.tokens + ((now - bucket.at) / 1000) * this.#perSecond);
    bucket.at = now;
    const allowed = bucket.tokens >= 1;
    if (allowed) bucket.tokens -= 1;
    // Full buckets carry no state worth keeping; dropping them bounds memory under address churn.
    if (this.#buckets.size >= MAX_TRACKED) this.#buckets.clear();
    this.#buckets.set(address, bucket);
    return allowed;
  }
}

/** `ipv4:1.2.3.4:5`, `1.2.3.4:5`, `[::1]:5` → the address without the port. */
export function peerAddress(peer: string): string {
  const bare = peer.replace(/^ipv[46]:/, '');
  const bracketed = /^\[([^\]]+)\]:\d+$/.exec(bare);
  if (bracketed?.[1] !== undefined) return bracketed[1];
  const colon = bare.lastIndexOf(':');
  return colon === -1 ? bare : bare.slice(0, colon);
}
