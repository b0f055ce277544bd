/**
 * Fuzzes the SPIFFE parsers that read what peers, workloads, agents and federated trust domains
 * send: SPIFFE IDs and trust domains, endpoint addresses, JWT-SVIDs (form and full validation),
 * SPIFFE/JWT/X.509 bundles, CSRs and X.509-SVIDs. See harness.ts for the oracle and the seeds.
 * The parseCsr targets also run the parser it replaced (test/helpers/legacy-csr.ts) on each input
 * and fail when the two decide differently beyond the strict reader's own refusals.
 */
import { type KeyObject, sign, webcrypto, type X509Certificate } from 'node:crypto';
import fc from 'fast-check';
import { beforeAll } from 'vitest';
import { BundleSet } from '../../src/spiffe/bundle/bundle-set.js';
import { JwtBundle } from '../../src/spiffe/bundle/jwt-bundle.js';
import { SpiffeBundle } from '../../src/spiffe/bundle/spiffe-bundle.js';
import { X509Bundle } from '../../src/spiffe/bundle/x509-bundle.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { toPem } from '../../src/spiffe/der.js';
import { parseEndpointAddress } from '../../src/spiffe/endpoint-address.js';
import { MAX_JWT_SVID_AUDIENCES, parseJwtSvidInsecure, validateJwtSvid } from '../../src/spiffe/jwt-svid.js';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { TrustDomain } from '../../src/spiffe/trust-domain.js';
import { mintX509Ca, mintX509Svid } from '../../src/spiffe/x509-mint.js';
import { X509Svid } from '../../src/spiffe/x509-svid.js';
import { verifyX509Svid } from '../../src/spiffe/x509-verify.js';
import { parseCsrBothWays } from '../helpers/legacy-csr.js';
import { craft, px } from '../helpers/x509.js';
import { fuzz, fuzzSuite, mutated, mutatedText, randomBytes } from './harness.js';

const td = TrustDomain.parse('example.org');
const now = new Date('2026-11-26T12:00:00Z');
const nowSec = Math.floor(now.getTime() / 1000);
const ec = newKeyPair('ec', { namedCurve: 'P-256' });
const rsa = newKeyPair('rsa', { modulusLength: 2048 });
const jwtBundles = new BundleSet([new JwtBundle(td, new Map([['k1', ec.publicKey]]))]);

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
/** Signs any header and payload with the bundle's key, so validation gets past the signature. */
function signed(header: unknown, payload: unknown, key: KeyObject = ec.privateKey): string {
  const input = `${b64(header)}.${b64(payload)}`;
  return `${input}.${sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}

// Samples filled in beforeAll: certificates need async minting.
let ca: X509Certificate;
let leaf: X509Certificate;
let leafKeyDer: Uint8Array;
const csrSamples: Uint8Array[] = [];
const bundleSamples: string[] = [];
const pemSamples: string[] = [];

beforeAll(async () => {
  const caSigner = createKeySigner(ec.privateKey);
  const validity = {
    notBefore: new Date(now.getTime() - 3_600_000),
    notAfter: new Date(now.getTime() + 3_600_000),
  };
  ca = await mintX509Ca({ trustDomain: td, publicKey: ec.publicKey, ...validity }, caSigner);
  const leafKeys = newKeyPair('ec', { namedCurve: 'P-256' });
  leaf = await mintX509Svid(
    {
      spiffeId: SpiffeId.parse('spiffe://example.org/web'),
      publicKey: leafKeys.publicKey,
      dnsNames: ['web'],
      ...validity,
    },
    { certificate: ca, signer: caSigner },
  );
  leafKeyDer = leafKeys.privateKey.export({ type: 'pkcs8', format: 'der' });
  for (const [key, dnsNames] of [
    [ec.privateKey, []],
    [rsa.privateKey, ['a.example.org', 'b.example.org']],
  ] as const) {
    csrSamples.push(
      await createCsr(
        { spiffeId: SpiffeId.parse('spiffe://example.org/agent/x'), dnsNames },
        createKeySigner(key),
      ),
    );
  }
  const full = new SpiffeBundle(td, {
    x509Authorities: [ca, leaf],
    jwtAuthorities: new Map([
      ['k1', ec.publicKey],
      ['k2', rsa.publicKey],
    ]),
    sequenceNumber: 7n,
    refreshHintSeconds: 300,
  });
  bundleSamples.push(full.marshal(), new SpiffeBundle(td).marshal(), full.toJwtBundle().marshal());
  pemSamples.push(full.toX509Bundle().marshalPem());
});

/** JSON values likely to trip a claim or member check: odd numbers, wrong types, huge arrays. */
const oddValue = fc.oneof(
  fc.constantFrom(
    0,
    -1,
    1e300,
    -1e300,
    8.64e12,
    8.64e15 + 1,
    2 ** 53,
    Number.MAX_VALUE,
    0.5,
    null,
    true,
    '',
    '1',
  ),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.integer(),
  fc.string({ maxLength: 40 }),
  fc.array(fc.string({ maxLength: 8 }), { maxLength: 8 }),
  fc.jsonValue({ maxDepth: 2 }),
);

const spiffeIdText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 80 }),
  fc
    .tuple(
      fc.constantFrom('spiffe://', 'SPIFFE://', 'spiffe:', 'spiffe:///', 'http://', ''),
      fc.stringMatching(/^[a-zA-Z0-9._%:@-]{0,20}$/),
      fc.array(fc.stringMatching(/^[a-zA-Z0-9._%?#/-]{0,10}$/), { maxLength: 5 }),
    )
    .map(([scheme, host, segments]) => `${scheme}${host}${segments.map((s) => `/${s}`).join('')}`),
  fc.integer({ min: 2000, max: 5000 }).map((n) => `spiffe://example.org/${'a'.repeat(n)}`),
);

