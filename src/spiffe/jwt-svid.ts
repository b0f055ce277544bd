import type { KeyObject } from 'node:crypto';
import type { JwtBundleSource } from './bundle/bundle-set.js';
import { SpiffeError } from './errors.js';
import { checkProducible } from './id-syntax.js';
import type { Signer } from './signer.js';
import { SpiffeId } from './spiffe-id.js';

/** The `alg` values JWT-SVID §2.1 allows; every other value is rejected before anything else (J-4, J-5). */
export const JWT_SVID_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'ES256',
  'ES384',
  'ES512',
  'PS256',
  'PS384',
  'PS512',
] as const;

/** One of {@link JWT_SVID_ALGORITHMS}. */
export type JwtSvidAlgorithm = (typeof JWT_SVID_ALGORITHMS)[number];

/** The JOSE header of a JWT-SVID: nothing but `alg`, `kid` and `typ` (J-2). */
export interface JwtSvidHeader {
  /** Signature algorithm, one of {@link JWT_SVID_ALGORITHMS}. */
  readonly alg: JwtSvidAlgorithm;
  /** Key ID in the subject's trust-domain bundle; optional in the spec (J-6), always written by us. */
  readonly kid?: string;
  /** `JWT` or `JOSE` when present (J-7). */
  readonly typ?: 'JWT' | 'JOSE';
}

/** A parsed JWT-SVID. */
export interface JwtSvid {
  /** The subject (`sub`), the workload's SPIFFE ID. */
  readonly id: SpiffeId;
  /** `aud`, always as a list. */
  readonly audience: readonly string[];
  /** `exp`. */
  readonly expiresAt: Date;
  /** The protected header. */
  readonly header: JwtSvidHeader;
  /** Every payload claim, as sent. */
  readonly claims: Readonly<Record<string, unknown>>;
  /** The compact token. */
  readonly token: string;
}

/** What goes into a JWT-SVID. */
export interface JwtSvidTemplate {
  /** The subject. */
  spiffeId: SpiffeId;
  /** One or more audiences (J-9); one is recommended (J-11). */
  audience: string | readonly string[];
  /** `exp`, rounded down to whole seconds. */
  expiresAt: Date;
  /** `iat`; default: not set. */
  issuedAt?: Date;
  /** `kid` of the signing key as published in the bundle. Always written: go-spiffe and SPIRE require it. */
  keyId: string;
  /** `typ`; default `JWT` (J-7). */
  type?: 'JWT' | 'JOSE';
  /** Extra claims; must not repeat `sub`, `aud`, `exp` or `iat`. */
  claims?: Record<string, unknown>;
}

/** Options of {@link validateJwtSvid}. */
export interface ValidateJwtOptions {
  /** The time `exp` and `nbf` are checked at; default: now. */
  time?: Date;
  /** Clock leeway allowed on `exp` and `nbf`, in seconds (JWT-SVID App. A); default 0. */
  leewaySeconds?: number;
}

/**
 * Most audiences a JWT-SVID may carry, minted or accepted. JWT-SVID §3.2 recommends one; a token with
 * thousands is an amplification vector (every validator scans the list), never a real need.
 */
export const MAX_JWT_SVID_AUDIENCES = 64;

/** Longest JWT-SVID in bytes, minted or accepted: far above any real token (about 1 KiB), far below a DoS. */
export const MAX_JWT_SVID_BYTES = 16 * 1024;

/**
 * The largest NumericDate (seconds) a JavaScript Date can hold: ±8.64e15 ms (ECMA-262 §21.4.1.1). A
 * larger `exp` would make an invalid Date that compares as never expiring.
 */
const MAX_NUMERIC_DATE = 8.64e12;

const RESERVED = new Set(['sub', 'aud', 'exp', 'iat']);
const HEADER_MEMBERS = new Set(['alg', 'kid', 'typ']);
const B64URL = /^[A-Za-z0-9_-]+$/;

const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

/**
 * Signs a JWT-SVID through `signer` (JWS Compact, J-1), with header `{alg, kid, typ}` only (J-2, J-7)
 * and claims `sub`, `aud`, `exp` (J-8, J-9, J-12), plus `iat` and extra claims when given. The Signer
 * returns r‖s for ECDSA, which is exactly the JWS signature form.
 *
 * @throws SpiffeError `ERR_SPIFFEID_TOO_LONG` for an ID over 2048 bytes (ID-18).
 * @throws TypeError for an empty audience, empty key ID, reserved extra claim or an algorithm JWT-SVID
 *   does not allow.
 * @example
 * ```ts
 * const token = await mintJwtSvid({ spiffeId, audience: 'reports', expiresAt, keyId: 'k1' }, signer);
 * ```
 */
