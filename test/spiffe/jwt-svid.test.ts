import { type KeyObject, sign } from 'node:crypto';
import { decodeProtectedHeader, jwtVerify } from 'jose';
import { describe, expect, it } from 'vitest';
import { BundleSet } from '../../src/spiffe/bundle/bundle-set.js';
import { JwtBundle } from '../../src/spiffe/bundle/jwt-bundle.js';
import type { SpiffeErrorCode } from '../../src/spiffe/errors.js';
import {
  MAX_JWT_SVID_BYTES,
  mintJwtSvid,
  parseJwtSvidInsecure,
  validateJwtSvid,
} from '../../src/spiffe/jwt-svid.js';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { TrustDomain } from '../../src/spiffe/trust-domain.js';
import { expectSpiffeError, expectSpiffeRejection } from '../helpers/spiffe-errors.js';

const td = TrustDomain.parse('example.org');
const subject = SpiffeId.parse('spiffe://example.org/web');
const { privateKey, publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
const signer = createKeySigner(privateKey);
const bundles = new BundleSet([new JwtBundle(td, new Map([['k1', publicKey]]))]);
// Frozen clock: every time check below is relative to this instant.
const now = new Date('2026-11-26T12:00:00Z');
const inAnHour = new Date(now.getTime() + 3_600_000);
const nowSec = Math.floor(now.getTime() / 1000);

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
/** Signs any header and payload with ES256, to build tokens the minting API would never make. */
function forge(
  header: Record<string, unknown>,
  payload: Record<string, unknown>,
  key: KeyObject = privateKey,
): string {
  const input = `${b64(header)}.${b64(payload)}`;
  const sig = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}
const goodHeader = { alg: 'ES256', kid: 'k1', typ: 'JWT' };
const goodPayload = { sub: subject.toString(), aud: 'reports', exp: nowSec + 600 };

describe('mintJwtSvid', () => {
  it('writes only alg, kid and typ, and sub/aud/exp, verifiable by jose independently', async () => {
    const token = await mintJwtSvid(
      {
        spiffeId: subject,
        audience: 'reports',
        expiresAt: inAnHour,
        issuedAt: now,
        keyId: 'k1',
        claims: { jti: 'x' },
      },
      signer,
    );
    expect(decodeProtectedHeader(token)).toEqual({ alg: 'ES256', kid: 'k1', typ: 'JWT' });
    const { payload } = await jwtVerify(token, publicKey, { currentDate: now, audience: 'reports' });
    expect(payload).toEqual({
      sub: subject.toString(),
      aud: 'reports',
      exp: nowSec + 3600,
      iat: nowSec,
      jti: 'x',
    });
  });

  it('writes typ JOSE and an audience array when asked', async () => {
    const token = await mintJwtSvid(
      { spiffeId: subject, audience: ['a', 'b'], expiresAt: inAnHour, keyId: 'k1', type: 'JOSE' },
      signer,
    );
    const svid = parseJwtSvidInsecure(token);
    expect(svid.header).toEqual({ alg: 'ES256', kid: 'k1', typ: 'JOSE' });
    expect(svid.audience).toEqual(['a', 'b']);
  });

  it('signs with RSA-PSS through the Signer too', async () => {
    const rsa = newKeyPair('rsa', { modulusLength: 2048 });
    const token = await mintJwtSvid(
      { spiffeId: subject, audience: 'reports', expiresAt: inAnHour, keyId: 'r1' },
      createKeySigner(rsa.privateKey, 'PS256'),
    );
    const set = new BundleSet([new JwtBundle(td, new Map([['r1', rsa.publicKey]]))]);
    expect((await validateJwtSvid(token, set, 'reports', { time: now })).header.alg).toBe('PS256');
  });

  it('refuses to sign for an ID over 2048 bytes (ID-18)', async () => {
    const long = SpiffeId.parse(`spiffe://example.org/${'a'.repeat(2100)}`);
    await expectSpiffeRejection(
      mintJwtSvid({ spiffeId: long, audience: 'a', expiresAt: inAnHour, keyId: 'k1' }, signer),
      'ERR_SPIFFEID_TOO_LONG',
      /§2\.3/,
    );
  });

  it('refuses more than 64 audiences and a token over 16 KiB, before signing', async () => {
    const base = { spiffeId: subject, expiresAt: inAnHour, keyId: 'k1' };
    let signed = 0;
    const counting = {
      algorithm: signer.algorithm,
      publicKey: signer.publicKey,
      sign: (data: Uint8Array) => {
        signed++;
        return signer.sign(data);
      },
    };
    const many = Array.from({ length: 65 }, (_, i) => `a${i}`);
    await expectSpiffeRejection(
      mintJwtSvid({ ...base, audience: many }, counting),
      'ERR_JWTSVID_TOO_MANY_AUDIENCES',
      /65 audiences; at most 64/,
    );
    await expectSpiffeRejection(
      mintJwtSvid({ ...base, audience: ['x'.repeat(MAX_JWT_SVID_BYTES)] }, counting),
      'ERR_JWTSVID_TOO_LARGE',
      /at most 16384/,
    );
    await expectSpiffeRejection(
      mintJwtSvid({ ...base, audience: 'a', claims: { pad: 'x'.repeat(MAX_JWT_SVID_BYTES) } }, counting),
      'ERR_JWTSVID_TOO_LARGE',
      /at most 16384/,
    );
    expect(signed).toBe(0);
    const at64 = await mintJwtSvid({ ...base, audience: many.slice(0, 64) }, counting);
    expect(parseJwtSvidInsecure(at64).audience).toHaveLength(64);
  });

  it('refuses an empty audience, an empty kid and reserved extra claims', async () => {
    const base = { spiffeId: subject, expiresAt: inAnHour, keyId: 'k1' };
    await expect(mintJwtSvid({ ...base, audience: [] }, signer)).rejects.toThrow(/one or more/);
    await expect(mintJwtSvid({ ...base, audience: 'a', keyId: '' }, signer)).rejects.toThrow(/kid/);
    await expect(mintJwtSvid({ ...base, audience: 'a', claims: { sub: 'x' } }, signer)).rejects.toThrow(
      /"sub"/,
    );
  });
});

describe('validateJwtSvid accepts', () => {
  it('a minted token for its audience and returns the subject', async () => {
    const token = await mintJwtSvid(
      { spiffeId: subject, audience: ['reports', 'other'], expiresAt: inAnHour, keyId: 'k1' },
      signer,
    );
    const svid = await validateJwtSvid(token, bundles, 'other', { time: now });
    expect(svid.id.equals(subject)).toBe(true);
    expect(svid.expiresAt).toEqual(new Date((nowSec + 3600) * 1000));
  });

  it('a token without kid (J-6) and without typ (J-7) by trying the bundle keys', async () => {
    const token = forge({ alg: 'ES256' }, goodPayload);
    expect((await validateJwtSvid(token, bundles, 'reports', { time: now })).header).toEqual({
      alg: 'ES256',
    });
  });

  it('an expired token within the leeway (App. A)', async () => {
    const token = forge(goodHeader, { ...goodPayload, exp: nowSec - 5 });
    await expect(
      validateJwtSvid(token, bundles, 'reports', { time: now, leewaySeconds: 10 }),
    ).resolves.toBeDefined();
  });
});

describe('validateJwtSvid rejects (each with its own code)', () => {
  const cases: [string, () => string, SpiffeErrorCode, RegExp][] = [
    [
      'JWS JSON serialization (J-1)',
      () => JSON.stringify({ payload: 'x', signatures: [] }),
      'ERR_JWTSVID_MALFORMED',
      /JSON Serialization/,
    ],
    ['a JWE (J-1)', () => 'a.b.c.d.e', 'ERR_JWTSVID_MALFORMED', /JWE/],
    ['two parts', () => 'a.b', 'ERR_JWTSVID_MALFORMED', /2 dot-separated parts/],
    [
      'a header that is not JSON',
      () => `${Buffer.from('nope').toString('base64url')}.e30.sig`,
      'ERR_JWTSVID_MALFORMED',
      /not JSON/,
    ],
    [
      'alg none (J-4)',
      () => forge({ alg: 'none' }, goodPayload),
      'ERR_JWTSVID_UNSUPPORTED_ALG',
      /§2\.1 allows only/,
    ],
    [
      'alg HS256 (J-4)',
      () => forge({ alg: 'HS256', kid: 'k1' }, goodPayload),
      'ERR_JWTSVID_UNSUPPORTED_ALG',
      /"HS256"/,
    ],
    [
      'alg EdDSA (J-4)',
      () => forge({ alg: 'EdDSA', kid: 'k1' }, goodPayload),
      'ERR_JWTSVID_UNSUPPORTED_ALG',
      /"EdDSA"/,
    ],
    // J-5: alg is checked first, so a token that is also broken elsewhere still reports the alg.
    [
      'a bad alg before a bad payload (J-5)',
      () => `${b64({ alg: 'none', crit: ['x'] })}.!!!.`,
      'ERR_JWTSVID_UNSUPPORTED_ALG',
      /not allowed/,
    ],
    [
      'an extra header parameter (J-2)',
      () => forge({ ...goodHeader, jku: 'https://x' }, goodPayload),
      'ERR_JWTSVID_EXTRA_HEADER',
      /"jku".*only alg, kid and typ/,
    ],
    [
      'typ "at+jwt" (J-7)',
      () => forge({ ...goodHeader, typ: 'at+jwt' }, goodPayload),
      'ERR_JWTSVID_BAD_TYP',
      /"JWT" or "JOSE"/,
    ],
    [
      'no sub (J-8)',
      () => forge(goodHeader, { aud: 'reports', exp: nowSec + 60 }),
      'ERR_JWTSVID_MISSING_SUB',
      /§3\.1/,
    ],
    [
      'a sub that is not a SPIFFE ID',
      () => forge(goodHeader, { ...goodPayload, sub: 'web' }),
      'ERR_SPIFFEID_WRONG_SCHEME',
      /scheme/,
    ],
    [
      'no aud (J-9, J-10)',
      () => forge(goodHeader, { sub: subject.toString(), exp: nowSec + 60 }),
      'ERR_JWTSVID_MISSING_AUD',
      /§3\.2 requires one or more/,
    ],
    [
      'an empty aud array (J-9)',
      () => forge(goodHeader, { ...goodPayload, aud: [] }),
      'ERR_JWTSVID_MISSING_AUD',
      /one or more/,
    ],
    [
      'a non-string aud',
      () => forge(goodHeader, { ...goodPayload, aud: [1] }),
      'ERR_JWTSVID_BAD_AUD',
      /RFC 7519 §4\.1\.3/,
    ],
    [
      'no exp (J-12, J-13)',
      () => forge(goodHeader, { sub: subject.toString(), aud: 'reports' }),
      'ERR_JWTSVID_MISSING_EXP',
      /§3\.3/,
    ],
    [
      'a string exp',
      () => forge(goodHeader, { ...goodPayload, exp: 'tomorrow' }),
      'ERR_JWTSVID_BAD_EXP',
      /NumericDate/,
    ],
  ];
  it.each(cases)('%s', async (_name, token, code, rule) => {
    await expectSpiffeRejection(validateJwtSvid(token(), bundles, 'reports', { time: now }), code, rule);
  });

  it('an expired token (J-14), exactly at exp too', async () => {
    await expectSpiffeRejection(
      validateJwtSvid(forge(goodHeader, { ...goodPayload, exp: nowSec }), bundles, 'reports', { time: now }),
      'ERR_JWTSVID_EXPIRED',
      /exp in the past/,
    );
  });

  it('a token before its nbf', async () => {
    const token = forge(goodHeader, { ...goodPayload, nbf: nowSec + 60 });
    await expectSpiffeRejection(
      validateJwtSvid(token, bundles, 'reports', { time: now }),
      'ERR_JWTSVID_NOT_YET_VALID',
      /nbf/,
    );
  });

  it.each([
    ['exp = 1e300', { exp: 1e300 }, 'ERR_JWTSVID_BAD_EXP', /exp is not a NumericDate within/],
    ['exp just past the Date range (8.64e12 + 1 s)', { exp: 8.64e12 + 1 }, 'ERR_JWTSVID_BAD_EXP', /exp/],
    ['exp = -1e300', { exp: -1e300 }, 'ERR_JWTSVID_BAD_EXP', /exp/],
    ['nbf past the Date range', { nbf: 8.64e15 + 1 }, 'ERR_JWTSVID_BAD_NBF', /nbf is not a NumericDate/],
    ['nbf that is not a number', { nbf: '0' }, 'ERR_JWTSVID_BAD_NBF', /nbf/],
    ['iat past the Date range', { iat: 1e300 }, 'ERR_JWTSVID_BAD_IAT', /iat is not a NumericDate/],
  ] as const)('a correctly signed token with %s', async (_name, claims, code, rule) => {
    const token = forge(goodHeader, { ...goodPayload, ...claims });
    await expectSpiffeRejection(validateJwtSvid(token, bundles, 'reports', { time: now }), code, rule);
  });

  it('a correctly signed token with 10 000 audiences (too large) or 65 (too many); 64 pass', async () => {
    const aud = ['reports', ...Array.from({ length: 9_999 }, (_, i) => `a${i}`)];
    await expectSpiffeRejection(
      validateJwtSvid(forge(goodHeader, { ...goodPayload, aud }), bundles, 'reports', { time: now }),
      'ERR_JWTSVID_TOO_LARGE',
      /at most 16384/,
    );
    const at65 = forge(goodHeader, { ...goodPayload, aud: aud.slice(0, 65) });
    await expectSpiffeRejection(
      validateJwtSvid(at65, bundles, 'reports', { time: now }),
      'ERR_JWTSVID_TOO_MANY_AUDIENCES',
      /65 audiences; at most 64/,
    );
    const at64 = forge(goodHeader, { ...goodPayload, aud: aud.slice(0, 64) });
    expect((await validateJwtSvid(at64, bundles, 'reports', { time: now })).audience).toHaveLength(64);
  });

  it('a correctly signed token over 16 KiB', async () => {
    const token = forge(goodHeader, { ...goodPayload, pad: 'x'.repeat(MAX_JWT_SVID_BYTES) });
    await expectSpiffeRejection(
      validateJwtSvid(token, bundles, 'reports', { time: now }),
      'ERR_JWTSVID_TOO_LARGE',
      /at most 16384/,
    );
  });

  it('a token for another audience (J-10)', async () => {
    await expectSpiffeRejection(
      validateJwtSvid(forge(goodHeader, goodPayload), bundles, 'billing', { time: now }),
      'ERR_JWTSVID_AUDIENCE_MISMATCH',
      /does not include "billing"/,
    );
  });

  it('a subject whose trust domain has no JWT bundle (W-47)', async () => {
    const token = forge(goodHeader, { ...goodPayload, sub: 'spiffe://other.org/web' });
    await expectSpiffeRejection(
      validateJwtSvid(token, bundles, 'reports', { time: now }),
      'ERR_JWTSVID_NO_BUNDLE',
      /"other\.org"/,
    );
  });

  it('a kid the bundle does not have', async () => {
    const token = forge({ ...goodHeader, kid: 'k9' }, goodPayload);
    await expectSpiffeRejection(
      validateJwtSvid(token, bundles, 'reports', { time: now }),
      'ERR_JWTSVID_UNKNOWN_KID',
      /"k9"/,
    );
  });

  it('a signature by another key', async () => {
    const other = newKeyPair('ec', { namedCurve: 'P-256' }).privateKey;
    const token = forge(goodHeader, goodPayload, other);
    await expectSpiffeRejection(
      validateJwtSvid(token, bundles, 'reports', { time: now }),
      'ERR_JWTSVID_BAD_SIGNATURE',
      /does not verify/,
    );
  });

  it('a key of another trust domain, even with the same kid', async () => {
    // other.org's bundle holds the real key under k1; example.org's holds a different one.
    const stranger = newKeyPair('ec', { namedCurve: 'P-256' }).publicKey;
    const set = new BundleSet([
      new JwtBundle(td, new Map([['k1', stranger]])),
      new JwtBundle(TrustDomain.parse('other.org'), new Map([['k1', publicKey]])),
    ]);
    await expectSpiffeRejection(
      validateJwtSvid(forge(goodHeader, goodPayload), set, 'reports', { time: now }),
      'ERR_JWTSVID_BAD_SIGNATURE',
      /"example\.org"/,
    );
  });

  it('a tampered payload', async () => {
    const [h, , s] = forge(goodHeader, goodPayload).split('.');
    const token = `${h}.${b64({ ...goodPayload, sub: 'spiffe://example.org/admin' })}.${s}`;
    await expectSpiffeRejection(
      validateJwtSvid(token, bundles, 'reports', { time: now }),
      'ERR_JWTSVID_BAD_SIGNATURE',
      /does not verify/,
    );
  });
});

describe('parseJwtSvidInsecure', () => {
  it('reads a token without checking its signature or time', () => {
    const token = forge(
      goodHeader,
      { ...goodPayload, exp: nowSec - 10_000 },
      newKeyPair('ec', { namedCurve: 'P-256' }).privateKey,
    );
    expect(parseJwtSvidInsecure(token).id.equals(subject)).toBe(true);
  });

  it('still applies the alg rule first', () => {
    expectSpiffeError(
      () => parseJwtSvidInsecure(forge({ alg: 'HS512' }, goodPayload)),
      'ERR_JWTSVID_UNSUPPORTED_ALG',
      /HS512/,
    );
  });
});
