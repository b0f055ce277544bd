import type { JsonWebKey, KeyObject } from 'node:crypto';
import { SpiffeError } from '../errors.js';
import type { TrustDomain } from '../trust-domain.js';

/** The public JWK members of `key` (`kty` plus the curve/point or modulus/exponent). */
export function jwkOf(key: KeyObject): JsonWebKey {
  const { kty, crv, x, y, n, e } = key.export({ format: 'jwk' });
  const jwk: JsonWebKey = { kty };
  if (crv !== undefined) jwk.crv = crv;
  if (x !== undefined) jwk.x = x;
  if (y !== undefined) jwk.y = y;
  if (n !== undefined) jwk.n = n;
  if (e !== undefined) jwk.e = e;
  return jwk;
}

/**
 * The fewest bits an RSA authority (an X.509 root or a JWT key) may have. The SPIFFE specs set no
 * floor; 2048 is NIST's (SP 800-131A) and what jose already asks of JWT keys, and a trust anchor
 * weaker than that would be the easiest thing in the trust domain to forge.
 */
const MIN_RSA_BITS = 2048;

/** Why `key` is too weak to trust as an authority, or undefined when it is not. */
export function weakKeyReason(key: KeyObject): string | undefined {
  const type = key.asymmetricKeyType;
  if (type !== 'rsa' && type !== 'rsa-pss') return undefined;
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  return bits < MIN_RSA_BITS
    ? `an RSA key of ${bits} bits, fewer than the ${MIN_RSA_BITS} required`
    : undefined;
}

/** Parses JSON text or UTF-8 bytes into an object, or throws `ERR_BUNDLE_PARSE`. */
export function parseJsonObject(
  trustDomain: TrustDomain,
  input: string | Uint8Array,
): Record<string, unknown> {
  const text = typeof input === 'string' ? input : Buffer.from(input).toString('utf8');
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new SpiffeError(
      'ERR_BUNDLE_PARSE',
      `bundle for "${trustDomain}" is not JSON; SPIFFE bundle §4 requires an RFC 7517 JWK Set`,
      { cause: err },
    );
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new SpiffeError(
      'ERR_BUNDLE_PARSE',
      `bundle for "${trustDomain}" is not a JSON object; SPIFFE bundle §4 requires an RFC 7517 JWK Set`,
    );
  }
  return doc as Record<string, unknown>;
}