const header = fc.oneof(
  fc.constant({ alg: 'ES256', kid: 'k1', typ: 'JWT' }),
  fc.record(
    {
      alg: fc.oneof(fc.constantFrom('ES256', 'RS256', 'none', 'HS256'), oddValue),
      kid: fc.oneof(fc.constant('k1'), oddValue),
      typ: fc.oneof(fc.constantFrom('JWT', 'JOSE'), oddValue),
    },
    { requiredKeys: [] },
  ),
);

const payload = fc.record(
  {
    sub: fc.oneof(fc.constant('spiffe://example.org/web'), spiffeIdText, oddValue),
    aud: fc.oneof(
      fc.constant('reports'),
      fc.array(fc.constantFrom('reports', 'other', ''), { maxLength: 4 }),
      fc.integer({ min: 60, max: 3000 }).map((n) => Array.from({ length: n }, (_, i) => `aud-${i}`)),
      oddValue,
    ),
    exp: fc.oneof(fc.integer({ min: nowSec - 100, max: nowSec + 100 }), oddValue),
    nbf: oddValue,
    iat: oddValue,
  },
  { requiredKeys: ['sub', 'aud'] },
);

async function validateAndCheck(token: string): Promise<void> {
  const svid = await validateJwtSvid(token, jwtBundles, 'reports', { time: now });
  // A validated token must have expiry the caller can compare, and bounded size.
  if (Number.isNaN(svid.expiresAt.getTime()))
    throw new Error('validated JWT-SVID has an invalid expiry date');
  if (svid.audience.length > MAX_JWT_SVID_AUDIENCES)
    throw new Error('validated JWT-SVID has too many audiences');
}

const validToken = signed(
  { alg: 'ES256', kid: 'k1', typ: 'JWT' },
  { sub: 'spiffe://example.org/web', aud: 'reports', exp: nowSec + 600 },
);
const rsaToken = signed(
  { alg: 'RS256', kid: 'k2' },
  { sub: 'spiffe://example.org/web', aud: ['reports', 'x'], exp: nowSec + 600 },
  rsa.privateKey,
);

/** JWKs and x5c entries mixing real key material with odd values. */
const jwkEntry = fc.record(
  {
    use: fc.oneof(fc.constantFrom('x509-svid', 'jwt-svid'), oddValue),
    kty: fc.oneof(fc.constantFrom('EC', 'RSA', 'OKP', 'oct'), oddValue),
    kid: fc.oneof(fc.constantFrom('k1', 'k2', ''), oddValue),
    crv: fc.oneof(fc.constantFrom('P-256', 'P-384', 'P-521', 'Ed25519', 'secp256k1'), oddValue),
    x: fc.oneof(fc.constant(ec.publicKey.export({ format: 'jwk' }).x), fc.base64String(), oddValue),
    y: fc.oneof(fc.constant(ec.publicKey.export({ format: 'jwk' }).y), fc.base64String(), oddValue),
    n: fc.oneof(fc.constant(rsa.publicKey.export({ format: 'jwk' }).n), fc.base64String(), oddValue),
    e: fc.oneof(fc.constantFrom('AQAB', 'AA', ''), oddValue),
    x5c: fc.oneof(
      fc.constant([]),
      fc.base64String({ maxLength: 64 }).map((s) => [s]),
      fc.constantFrom('ca', 'leaf').map((which) => [(which === 'ca' ? ca : leaf).raw.toString('base64')]),
      oddValue,
    ),
  },
  { requiredKeys: [] },
);

