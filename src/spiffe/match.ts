import { SpiffeError } from './errors.js';
import type { SpiffeId } from './spiffe-id.js';
import type { TrustDomain } from './trust-domain.js';

/**
 * A policy over SPIFFE IDs, as go-spiffe's `spiffeid.Matcher`: returns when the ID is acceptable and
 * throws `SpiffeError('ERR_SPIFFEID_MISMATCH')` when it is not. Throwing (rather than returning a
 * boolean) lets a matcher explain which IDs it wanted.
 */
export type Matcher = (id: SpiffeId) => void;

/** Accepts every ID. Use only where any authenticated peer may proceed. */
export function matchAny(): Matcher {
  return () => {};
}

/** Accepts exactly `expected`. */
export function matchId(expected: SpiffeId): Matcher {
  return (id) => {
    if (!id.equals(expected)) {
      throw new SpiffeError('ERR_SPIFFEID_MISMATCH', `unexpected SPIFFE ID "${id}": expected "${expected}"`);
    }
  };
}

/** Accepts any of `expected`. */
export function matchOneOf(...expected: SpiffeId[]): Matcher {
  return (id) => {
    if (!expected.some((e) => e.equals(id))) {
      throw new SpiffeError(
        'ERR_SPIFFEID_MISMATCH',
        `unexpected SPIFFE ID "${id}": expected one of ${expected.map((e) => `"${e}"`).join(', ') || '(none)'}`,
      );
    }
  };
}

/** Accepts any ID in `trustDomain`. */
export function matchMemberOf(trustDomain: TrustDomain): Matcher {
  return (id) => {
    if (!id.memberOf(trustDomain)) {
      throw new SpiffeError(
        'ERR_SPIFFEID_MISMATCH',
        `unexpected SPIFFE ID "${id}": expected a member of trust domain "${trustDomain}"`,
      );
    }
  };
}