export async function mintJwtSvid(template: JwtSvidTemplate, signer: Signer): Promise<string> {
  const audience = typeof template.audience === 'string' ? [template.audience] : [...template.audience];
  if (audience.length === 0 || audience.some((a) => a === '')) {
    throw new TypeError('a JWT-SVID needs one or more non-empty audiences (JWT-SVID §3.2)');
  }
  checkJwtSvidAudience(audience);
  checkProducible(template.spiffeId.toString(), 'cannot sign a JWT-SVID');
  if (template.keyId === '') throw new TypeError('a JWT-SVID needs the kid of its signing key');
  if (!(JWT_SVID_ALGORITHMS as readonly string[]).includes(signer.algorithm)) {
    throw new TypeError(`JWT-SVID §2.1 does not allow alg ${signer.algorithm}`);
  }
  for (const name of Object.keys(template.claims ?? {})) {
    if (RESERVED.has(name))
      throw new TypeError(`claim "${name}" is set from the template, not from extra claims`);
  }
  const header = { alg: signer.algorithm, kid: template.keyId, typ: template.type ?? 'JWT' };
  const payload: Record<string, unknown> = {
    ...template.claims,
    sub: template.spiffeId.toString(),
    aud: audience.length === 1 ? audience[0] : audience,
    exp: Math.floor(template.expiresAt.getTime() / 1000),
  };
  if (template.issuedAt) payload.iat = Math.floor(template.issuedAt.getTime() / 1000);
  const signingInput = `${b64url(header)}.${b64url(payload)}`;
  // Checked before signing too, so an oversized request never reaches the HSM.
  if (signingInput.length >= MAX_JWT_SVID_BYTES) throw tooLarge(signingInput.length);
  const signature = await signer.sign(Buffer.from(signingInput, 'ascii'));
  const token = `${signingInput}.${Buffer.from(signature).toString('base64url')}`;
  if (token.length > MAX_JWT_SVID_BYTES) throw tooLarge(token.length);
  return token;
}

function tooLarge(size: number): SpiffeError {
  return new SpiffeError(
    'ERR_JWTSVID_TOO_LARGE',
    `JWT-SVID is ${size} bytes; at most ${MAX_JWT_SVID_BYTES} are minted or accepted: use fewer or shorter audiences and claims`,
  );
}

/**
 * Checks an audience list against the limits every minted and accepted JWT-SVID keeps: at most
 * {@link MAX_JWT_SVID_AUDIENCES} entries, and short enough together to fit {@link MAX_JWT_SVID_BYTES}.
 * Minting paths call it before asking anyone to sign.
 *
 * @throws SpiffeError `ERR_JWTSVID_TOO_MANY_AUDIENCES` or `ERR_JWTSVID_TOO_LARGE`.
 */
export function checkJwtSvidAudience(audience: readonly string[]): void {
  if (audience.length > MAX_JWT_SVID_AUDIENCES) {
    throw new SpiffeError(
      'ERR_JWTSVID_TOO_MANY_AUDIENCES',
      `JWT-SVID has ${audience.length} audiences; at most ${MAX_JWT_SVID_AUDIENCES} are allowed (JWT-SVID §3.2 recommends one)`,
    );
  }
  // The audiences alone, JSON-encoded, must leave room in the token for everything else.
  const size = Buffer.byteLength(JSON.stringify(audience));
  if (size > MAX_JWT_SVID_BYTES / 2) throw tooLarge(size);
}

function malformed(message: string): SpiffeError {
  return new SpiffeError(
    'ERR_JWTSVID_MALFORMED',
    `${message}; JWT-SVID §1 requires JWS Compact Serialization`,
  );
}

