import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { SpiffeError } from '../errors.js';
import type { TrustDomain } from '../trust-domain.js';
import { jwkOf, parseJsonObject, weakKeyReason } from './jwk.js';

/**
 * The JWT authorities (public keys by `kid`) of one trust domain, as served by `FetchJWTBundles`
 * (an RFC 7517 JWK Set). An empty bundle means no JWT-SVID from the trust domain validates.
 */
export class JwtBundle {
  /** The trust domain these keys sign for. */
  readonly trustDomain: TrustDomain;
  /** Public keys by key ID. */
  readonly authorities: ReadonlyMap<string, KeyObject>;

  /**
   * @throws SpiffeError `ERR_BUNDLE_JWT_KEY_NO_KID` for an empty key ID (J-18),
   *   `ERR_BUNDLE_WEAK_KEY` for an RSA key of fewer than 2048 bits.
   */
  constructor(trustDomain: TrustDomain, authorities: ReadonlyMap<string, KeyObject>) {
    for (const [kid, key] of authorities) {
      if (kid === '') {
        throw new SpiffeError(
          'ERR_BUNDLE_JWT_KEY_NO_KID',
          `JWT bundle for "${trustDomain}": a key has an empty kid; JWT-SVID §6.1 requires every jwt-svid key to have a kid`,
        );
      }
      const weak = weakKeyReason(key);
      if (weak !== undefined) {
        // Refused, not dropped: a key that silently vanished would surface only as JWT-SVIDs
        // failing with an unknown kid, far from the cause.
        throw new SpiffeError(
          'ERR_BUNDLE_WEAK_KEY',
          `JWT bundle for "${trustDomain}": key "${kid}" is ${weak}; the bundle is refused until its publisher replaces that key`,
        );
      }
    }
    this.trustDomain = trustDomain;
    this.authorities = new Map(authorities);
  }

  /**
   * Parses a JWK Set. Keys whose `use` is set to something other than `jwt-svid`, whose `kty` is
   * unknown, or which have no `kid` are ignored (B-9, B-14, B-16; J-18 makes a kid-less key unusable).
   *
   * @throws SpiffeError `ERR_BUNDLE_PARSE`, `ERR_BUNDLE_MISSING_KEYS` or `ERR_BUNDLE_DUPLICATE_KID`.
   */
  static parse(trustDomain: TrustDomain, jwks: string | Uint8Array): JwtBundle {
    const doc = parseJsonObject(trustDomain, jwks);
    return new JwtBundle(trustDomain, jwtAuthoritiesOf(trustDomain, doc.keys, false));
  }

  /** The JWK Set JSON (each key with `kid`; `use` left out, as `FetchJWTBundles` serves it). */
  marshal(): string {
    return JSON.stringify({ keys: [...this.authorities].map(([kid, key]) => ({ ...jwkOf(key), kid })) });
  }
}

/**
 * Picks the usable `jwt-svid` keys out of a `keys` array. With `requireUse`, only entries with
 * `use: "jwt-svid"` count (a SPIFFE bundle); otherwise entries without `use` count too (a JWKS).
 */
export function jwtAuthoritiesOf(
  trustDomain: TrustDomain,
  keys: unknown,
  requireUse: boolean,
): Map<string, KeyObject> {
  if (!Array.isArray(keys)) {
    throw new SpiffeError(
      'ERR_BUNDLE_MISSING_KEYS',
      `bundle for "${trustDomain}" has no "keys" array; SPIFFE bundle §4.1.3 requires one (it may be empty)`,
    );
  }
  const out = new Map<string, KeyObject>();
  for (const entry of keys) {
    if (typeof entry !== 'object' || entry === null) continue;
    const jwk = entry as JsonWebKey & { use?: unknown; kid?: unknown };
    if (requireUse ? jwk.use !== 'jwt-svid' : jwk.use !== undefined && jwk.use !== 'jwt-svid') continue;
    if (jwk.kty !== 'EC' && jwk.kty !== 'RSA') continue;
    if (typeof jwk.kid !== 'string' || jwk.kid === '') continue;
    let key: KeyObject;
    try {
      const { use: _use, kid: _kid, ...material } = jwk;
      key = createPublicKey({ key: material, format: 'jwk' });
    } catch {
      // A key we cannot load fails validation and is dropped (B-10 counts only surviving keys).
      continue;
    }
    if (out.has(jwk.kid)) {
      throw new SpiffeError(
        'ERR_BUNDLE_DUPLICATE_KID',
        `bundle for "${trustDomain}" has two jwt-svid keys with kid "${jwk.kid}"; a kid must pick exactly one key`,
      );
    }
    out.set(jwk.kid, key);
  }
  return out;
}
