import type { KeyObject, X509Certificate } from 'node:crypto';
import { decodeCertificate } from '../der.js';
import { SpiffeError } from '../errors.js';
import { TrustDomain } from '../trust-domain.js';
import { jwkOf, parseJsonObject } from './jwk.js';
import { JwtBundle, jwtAuthoritiesOf } from './jwt-bundle.js';
import { X509Bundle } from './x509-bundle.js';

/** Optional parts of a {@link SpiffeBundle}. */
export interface SpiffeBundleOptions {
  /** X.509 authorities (`use: x509-svid`). */
  x509Authorities?: readonly X509Certificate[];
  /** JWT authorities by kid (`use: jwt-svid`). */
  jwtAuthorities?: ReadonlyMap<string, KeyObject>;
  /** `spiffe_sequence`: grows with every content change (B-4, B-5); 64-bit, hence bigint. */
  sequenceNumber?: bigint;
  /** `spiffe_refresh_hint`, in whole seconds (B-7). */
  refreshHintSeconds?: number;
}

/**
 * A SPIFFE bundle (SPIFFE_Trust_Domain_and_Bundle §4): the X.509 and JWT authorities of one trust
 * domain plus `spiffe_sequence` and `spiffe_refresh_hint`, as exchanged by federation.
 *
 * @example
 * ```ts
 * const bundle = SpiffeBundle.parse(TrustDomain.parse('example.org'), json);
 * bundle.toX509Bundle().authorities;
 * ```
 */
export class SpiffeBundle {
  /** The trust domain the bundle belongs to; a bundle is never used for another (X-25, F-8). */
  readonly trustDomain: TrustDomain;
  /** Root CA certificates (`use: x509-svid`). */
  readonly x509Authorities: readonly X509Certificate[];
  /** JWT signing keys by kid (`use: jwt-svid`). */
  readonly jwtAuthorities: ReadonlyMap<string, KeyObject>;
  /** `spiffe_sequence`, when the producer set it; compares the freshness of two bundles (F-7). */
  readonly sequenceNumber: bigint | undefined;
  /** `spiffe_refresh_hint` in seconds, when set; a polling hint only (B-7, F-5). */
  readonly refreshHintSeconds: number | undefined;
  /**
   * The two parts, made (and their authorities checked) once, here: toX509Bundle and toJwtBundle
   * run on hot paths (every attestation, every JWT call) and hand these out.
   */
  readonly #x509: X509Bundle;
  readonly #jwt: JwtBundle;

  /**
   * @throws SpiffeError `ERR_BUNDLE_BAD_SEQUENCE`, `ERR_BUNDLE_BAD_REFRESH_HINT`,
   *   `ERR_BUNDLE_JWT_KEY_NO_KID` or `ERR_BUNDLE_WEAK_KEY` for values a bundle may not carry.
   */
  constructor(trustDomain: TrustDomain, options: SpiffeBundleOptions = {}) {
    const { sequenceNumber, refreshHintSeconds } = options;
    if (sequenceNumber !== undefined && (sequenceNumber < 0n || sequenceNumber > 0xffff_ffff_ffff_ffffn)) {
      throw new SpiffeError(
        'ERR_BUNDLE_BAD_SEQUENCE',
        `bundle for "${trustDomain}": spiffe_sequence ${sequenceNumber} is outside 0..2^64-1 (SPIFFE bundle §4.1.1)`,
      );
    }
    if (
      refreshHintSeconds !== undefined &&
      !(Number.isSafeInteger(refreshHintSeconds) && refreshHintSeconds >= 0)
    ) {
      throw new SpiffeError(
        'ERR_BUNDLE_BAD_REFRESH_HINT',
        `bundle for "${trustDomain}": spiffe_refresh_hint ${refreshHintSeconds} is not a whole number of seconds (SPIFFE bundle §4.1.2)`,
      );
    }
    this.trustDomain = trustDomain;
    // Through X509Bundle and JwtBundle: the checks every authority passes are theirs (the JwtBundle
    // constructor also enforces a non-empty kid on every key, J-18).
    this.#x509 = new X509Bundle(trustDomain, options.x509Authorities ?? []);
    this.#jwt = new JwtBundle(trustDomain, options.jwtAuthorities ?? new Map());
    this.x509Authorities = this.#x509.authorities;
    this.jwtAuthorities = this.#jwt.authorities;
    this.sequenceNumber = sequenceNumber;
    this.refreshHintSeconds = refreshHintSeconds;
  }

