/**
 * Token buckets per source address: attestation is expensive for the server (RSA decryption on the
 * agent, but MakeCredential and chain building here), so one address cannot make it do that
 * without bound.
 *
 * At most `MAX_TRACKED` addresses are tracked, least recently used first in the map. To make room
 * only a bucket that has refilled is forgotten (it carries no state: a new one would be full too),
 * so an attacker cycling through addresses cannot reset anyone's limit. While every tracked address
 * still owes tokens, new addresses share one bucket until some refill.
 *
 * @module
 */
import type { Clock } from '../clock.js';

export const MAX_TRACKED = 10_000;
/** How many of the least recently used buckets are looked at for one that refilled. */
const EVICTION_SCAN = 16;

interface Bucket {
  tokens: number;
  at: number;
}

export class RateLimiter {
  readonly #perSecond: number;
  readonly #burst: number;
  readonly #clock: Clock;
  readonly #buckets = new Map<string, Bucket>();
  #overflow: Bucket | undefined;

  constructor(perSecond: number, burst: number, clock: Clock) {
    this.#perSecond = perSecond;
    this.#burst = burst;
    this.#clock = clock;
  }

  /** Takes one token for `address`; false when its bucket is empty. */
  take(address: string): boolean {
    const now = this.#clock.now();
    const bucket = this.#bucketFor(address, now);
    bucket.tokens = this.#level(bucket, now);
    bucket.at = now;
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  #bucketFor(address: string, now: number): Bucket {
    const known = this.#buckets.get(address);
    if (known !== undefined) {
      // Re-inserted to move it last: the map's order is least recently used first.
      this.#buckets.delete(address);
      this.#buckets.set(address, known);
      return known;
    }
    if (this.#buckets.size >= MAX_TRACKED && !this.#evictRefilled(now)) {
      this.#overflow ??= { tokens: this.#burst, at: now };
      return this.#overflow;
    }
    const fresh = { tokens: this.#burst, at: now };
    this.#buckets.set(address, fresh);
    return fresh;
  }

  /** Forgets one of the least recently used buckets that has refilled; false when none has. */
  #evictRefilled(now: number): boolean {
    let scanned = 0;
    for (const [address, bucket] of this.#buckets) {
      if (scanned++ === EVICTION_SCAN) break;
      if (this.#level(bucket, now) >= this.#burst) {
        this.#buckets.delete(address);
        return true;
      }
    }
    return false;
  }

  #level(bucket: Bucket, now: number): number {
    return Math.min(this.#burst, bucket.tokens + ((now - bucket.at) / 1000) * this.#perSecond);
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