function decodeJson(part: string, what: string): Record<string, unknown> {
  if (!B64URL.test(part)) throw malformed(`JWT-SVID ${what} is not base64url`);
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    throw malformed(`JWT-SVID ${what} is not JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw malformed(`JWT-SVID ${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

/**
 * Parses a JWT-SVID and checks its form but **not** its signature, time or audience: the header rules
 * (alg allow-list first, then only `alg`/`kid`/`typ`, `typ` JWT or JOSE) and the presence and types of
 * `sub`, `aud` and `exp`. Use only on tokens received from the Workload API for one's own use.
 *
 * @throws SpiffeError with an `ERR_JWTSVID_*` code (or `ERR_SPIFFEID_*` for a bad `sub`).
 */
export function parseJwtSvidInsecure(token: string): JwtSvid {
  // Before anything is split or decoded; UTF-16 length bounds the bytes of a valid (ASCII) token.
  if (token.length > MAX_JWT_SVID_BYTES) throw tooLarge(token.length);
  const parts = token.split('.');
  if (token.trimStart().startsWith('{')) throw malformed('JWT-SVID uses JWS JSON Serialization');
  if (parts.length === 5) throw malformed('JWT-SVID is a JWE; only JWS is supported');
  const [headerPart, payloadPart, signaturePart] = parts;
  if (
    parts.length !== 3 ||
    headerPart === undefined ||
    payloadPart === undefined ||
    signaturePart === undefined
  ) {
    throw malformed(`JWT-SVID has ${parts.length} dot-separated parts instead of 3`);
  }
  const header = decodeJson(headerPart, 'header');
  // J-5: the algorithm is checked before anything else is looked at.
  const alg = header.alg;
  if (typeof alg !== 'string' || !(JWT_SVID_ALGORITHMS as readonly string[]).includes(alg)) {
    throw new SpiffeError(
      'ERR_JWTSVID_UNSUPPORTED_ALG',
      `JWT-SVID alg ${JSON.stringify(alg)} is not allowed; JWT-SVID §2.1 allows only ${JWT_SVID_ALGORITHMS.join(', ')}`,
    );
  }
  const extra = Object.keys(header).filter((k) => !HEADER_MEMBERS.has(k));
  if (extra.length > 0) {
    throw new SpiffeError(
      'ERR_JWTSVID_EXTRA_HEADER',
      `JWT-SVID header has ${extra.map((k) => `"${k}"`).join(', ')}; JWT-SVID §2 allows only alg, kid and typ`,
    );
  }
  const { typ, kid } = header;
  if (typ !== undefined && typ !== 'JWT' && typ !== 'JOSE') {
    throw new SpiffeError(
      'ERR_JWTSVID_BAD_TYP',
      `JWT-SVID typ ${JSON.stringify(typ)} is not allowed; JWT-SVID §2.3 allows only "JWT" or "JOSE" (or no typ)`,
    );
  }
  if (kid !== undefined && typeof kid !== 'string') throw malformed('JWT-SVID kid is not a string');
  if (!B64URL.test(signaturePart)) throw malformed('JWT-SVID signature is not base64url');
  const claims = decodeJson(payloadPart, 'payload');
  if (typeof claims.sub !== 'string') {
    throw new SpiffeError(
      'ERR_JWTSVID_MISSING_SUB',
      'JWT-SVID has no sub claim; JWT-SVID §3.1 requires sub to hold the SPIFFE ID of the workload',
    );
  }
  const id = SpiffeId.parse(claims.sub);
  const audience = readAudience(claims.aud);
  if (claims.exp === undefined) {
    throw new SpiffeError('ERR_JWTSVID_MISSING_EXP', 'JWT-SVID has no exp claim; JWT-SVID §3.3 requires one');
  }
  if (!isNumericDate(claims.exp)) {
    throw new SpiffeError(
      'ERR_JWTSVID_BAD_EXP',
      `JWT-SVID exp is not a NumericDate within ±${MAX_NUMERIC_DATE} seconds (RFC 7519 §4.1.4)`,
    );
  }
  for (const name of ['nbf', 'iat'] as const) {
    if (claims[name] !== undefined && !isNumericDate(claims[name])) {
      throw new SpiffeError(
        name === 'nbf' ? 'ERR_JWTSVID_BAD_NBF' : 'ERR_JWTSVID_BAD_IAT',
        `JWT-SVID ${name} is not a NumericDate within ±${MAX_NUMERIC_DATE} seconds (RFC 7519 §4.1.${name === 'nbf' ? 5 : 6})`,
      );
    }
  }
  const parsedHeader: JwtSvidHeader = {
    alg: alg as JwtSvidAlgorithm,
    ...(kid === undefined ? {} : { kid }),
    ...(typ === undefined ? {} : { typ }),
  };
  return { id, audience, expiresAt: new Date(claims.exp * 1000), header: parsedHeader, claims, token };
}

/** A number of seconds a Date can represent; larger values would make an invalid Date. */
function isNumericDate(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && Math.abs(value) <= MAX_NUMERIC_DATE;
}

function readAudience(aud: unknown): string[] {
  if (aud === undefined || (Array.isArray(aud) && aud.length === 0)) {
    throw new SpiffeError(
      'ERR_JWTSVID_MISSING_AUD',
      'JWT-SVID has no aud; JWT-SVID §3.2 requires one or more audiences',
    );
  }
  if (typeof aud === 'string') return [aud];
  if (Array.isArray(aud) && aud.length > MAX_JWT_SVID_AUDIENCES) checkJwtSvidAudience(aud);
  if (Array.isArray(aud) && aud.every((a): a is string => typeof a === 'string')) return aud;
  throw new SpiffeError(
    'ERR_JWTSVID_BAD_AUD',
    'JWT-SVID aud is neither a string nor an array of strings (RFC 7519 §4.1.3)',
  );
}

/**
 * Parses and validates a JWT-SVID (J-1..J-15, W-43, W-47): form as in {@link parseJwtSvidInsecure};
 * signature by a `jwt-svid` key of the bundle for the **subject's** trust domain (picked by `kid`, or
 * tried in turn when the token has none, as JWT-SVID §2.2 makes `kid` optional); `exp` not passed and
 * `nbf` (if any) reached at `options.time`; `aud` contains `audience`.
 *
 * @throws SpiffeError with an `ERR_JWTSVID_*` code.
 * @example
 * ```ts
 * const svid = await validateJwtSvid(token, bundleSet, 'spiffe://example.org/reports');
 * svid.id.toString();
 * ```
 */
export async function validateJwtSvid(
  token: string,
  bundles: JwtBundleSource,
  audience: string,
  options: ValidateJwtOptions = {},
): Promise<JwtSvid> {
  const svid = parseJwtSvidInsecure(token);
  const bundle = bundles.getJwtBundleForTrustDomain(svid.id.trustDomain);
  if (bundle === undefined) {
    throw new SpiffeError(
      'ERR_JWTSVID_NO_BUNDLE',
      `no JWT bundle for trust domain "${svid.id.trustDomain}"; a JWT-SVID is trusted only through its subject's trust-domain bundle (Workload API §6.3)`,
    );
  }
  const { kid } = svid.header;
  let candidates: KeyObject[];
  if (kid === undefined) candidates = [...bundle.authorities.values()];
  else {
    const key = bundle.authorities.get(kid);
    if (key === undefined) {
      throw new SpiffeError(
        'ERR_JWTSVID_UNKNOWN_KID',
        `JWT-SVID kid "${kid}" is not a jwt-svid key of trust domain "${svid.id.trustDomain}"; refresh the bundle or check the issuer`,
      );
    }
    candidates = [key];
  }
  // jose only here, on first use: an agent whose workloads never validate a JWT-SVID does not load it.
  const { compactVerify } = await import('jose');
  let verified = false;
  for (const key of candidates) {
    try {
      await compactVerify(token, key, { algorithms: [svid.header.alg] });
      verified = true;
      break;
    } catch {
      // Wrong key or bad signature; try the next candidate, then report below.
    }
  }
  if (!verified) {
    throw new SpiffeError(
      'ERR_JWTSVID_BAD_SIGNATURE',
      `JWT-SVID signature does not verify with ${kid === undefined ? 'any' : `the "${kid}"`} jwt-svid key of trust domain "${svid.id.trustDomain}"`,
    );
  }
  const now = (options.time ?? new Date()).getTime() / 1000;
  const leeway = options.leewaySeconds ?? 0;
  const exp = svid.expiresAt.getTime() / 1000;
  if (now >= exp + leeway) {
    throw new SpiffeError(
      'ERR_JWTSVID_EXPIRED',
      `JWT-SVID expired at ${svid.expiresAt.toISOString()}; JWT-SVID App. A and RFC 7519 §4.1.4 reject an exp in the past`,
    );
  }
  const nbf = svid.claims.nbf;
  if (typeof nbf === 'number' && now < nbf - leeway) {
    throw new SpiffeError(
      'ERR_JWTSVID_NOT_YET_VALID',
      `JWT-SVID is not valid before ${new Date(nbf * 1000).toISOString()} (nbf, RFC 7519 §4.1.5)`,
    );
  }
  if (!svid.audience.includes(audience)) {
    throw new SpiffeError(
      'ERR_JWTSVID_AUDIENCE_MISMATCH',
      `JWT-SVID audience ${JSON.stringify(svid.audience)} does not include "${audience}"; JWT-SVID §3.2 requires rejecting it`,
    );
  }
  return svid;
}