const bundleDoc = fc
  .record(
    {
      keys: fc.oneof(fc.array(fc.oneof(jwkEntry, oddValue), { maxLength: 5 }), oddValue),
      spiffe_sequence: oddValue,
      spiffe_refresh_hint: oddValue,
    },
    { requiredKeys: [] },
  )
  .map((doc) => JSON.stringify(doc));

/** Parses a SPIFFE bundle and marshals it back: what `bundle set` and the bundle endpoint do. */
function bundleRoundTrip(text: string): void {
  const bundle = SpiffeBundle.parse(td, text);
  SpiffeBundle.parse(td, bundle.marshal());
  bundle.toJwtBundle().marshal();
  bundle.toX509Bundle().marshalPem();
}

/** SAN entries of any kind, with SPIFFE-ish and arbitrary values. */
const generalNames = fc.array(
  fc.oneof(
    spiffeIdText.map((value) => ({ type: 'url' as const, value })),
    fc.stringMatching(/^[a-z0-9.*-]{1,20}$/).map((value) => ({ type: 'dns' as const, value })),
    fc.constantFrom('127.0.0.1', '::1').map((value) => ({ type: 'ip' as const, value })),
    fc.stringMatching(/^[a-z]{1,8}@[a-z]{1,8}$/).map((value) => ({ type: 'email' as const, value })),
  ),
  { maxLength: 4 },
);

/** Leaf extensions drawn at random: what a hostile or broken peer could get signed. */
const leafShape = fc.record({
  names: generalNames,
  sanCritical: fc.boolean(),
  ca: fc.option(fc.tuple(fc.boolean(), fc.option(fc.nat({ max: 3 }), { nil: undefined })), {
    nil: undefined,
  }),
  keyUsage: fc.option(fc.tuple(fc.nat({ max: 511 }), fc.boolean()), { nil: undefined }),
  eku: fc.option(fc.subarray(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2', '1.2.3.4']), { nil: undefined }),
  extra: fc.option(
    fc.tuple(
      fc.constantFrom('2.5.29.30', '2.5.29.17', '2.5.29.19', '1.2.3.4'),
      fc.boolean(),
      fc.uint8Array({ maxLength: 24 }),
    ),
    { nil: undefined },
  ),
});

type LeafShape = typeof leafShape extends fc.Arbitrary<infer T> ? T : never;

function leafExtensionsOf(shape: LeafShape): px.Extension[] {
  const out: px.Extension[] = [];
  if (shape.names.length > 0)
    out.push(new px.SubjectAlternativeNameExtension(shape.names, shape.sanCritical));
  if (shape.ca !== undefined) out.push(new px.BasicConstraintsExtension(shape.ca[0], shape.ca[1], true));
  if (shape.keyUsage !== undefined) out.push(new px.KeyUsagesExtension(shape.keyUsage[0], shape.keyUsage[1]));
  if (shape.eku !== undefined) out.push(new px.ExtendedKeyUsageExtension(shape.eku));
  if (shape.extra !== undefined) out.push(new px.Extension(shape.extra[0], shape.extra[1], shape.extra[2]));
  return out;
}

/** Builds the input outside the oracle: a shape the generator itself refuses is skipped, not blamed. */
async function built<T>(build: () => Promise<T>): Promise<T | undefined> {
  try {
    return await build();
  } catch {
    return undefined;
  }
}

const csrKeys = webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
  'sign',
  'verify',
]);

