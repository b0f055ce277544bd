import type { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { BundleSet } from '../../src/spiffe/bundle/bundle-set.js';
import { JwtBundle } from '../../src/spiffe/bundle/jwt-bundle.js';
import { SpiffeBundle } from '../../src/spiffe/bundle/spiffe-bundle.js';
import { X509Bundle } from '../../src/spiffe/bundle/x509-bundle.js';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { TrustDomain } from '../../src/spiffe/trust-domain.js';
import { mintX509Ca } from '../../src/spiffe/x509-mint.js';
import { expectSpiffeError } from '../helpers/spiffe-errors.js';
import { p256, withUndecodableKey } from '../helpers/x509.js';

const td = TrustDomain.parse('example.org');
const jwtKey = newKeyPair('ec', { namedCurve: 'P-256' }).publicKey;
const rsaKey = newKeyPair('rsa', { modulusLength: 2048 }).publicKey;
let ca1: X509Certificate;
let ca2: X509Certificate;

beforeAll(async () => {
  const notBefore = new Date();
  const notAfter = new Date(notBefore.getTime() + 3_600_000);
  const k1 = p256();
  const k2 = p256();
  ca1 = await mintX509Ca(
    { trustDomain: td, publicKey: k1.publicKey, notBefore, notAfter, subject: 'CN=one' },
    k1.signer,
  );
  ca2 = await mintX509Ca(
    { trustDomain: td, publicKey: k2.publicKey, notBefore, notAfter, subject: 'CN=two' },
    k2.signer,
  );
});

const x5c = (c: X509Certificate) => c.raw.toString('base64');

describe('X509Bundle', () => {
  it('round-trips PEM and concatenated DER', () => {
    const bundle = new X509Bundle(td, [ca1, ca2]);
    const fromPem = X509Bundle.parsePem(td, bundle.marshalPem());
    const fromDer = X509Bundle.parseDer(td, bundle.marshalDer());
    for (const b of [fromPem, fromDer]) {
      expect(b.authorities.map((c) => c.fingerprint256)).toEqual([ca1.fingerprint256, ca2.fingerprint256]);
      expect(b.trustDomain.equals(td)).toBe(true);
    }
    expect(fromDer.hasAuthority(ca2)).toBe(true);
  });

  it('rejects bytes that are not DER certificates and a PEM block that is not a certificate', () => {
    expectSpiffeError(
      () => X509Bundle.parseDer(td, Buffer.from(ca1.toString())),
      'ERR_BUNDLE_BAD_CERTIFICATE',
      /DER, not PEM/,
    );
    const broken = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
    expectSpiffeError(() => X509Bundle.parsePem(td, broken), 'ERR_BUNDLE_BAD_CERTIFICATE', /block 0/);
  });

  it('refuses a certificate whose public key does not decode, in PEM and in DER', () => {
    const bad = withUndecodableKey(ca2);
    const pem = `${ca1.toString()}-----BEGIN CERTIFICATE-----\n${bad.toString('base64')}\n-----END CERTIFICATE-----\n`;
    expectSpiffeError(
      () => X509Bundle.parsePem(td, pem),
      'ERR_BUNDLE_BAD_CERTIFICATE',
      /block 1 .*usable public key/,
    );
    expectSpiffeError(
      () => X509Bundle.parseDer(td, Buffer.concat([ca1.raw, bad])),
      'ERR_BUNDLE_BAD_CERTIFICATE',
      /usable public keys/,
    );
  });

  it('reads empty text as an empty bundle but rejects text without a complete certificate block', () => {
    expect(X509Bundle.parsePem(td, '\n').authorities).toEqual([]);
    const truncated = ca1.toString().split('-----END')[0] ?? '';
    expectSpiffeError(
      () => X509Bundle.parsePem(td, truncated),
      'ERR_BUNDLE_PARSE',
      /no complete CERTIFICATE/,
    );
  });
});

describe('JwtBundle', () => {
  it('round-trips a JWKS with kids', () => {
    const bundle = new JwtBundle(
      td,
      new Map([
        ['a', jwtKey],
        ['b', rsaKey],
      ]),
    );
    const back = JwtBundle.parse(td, bundle.marshal());
    expect([...back.authorities.keys()]).toEqual(['a', 'b']);
    expect(back.authorities.get('a')?.equals(jwtKey)).toBe(true);
    expect(back.authorities.get('b')?.equals(rsaKey)).toBe(true);
  });

  it('ignores keys with another use, an unknown kty or no kid', () => {
    const jwk = jwtKey.export({ format: 'jwk' });
    const doc = {
      keys: [
        { ...jwk, kid: 'keep' },
        { ...jwk, kid: 'x509', use: 'x509-svid' },
        { kty: 'OKP', crv: 'Ed25519', x: 'AAAA', kid: 'okp' },
        { ...jwk },
      ],
    };
    expect([...JwtBundle.parse(td, JSON.stringify(doc)).authorities.keys()]).toEqual(['keep']);
  });

  it('refuses an empty kid when built (J-18) and a duplicated kid when parsed', () => {
    expectSpiffeError(
      () => new JwtBundle(td, new Map([['', jwtKey]])),
      'ERR_BUNDLE_JWT_KEY_NO_KID',
      /§6\.1 requires/,
    );
    const jwk = jwtKey.export({ format: 'jwk' });
    const doc = JSON.stringify({
      keys: [
        { ...jwk, kid: 'a' },
        { ...jwk, kid: 'a' },
      ],
    });
    expectSpiffeError(() => JwtBundle.parse(td, doc), 'ERR_BUNDLE_DUPLICATE_KID', /kid "a"/);
  });
});

describe('SpiffeBundle', () => {
  it('round-trips both kinds of keys, sequence and refresh hint', () => {
    const bundle = new SpiffeBundle(td, {
      x509Authorities: [ca1],
      jwtAuthorities: new Map([['k1', jwtKey]]),
      sequenceNumber: 42n,
      refreshHintSeconds: 300,
    });
    const json = bundle.marshal();
    const doc = JSON.parse(json) as { keys: Record<string, unknown>[] };
    // X-26..X-29 and J-17, J-18: use values, no kid on x509-svid, one x5c, kid on jwt-svid.
    expect(doc.keys.map((k) => [k.use, 'kid' in k, Array.isArray(k.x5c) ? k.x5c.length : 0])).toEqual([
      ['x509-svid', false, 1],
      ['jwt-svid', true, 0],
    ]);
    const back = SpiffeBundle.parse(td, json);
    expect(back.x509Authorities.map((c) => c.fingerprint256)).toEqual([ca1.fingerprint256]);
    expect(back.jwtAuthorities.get('k1')?.equals(jwtKey)).toBe(true);
    expect(back.sequenceNumber).toBe(42n);
    expect(back.refreshHintSeconds).toBe(300);
  });

  it('keeps all 64 bits of spiffe_sequence (B-5)', () => {
    const big = 18_446_744_073_709_551_615n;
    const json = new SpiffeBundle(td, { sequenceNumber: big }).marshal();
    expect(json).toContain('"spiffe_sequence":18446744073709551615');
    expect(SpiffeBundle.parse(td, json).sequenceNumber).toBe(big);
  });

  it('ignores unknown use and kty, x509-svid entries without x5c, and extra x5c certificates', () => {
    const ecJwk = ca1.publicKey.export({ format: 'jwk' });
    const doc = {
      keys: [
        { ...ecJwk, use: 'x509-svid', x5c: [x5c(ca1), x5c(ca2)] }, // only the first counts
        { ...ecJwk, use: 'x509-svid' }, // no x5c
        { ...ecJwk, use: 'x509-svid', x5c: [] }, // empty x5c
        { ...ecJwk, use: 'X509-SVID', x5c: [x5c(ca2)] }, // B-15: use is case-sensitive, so unknown
        { ...ecJwk, use: 'wit-svid', kid: 'w' }, // B-16: unknown use
        { kty: 'oct', k: 'AAAA', use: 'jwt-svid', kid: 'sym' }, // B-14: unknown kty
        { ...ecJwk, kid: 'nouse' }, // B-16: use missing
      ],
      spiffe_sequence: 1,
      extra_top_level: true, // B-2: tolerated
    };
    const bundle = SpiffeBundle.parse(td, JSON.stringify(doc));
    expect(bundle.x509Authorities.map((c) => c.fingerprint256)).toEqual([ca1.fingerprint256]);
    expect(bundle.jwtAuthorities.size).toBe(0);
  });

  it('refuses an x509-svid entry whose certificate key does not decode, so marshal never meets it', () => {
    const doc = JSON.stringify({
      keys: [
        { kty: 'EC', use: 'x509-svid', x5c: [x5c(ca1)] },
        { kty: 'EC', use: 'x509-svid', x5c: [withUndecodableKey(ca2).toString('base64')] },
      ],
    });
    expectSpiffeError(() => SpiffeBundle.parse(td, doc), 'ERR_BUNDLE_BAD_CERTIFICATE', /keys\[1\] x5c\[0\]/);
    const garbage = JSON.stringify({ keys: [{ kty: 'EC', use: 'x509-svid', x5c: ['AAAA'] }] });
    expectSpiffeError(() => SpiffeBundle.parse(td, garbage), 'ERR_BUNDLE_BAD_CERTIFICATE', /keys\[0\]/);
  });

  it('accepts an empty keys array as a revoked trust domain (B-8, B-10)', () => {
    const bundle = SpiffeBundle.parse(td, '{"keys":[]}');
    expect(bundle.x509Authorities).toEqual([]);
    expect(bundle.jwtAuthorities.size).toBe(0);
  });

  it.each([
    ['not JSON', 'nope', 'ERR_BUNDLE_PARSE', /not JSON/],
    ['a JSON array', '[]', 'ERR_BUNDLE_PARSE', /not a JSON object/],
    ['no keys member (B-8)', '{"spiffe_sequence":1}', 'ERR_BUNDLE_MISSING_KEYS', /§4\.1\.3 requires one/],
    ['keys not an array (B-8)', '{"keys":{}}', 'ERR_BUNDLE_MISSING_KEYS', /"keys" array/],
    [
      'a fractional sequence (B-4)',
      '{"keys":[],"spiffe_sequence":1.5}',
      'ERR_BUNDLE_BAD_SEQUENCE',
      /§4\.1\.1/,
    ],
    [
      'a negative sequence (B-4)',
      '{"keys":[],"spiffe_sequence":-1}',
      'ERR_BUNDLE_BAD_SEQUENCE',
      /non-negative integer/,
    ],
    [
      'a string refresh hint (B-7)',
      '{"keys":[],"spiffe_refresh_hint":"5m"}',
      'ERR_BUNDLE_BAD_REFRESH_HINT',
      /§4\.1\.2/,
    ],
  ] as const)('rejects %s', (_name, json, code, rule) => {
    expectSpiffeError(() => SpiffeBundle.parse(td, json), code, rule);
  });
});

describe('BundleSet', () => {
  const other = TrustDomain.parse('other.org');

  it('keeps bundles apart by trust domain (F-8) and serves both sources', () => {
    const set = new BundleSet([
      new X509Bundle(td, [ca1]),
      new SpiffeBundle(other, { x509Authorities: [ca2], jwtAuthorities: new Map([['k', jwtKey]]) }),
    ]);
    expect(set.getX509BundleForTrustDomain(td)?.authorities.map((c) => c.fingerprint256)).toEqual([
      ca1.fingerprint256,
    ]);
    expect(set.getX509BundleForTrustDomain(other)?.authorities.map((c) => c.fingerprint256)).toEqual([
      ca2.fingerprint256,
    ]);
    expect(set.getJwtBundleForTrustDomain(td)?.authorities.size).toBe(0);
    expect(set.getJwtBundleForTrustDomain(other)?.authorities.has('k')).toBe(true);
    expect(set.getX509BundleForTrustDomain(TrustDomain.parse('third.org'))).toBeUndefined();
  });

  it('replaces a trust domain’s bundle and deletes it', () => {
    const set = new BundleSet([new X509Bundle(td, [ca1])]);
    set.set(new JwtBundle(td, new Map([['k', jwtKey]])));
    expect(set.getX509BundleForTrustDomain(td)?.authorities).toEqual([]);
    expect(set.bundles()).toHaveLength(1);
    expect(set.delete(td)).toBe(true);
    expect(set.get(td)).toBeUndefined();
  });
});

describe('weak authorities', () => {
  /** A CA certificate over an RSA key of `bits`, self-signed. */
  async function rsaCa(bits: number): Promise<X509Certificate> {
    const { privateKey, publicKey } = newKeyPair('rsa', { modulusLength: bits });
    const notBefore = new Date();
    return mintX509Ca(
      {
        trustDomain: td,
        publicKey,
        notBefore,
        notAfter: new Date(notBefore.getTime() + 3_600_000),
        subject: `CN=rsa ${bits},O=weak`,
      },
      createKeySigner(privateKey),
    );
  }
  const rsaJwk = (bits: number, kid: string) => ({
    ...newKeyPair('rsa', { modulusLength: bits }).publicKey.export({ format: 'jwk' }),
    kid,
    use: 'jwt-svid',
  });

  it('refuses an X.509 root with an RSA key under 2048 bits, however the bundle arrives', async () => {
    const weak = await rsaCa(1024);
    const message =
      /authority 1 \(CN=rsa 1024, O=weak\) has an RSA key of 1024 bits, fewer than the 2048 required/;
    expectSpiffeError(() => new X509Bundle(td, [ca1, weak]), 'ERR_BUNDLE_WEAK_KEY', message);
    expectSpiffeError(
      () => X509Bundle.parsePem(td, ca1.toString() + weak.toString()),
      'ERR_BUNDLE_WEAK_KEY',
      message,
    );
    expectSpiffeError(
      () => X509Bundle.parseDer(td, Buffer.concat([ca1.raw, weak.raw])),
      'ERR_BUNDLE_WEAK_KEY',
      message,
    );
    const doc = JSON.stringify({
      keys: [ca1, weak].map((c) => ({ kty: 'EC', use: 'x509-svid', x5c: [x5c(c)] })),
    });
    expectSpiffeError(() => SpiffeBundle.parse(td, doc), 'ERR_BUNDLE_WEAK_KEY', message);
    expectSpiffeError(
      () => new SpiffeBundle(td, { x509Authorities: [weak] }),
      'ERR_BUNDLE_WEAK_KEY',
      /authority 0 /,
    );
    // 2048 bits is enough.
    const strong = await rsaCa(2048);
    expect(new X509Bundle(td, [strong]).authorities).toHaveLength(1);
  });

  it('refuses a JWT key with an RSA modulus under 2048 bits, naming its kid', () => {
    const doc = JSON.stringify({
      keys: [{ ...jwtKey.export({ format: 'jwk' }), kid: 'ok' }, rsaJwk(1536, 'old-rsa')],
    });
    const message = /key "old-rsa" is an RSA key of 1536 bits, fewer than the 2048 required/;
    expectSpiffeError(() => JwtBundle.parse(td, doc), 'ERR_BUNDLE_WEAK_KEY', message);
    expectSpiffeError(() => SpiffeBundle.parse(td, doc), 'ERR_BUNDLE_WEAK_KEY', message);
    expect(JwtBundle.parse(td, JSON.stringify({ keys: [rsaJwk(2048, 'rsa')] })).authorities.has('rsa')).toBe(
      true,
    );
  });
});
