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