fuzzSuite('SPIFFE parsers', () => {
  fuzz('SpiffeId.parse', spiffeIdText, (s) => SpiffeId.parse(s), 300);
  fuzz(
    'TrustDomain.parse',
    fc.oneof(fc.string({ unit: 'binary', maxLength: 300 }), fc.stringMatching(/^[a-z0-9._%A-Z-]{0,300}$/)),
    (s) => TrustDomain.parse(s),
    300,
  );
  fuzz(
    'parseEndpointAddress',
    fc.oneof(
      fc.string({ unit: 'binary', maxLength: 80 }),
      mutatedText([
        'unix:///run/spire/agent.sock',
        'tcp://127.0.0.1:8081',
        'unix:/tmp/a.sock',
        'tcp://[::1]:1',
      ]),
    ),
    (s) => parseEndpointAddress(s),
    300,
  );
  fuzz(
    'parseJwtSvidInsecure (mutated tokens)',
    mutatedText([validToken, rsaToken]),
    (t) => parseJwtSvidInsecure(t),
    300,
  );
  fuzz(
    'validateJwtSvid (signed random claims)',
    fc.tuple(header, payload).map(([h, p]) => signed(h, p)),
    validateAndCheck,
    200,
  );
  fuzz('validateJwtSvid (mutated tokens)', mutatedText([validToken, rsaToken]), validateAndCheck, 200);
  fuzz('SpiffeBundle.parse + marshal (structured)', bundleDoc, bundleRoundTrip, 200);
  fuzz(
    'SpiffeBundle.parse + marshal (mutated)',
    fc.constant(null).chain(() => mutatedText(bundleSamples)),
    bundleRoundTrip,
    200,
  );
  fuzz(
    'JwtBundle.parse + marshal',
    fc.oneof(
      bundleDoc,
      fc.constant(null).chain(() => mutatedText(bundleSamples)),
    ),
    (text) => JwtBundle.parse(td, text).marshal(),
    200,
  );
  fuzz(
    'X509Bundle.parsePem / parseDer',
    fc.oneof(
      fc.constant(null).chain(() => mutatedText(pemSamples)),
      fc
        .constant(null)
        .chain(() => mutated([ca.raw, Buffer.concat([ca.raw, leaf.raw])]))
        .map((b) => toPem('CERTIFICATE', b)),
    ),
    (pem) => {
      X509Bundle.parsePem(td, pem).marshalDer();
      X509Bundle.parseDer(td, Buffer.from(pem)).marshalPem();
    },
    200,
  );
  fuzz(
    'parseCsr (DER and PEM)',
    fc.oneof(
      fc.constant(null).chain(() => mutated(csrSamples)),
      fc
        .constant(null)
        .chain(() => mutated(csrSamples))
        .map((der) => toPem('CERTIFICATE REQUEST', der)),
      randomBytes,
    ),
    parseCsrBothWays,
    200,
  );
  fuzz(
    'parseCsr (signed CSR with random SANs)',
    leafShape,
    async (shape) => {
      const keys = await csrKeys;
      const csr = await built(() =>
        px.Pkcs10CertificateRequestGenerator.create(
          {
            name: '',
            keys,
            signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
            extensions: leafExtensionsOf(shape),
          },
          webcrypto,
        ),
      );
      if (csr !== undefined) await parseCsrBothWays(new Uint8Array(csr.rawData));
    },
    150,
  );
  fuzz(
    'verifyX509Svid (signed leaf with random extensions)',
    leafShape,
    async (shape) => {
      const leafKey = newKeyPair('ec', { namedCurve: 'P-256' });
      const cert = await built(() =>
        craft({
          subject: '',
          publicKey: leafKey.publicKey,
          issuer: { cert: ca, key: ec.privateKey },
          extensions: leafExtensionsOf(shape),
          notBefore: new Date(now.getTime() - 60_000),
          notAfter: new Date(now.getTime() + 60_000),
        }),
      );
      if (cert === undefined) return;
      verifyX509Svid([cert], new BundleSet([new X509Bundle(td, [ca])]), { time: now });
      X509Svid.parseDer(cert.raw, leafKey.privateKey.export({ type: 'pkcs8', format: 'der' }));
    },
    150,
  );
  fuzz(
    'X509Svid.parseDer + verifyX509Svid',
    fc
      .constant(null)
      .chain(() => fc.tuple(mutated([Buffer.concat([leaf.raw, ca.raw]), leaf.raw]), fc.boolean())),
    ([chain, goodKey]) => {
      const svid = X509Svid.parseDer(chain, goodKey ? leafKeyDer : chain);
      verifyX509Svid(svid.certificates, new BundleSet([new X509Bundle(td, [ca])]), { time: now });
    },
    200,
  );
  fuzz(
    'verifyX509Svid (mutated leaf)',
    fc.constant(null).chain(() => mutated([leaf.raw])),
    (der) => {
      const chain = X509Bundle.parseDer(td, der).authorities;
      verifyX509Svid(chain, new BundleSet([new X509Bundle(td, [ca])]), { time: now });
    },
    200,
  );
});