  /**
   * Parses a SPIFFE bundle document. As the spec asks, entries with an unknown `use` or `kty` are
   * ignored (B-9, B-14, B-16), an `x509-svid` entry without `x5c` is ignored and only its first `x5c`
   * certificate is used, and a `jwt-svid` entry without `kid` is ignored (J-18). An
   * `x509-svid` certificate that does not decode, or whose public key does not, refuses the bundle.
   *
   * @throws SpiffeError `ERR_BUNDLE_PARSE`, `ERR_BUNDLE_MISSING_KEYS` (B-8), `ERR_BUNDLE_BAD_CERTIFICATE`,
   *   `ERR_BUNDLE_BAD_SEQUENCE` (B-4), `ERR_BUNDLE_BAD_REFRESH_HINT` (B-7), `ERR_BUNDLE_DUPLICATE_KID`,
   *   `ERR_BUNDLE_WEAK_KEY`.
   */
  /**
   * {@link parse} for a stored or received document that may fail today's checks: the bundle, or
   * the SpiffeError that refuses it (a bad trust domain name included), for callers that go on
   * without it and say why.
   */
  static parseOrRefusal(trustDomain: string, json: string | Uint8Array): SpiffeBundle | SpiffeError {
    try {
      return SpiffeBundle.parse(TrustDomain.parse(trustDomain), json);
    } catch (error) {
      if (error instanceof SpiffeError) return error;
      throw error;
    }
  }

  static parse(trustDomain: TrustDomain, json: string | Uint8Array): SpiffeBundle {
    const text = typeof json === 'string' ? json : Buffer.from(json).toString('utf8');
    const doc = parseJsonObject(trustDomain, text);
    const jwtAuthorities = jwtAuthoritiesOf(trustDomain, doc.keys, true);
    const x509Authorities: X509Certificate[] = [];
    for (const [index, entry] of (doc.keys as unknown[]).entries()) {
      if (typeof entry !== 'object' || entry === null) continue;
      const jwk = entry as { use?: unknown; kty?: unknown; x5c?: unknown };
      if (jwk.use !== 'x509-svid' || (jwk.kty !== 'EC' && jwk.kty !== 'RSA')) continue;
      const first: unknown = Array.isArray(jwk.x5c) ? jwk.x5c[0] : undefined;
      if (typeof first !== 'string') continue;
      try {
        x509Authorities.push(decodeCertificate(Buffer.from(first, 'base64')));
      } catch (err) {
        // Refused rather than dropped: a root that silently vanishes (or whose key breaks marshalling
        // later) is a worse failure for an operator than a bundle refused with the entry named.
        throw new SpiffeError(
          'ERR_BUNDLE_BAD_CERTIFICATE',
          `bundle for "${trustDomain}": keys[${index}] x5c[0] is not a DER certificate with a usable public key; fix or remove the entry`,
          { cause: err },
        );
      }
    }
    return new SpiffeBundle(trustDomain, {
      x509Authorities,
      jwtAuthorities,
      sequenceNumber: parseSequence(trustDomain, doc.spiffe_sequence, text),
      refreshHintSeconds: parseRefreshHint(trustDomain, doc.spiffe_refresh_hint),
    });
  }

  /**
   * The bundle document. `x509-svid` entries carry no `kid` and one `x5c` certificate;
   * `jwt-svid` entries carry their `kid` (J-18).
   */
  marshal(): string {
    const keys = [
      ...this.x509Authorities.map((cert) => ({
        ...jwkOf(cert.publicKey),
        use: 'x509-svid',
        x5c: [cert.raw.toString('base64')],
      })),
      ...[...this.jwtAuthorities].map(([kid, key]) => ({ ...jwkOf(key), kid, use: 'jwt-svid' })),
    ];
    const parts = [`"keys":${JSON.stringify(keys)}`];
    if (this.refreshHintSeconds !== undefined) parts.push(`"spiffe_refresh_hint":${this.refreshHintSeconds}`);
    // Written by hand: JSON.stringify cannot write a bigint, and a number would lose bits past 2^53.
    if (this.sequenceNumber !== undefined) parts.push(`"spiffe_sequence":${this.sequenceNumber.toString()}`);
    return `{${parts.join(',')}}`;
  }

  /** The X.509 part, for X.509-SVID validation. */
  toX509Bundle(): X509Bundle {
    return this.#x509;
  }

  /** The JWT part, for JWT-SVID validation. */
  toJwtBundle(): JwtBundle {
    return this.#jwt;
  }
}

function parseSequence(trustDomain: TrustDomain, value: unknown, text: string): bigint | undefined {
  if (value === undefined) return undefined;
  const bad = () =>
    new SpiffeError(
      'ERR_BUNDLE_BAD_SEQUENCE',
      `bundle for "${trustDomain}": spiffe_sequence must be a non-negative integer (SPIFFE bundle §4.1.1)`,
    );
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) throw bad();
  if (Number.isSafeInteger(value)) return BigInt(value);
  // JSON.parse rounds integers past 2^53; §4.1.1 asks for 64 bits, so read the digits from the text.
  const matches = [...text.matchAll(/"spiffe_sequence"\s*:\s*([0-9]+)\s*[,}]/g)];
  const digits = matches.length === 1 ? matches[0]?.[1] : undefined;
  if (digits === undefined) throw bad();
  return BigInt(digits);
}

function parseRefreshHint(trustDomain: TrustDomain, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new SpiffeError(
      'ERR_BUNDLE_BAD_REFRESH_HINT',
      `bundle for "${trustDomain}": spiffe_refresh_hint must be a whole number of seconds (SPIFFE bundle §4.1.2)`,
    );
  }
  return value;
}
