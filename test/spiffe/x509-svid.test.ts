import type { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BundleSet } from '../../src/spiffe/bundle/bundle-set.js';
import { X509Bundle } from '../../src/spiffe/bundle/x509-bundle.js';
import type { SpiffeErrorCode } from '../../src/spiffe/errors.js';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { TrustDomain } from '../../src/spiffe/trust-domain.js';
import { mintX509Ca, mintX509Svid, type X509Issuer } from '../../src/spiffe/x509-mint.js';
import { X509Svid } from '../../src/spiffe/x509-svid.js';
import { verifyX509Svid } from '../../src/spiffe/x509-verify.js';
import { expectSpiffeError } from '../helpers/spiffe-errors.js';
import {
  caExtensions,
  craft,
  leafExtensions,
  opensslText,
  opensslVerify,
  p256,
  px,
  tempDir,
} from '../helpers/x509.js';

const td = TrustDomain.parse('example.org');
const otherTd = TrustDomain.parse('other.org');
const workload = SpiffeId.parse('spiffe://example.org/ns/prod/web');
const now = new Date();
const hourAgo = new Date(now.getTime() - 3_600_000);
const inADay = new Date(now.getTime() + 86_400_000);
const tmp = tempDir();
const pem = (name: string, certs: X509Certificate[]) =>
  tmp.write(name, certs.map((c) => c.toString()).join(''));

let rootKey: ReturnType<typeof p256>;
let root: X509Certificate;
let interKey: ReturnType<typeof p256>;
let inter: X509Certificate;
let interIssuer: X509Issuer;
let leafKey: ReturnType<typeof p256>;
let leaf: X509Certificate;
let bundles: BundleSet;

beforeAll(async () => {
  rootKey = p256();
  root = await mintX509Ca(
    { trustDomain: td, publicKey: rootKey.publicKey, notBefore: hourAgo, notAfter: inADay, pathLength: 1 },
    rootKey.signer,
  );
  interKey = p256();
  inter = await mintX509Ca(
    {
      trustDomain: td,
      publicKey: interKey.publicKey,
      notBefore: hourAgo,
      notAfter: inADay,
      subject: 'O=SPIFFE, CN=inter',
    },
    { certificate: root, signer: rootKey.signer },
  );
  interIssuer = { certificate: inter, signer: interKey.signer };
  leafKey = p256();
  leaf = await mintX509Svid(
    {
      spiffeId: workload,
      publicKey: leafKey.publicKey,
      notBefore: hourAgo,
      notAfter: inADay,
      dnsNames: ['web.example.org'],
    },
    interIssuer,
  );
  bundles = new BundleSet([new X509Bundle(td, [root])]);
});

afterAll(() => tmp.cleanup());

describe('mintX509Svid', () => {
  it('writes exactly the extensions X509-SVID requires of a leaf (openssl -text as oracle)', async () => {
    const text = await opensslText(pem('leaf.pem', [leaf]));
    const extensions = [...text.matchAll(/^ {12}(X509v3 [^:]+):( critical)? *$/gm)].map(
      (m) => `${m[1]}${m[2] ?? ''}`,
    );
    expect(extensions).toEqual([
      'X509v3 Basic Constraints critical',
      'X509v3 Key Usage critical',
      'X509v3 Extended Key Usage',
      'X509v3 Subject Alternative Name critical', // empty subject, so critical
      'X509v3 Subject Key Identifier',
      'X509v3 Authority Key Identifier',
    ]);
    expect(text).toMatch(/CA:FALSE/);
    expect(text).toMatch(/Key Usage: critical\n\s+Digital Signature\n/);
    expect(text).toMatch(/TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(text).toMatch(/URI:spiffe:\/\/example\.org\/ns\/prod\/web, DNS:web\.example\.org/);
    expect(text).toMatch(/Subject: *\n/);
  });

  it('is accepted by openssl verify through the intermediate', async () => {
    const result = await opensslVerify(pem('root.pem', [root]), pem('leaf.pem', [leaf]), {
      untrusted: pem('inter.pem', [inter]),
    });
    expect(result).toMatchObject({ ok: true });
  });

  it('copies the issuer’s own SKI into the AKI, even when the issuer was made elsewhere', async () => {
    const k = p256();
    const foreignSki = 'c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00';
    const external = await craft({
      subject: 'CN=external',
      publicKey: k.publicKey,
      selfKey: k.privateKey,
      extensions: [...caExtensions('spiffe://example.org'), new px.SubjectKeyIdentifierExtension(foreignSki)],
    });
    const svid = await mintX509Svid(
      { spiffeId: workload, publicKey: leafKey.publicKey, notBefore: hourAgo, notAfter: inADay },
      { certificate: external, signer: k.signer },
    );
    const text = await opensslText(pem('aki.pem', [svid]));
    expect(text).toMatch(/Authority Key Identifier: *\n\s+(keyid:)?C0:FF:EE:00:C0:FF/);
    expect((await opensslVerify(pem('ext.pem', [external]), pem('aki.pem', [svid]))).ok).toBe(true);
  });

  it('refuses to issue for an ID over 2048 bytes (ID-18)', async () => {
    const long = SpiffeId.parse(`spiffe://example.org/${'a'.repeat(2100)}`);
    const err = await mintX509Svid(
      { spiffeId: long, publicKey: leafKey.publicKey, notBefore: now, notAfter: inADay },
      interIssuer,
    ).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_SPIFFEID_TOO_LONG', message: expect.stringMatching(/§2\.3/) });
  });

  it('refuses a trust-domain ID without path (X-3)', async () => {
    const err = await mintX509Svid(
      {
        spiffeId: SpiffeId.parse('spiffe://example.org'),
        publicKey: leafKey.publicKey,
        notBefore: now,
        notAfter: inADay,
      },
      interIssuer,
    ).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_X509SVID_ROOT_PATH', message: expect.stringMatching(/§3\.1/) });
  });
});

describe('mintX509Ca', () => {
  it('writes a signing certificate per X509-SVID §3.2/§4 (openssl -text as oracle)', async () => {
    const key = p256();
    const ca = await mintX509Ca(
      {
        trustDomain: td,
        publicKey: key.publicKey,
        notBefore: now,
        notAfter: inADay,
        pathLength: 0,
        permittedTrustDomains: [td],
      },
      key.signer,
    );
    const text = await opensslText(tmp.write('ca.pem', ca.toString()));
    expect(text).toMatch(/Basic Constraints: critical\n\s+CA:TRUE, pathlen:0/);
    expect(text).toMatch(/Key Usage: critical\n\s+Certificate Sign, CRL Sign\n/); // no Digital Signature (X-16a)
    expect(text).toMatch(/Subject Alternative Name: \n\s+URI:spiffe:\/\/example\.org\n/);
    expect(text).toMatch(/Name Constraints: critical\n\s+Permitted:\n\s+URI:example\.org/);
    expect(text).not.toMatch(/Extended Key Usage/);
    expect(text).toMatch(/Subject: O = SPIFFE, CN = example\.org/);
  });

  it.each(['RS256', 'PS256', 'ES384'] as const)(
    'signs through a %s Signer that openssl accepts',
    async (alg) => {
      const { privateKey, publicKey } =
        alg === 'ES384'
          ? newKeyPair('ec', { namedCurve: 'P-384' })
          : newKeyPair('rsa', { modulusLength: 2048 });
      const signer = createKeySigner(privateKey, alg);
      const ca = await mintX509Ca(
        { trustDomain: td, publicKey, notBefore: hourAgo, notAfter: inADay },
        signer,
      );
      const svid = await mintX509Svid(
        { spiffeId: workload, publicKey: leafKey.publicKey, notBefore: hourAgo, notAfter: inADay },
        { certificate: ca, signer },
      );
      const result = await opensslVerify(
        tmp.write(`ca-${alg}.pem`, ca.toString()),
        tmp.write(`l-${alg}.pem`, svid.toString()),
      );
      expect(result).toMatchObject({ ok: true });
      expect(verifyX509Svid([svid], new BundleSet([new X509Bundle(td, [ca])])).id.equals(workload)).toBe(
        true,
      );
    },
  );

  it('refuses to self-sign a key other than the signer’s', async () => {
    await expect(
      mintX509Ca(
        { trustDomain: td, publicKey: p256().publicKey, notBefore: now, notAfter: inADay },
        rootKey.signer,
      ),
    ).rejects.toThrow(TypeError);
  });
});

describe('verifyX509Svid accepts', () => {
  it('a valid chain and returns the ID and the path to the root', () => {
    const result = verifyX509Svid([leaf, inter], bundles, { time: now });
    expect(result.id.toString()).toBe('spiffe://example.org/ns/prod/web');
    expect(result.chain.map((c) => c.subject)).toEqual([leaf.subject, inter.subject, root.subject]);
  });

  it('a leaf signed directly by the root', async () => {
    const direct = await mintX509Svid(
      { spiffeId: workload, publicKey: leafKey.publicKey, notBefore: hourAgo, notAfter: inADay },
      { certificate: root, signer: rootKey.signer },
    );
    expect(verifyX509Svid([direct], bundles).chain).toHaveLength(2);
  });
});

/** A leaf crafted under the intermediate with the given extensions. */
async function craftLeaf(
  extensions: px.Extension[],
  subject = '',
  dates: { notBefore?: Date; notAfter?: Date } = {},
) {
  return craft({
    subject,
    publicKey: leafKey.publicKey,
    issuer: { cert: inter, key: interKey.privateKey },
    extensions,
    ...dates,
  });
}

describe('verifyX509Svid rejects (each with its own code, openssl agreeing where it checks the rule)', () => {
  const uri = workload.toString();

  it('an empty chain', () => {
    expectSpiffeError(() => verifyX509Svid([], bundles), 'ERR_X509SVID_NO_CERTIFICATES', /no certificates/);
  });

  const leafCases: [string, () => px.Extension[], SpiffeErrorCode, RegExp][] = [
    [
      'no URI SAN (X-1)',
      () =>
        leafExtensions(uri, {
          san: new px.SubjectAlternativeNameExtension([{ type: 'dns', value: 'a.b' }], true),
        }),
      'ERR_X509SVID_NO_URI_SAN',
      /§2 requires exactly one URI SAN/,
    ],
    [
      'two URI SANs (X-2, X-24)',
      () =>
        leafExtensions(uri, {
          san: new px.SubjectAlternativeNameExtension(
            [
              { type: 'url', value: uri },
              { type: 'url', value: `${uri}2` },
            ],
            true,
          ),
        }),
      'ERR_X509SVID_MULTIPLE_URI_SANS',
      /2 URI SANs; X509-SVID §2/,
    ],
    [
      'a non-spiffe URI (X-22)',
      () => leafExtensions('https://example.org/web'),
      'ERR_SPIFFEID_WRONG_SCHEME',
      /scheme "spiffe"/,
    ],
    [
      'a root-path ID (X-23)',
      () => leafExtensions('spiffe://example.org'),
      'ERR_X509SVID_ROOT_PATH',
      /non-root path/,
    ],
    [
      'cA=true (X-20)',
      () => leafExtensions(uri, { bc: new px.BasicConstraintsExtension(true, undefined, true) }),
      'ERR_X509SVID_LEAF_IS_CA',
      /cA=false/,
    ],
    [
      'keyCertSign (X-21)',
      () =>
        leafExtensions(uri, {
          ku: new px.KeyUsagesExtension(
            px.KeyUsageFlags.digitalSignature | px.KeyUsageFlags.keyCertSign,
            true,
          ),
        }),
      'ERR_X509SVID_LEAF_KEY_CERT_SIGN',
      /keyCertSign; X509-SVID §4\.3/,
    ],
    [
      'cRLSign (X-21)',
      () =>
        leafExtensions(uri, {
          ku: new px.KeyUsagesExtension(px.KeyUsageFlags.digitalSignature | px.KeyUsageFlags.cRLSign, true),
        }),
      'ERR_X509SVID_LEAF_CRL_SIGN',
      /cRLSign/,
    ],
    [
      'no digitalSignature (X-15)',
      () => leafExtensions(uri, { ku: new px.KeyUsagesExtension(px.KeyUsageFlags.keyEncipherment, true) }),
      'ERR_X509SVID_LEAF_NO_DIGITAL_SIGNATURE',
      /digitalSignature/,
    ],
    [
      'no keyUsage (X-12)',
      () => leafExtensions(uri, { ku: null }),
      'ERR_X509SVID_NO_KEY_USAGE',
      /§4\.3 requires it on every SVID/,
    ],
    [
      'a non-critical keyUsage (X-13)',
      () => leafExtensions(uri, { ku: new px.KeyUsagesExtension(px.KeyUsageFlags.digitalSignature, false) }),
      'ERR_X509SVID_KEY_USAGE_NOT_CRITICAL',
      /critical/,
    ],
    [
      'EKU without clientAuth (X-18)',
      () => leafExtensions(uri, { eku: new px.ExtendedKeyUsageExtension([px.ExtendedKeyUsage.serverAuth]) }),
      'ERR_X509SVID_EKU_MISSING_AUTH',
      /serverAuth and clientAuth/,
    ],
    [
      'empty subject with non-critical SAN (X-4)',
      () =>
        leafExtensions(uri, {
          san: new px.SubjectAlternativeNameExtension([{ type: 'url', value: uri }], false),
        }),
      'ERR_X509SVID_SAN_NOT_CRITICAL',
      /RFC 5280 §4\.1\.2\.6/,
    ],
    [
      'an unknown critical extension',
      () => [...leafExtensions(uri), new px.Extension('1.2.3.4.5', true, new Uint8Array([5, 0]))],
      'ERR_X509SVID_UNKNOWN_CRITICAL_EXTENSION',
      /1\.2\.3\.4\.5.*RFC 5280/,
    ],
  ];
  it.each(leafCases)('a leaf with %s', async (_name, extensions, code, rule) => {
    const bad = await craftLeaf(extensions());
    expectSpiffeError(() => verifyX509Svid([bad, inter], bundles), code, rule);
  });

  it('a leaf with EKU absent is accepted (X-17 is a SHOULD)', async () => {
    const ok = await craftLeaf(leafExtensions(uri, { eku: null }));
    expect(verifyX509Svid([ok, inter], bundles).id.equals(workload)).toBe(true);
  });

  it('a peer whose trust domain has no bundle (X-25), even if another bundle holds its root', async () => {
    const foreign = await mintX509Svid(
      {
        spiffeId: SpiffeId.parse('spiffe://other.org/x'),
        publicKey: leafKey.publicKey,
        notBefore: hourAgo,
        notAfter: inADay,
      },
      interIssuer,
    );
    expectSpiffeError(
      () => verifyX509Svid([foreign, inter], bundles),
      'ERR_X509SVID_NO_BUNDLE',
      /"other\.org"/,
    );
    // The other trust domain's bundle must not vouch for example.org's roots (F-8): no merging.
    const onlyOther = new BundleSet([new X509Bundle(otherTd, [root])]);
    expectSpiffeError(
      () => verifyX509Svid([leaf, inter], onlyOther),
      'ERR_X509SVID_NO_BUNDLE',
      /"example\.org"/,
    );
  });

  it('a chain to a root outside the bundle', async () => {
    const strangerKey = p256();
    const stranger = await mintX509Ca(
      {
        trustDomain: td,
        publicKey: strangerKey.publicKey,
        notBefore: hourAgo,
        notAfter: inADay,
        subject: 'CN=stranger',
      },
      strangerKey.signer,
    );
    const svid = await mintX509Svid(
      { spiffeId: workload, publicKey: leafKey.publicKey, notBefore: hourAgo, notAfter: inADay },
      { certificate: stranger, signer: strangerKey.signer },
    );
    expectSpiffeError(() => verifyX509Svid([svid], bundles), 'ERR_X509SVID_UNTRUSTED', /untrusted/);
    expect((await opensslVerify(pem('r.pem', [root]), pem('s.pem', [svid]))).ok).toBe(false);
  });

  it('a forged signature (same issuer name, other key)', async () => {
    const forger = p256();
    const forged = await craft({
      subject: '',
      publicKey: leafKey.publicKey,
      issuer: { cert: inter, key: forger.privateKey },
      extensions: leafExtensions(uri),
    });
    expectSpiffeError(
      () => verifyX509Svid([forged, inter], bundles),
      'ERR_X509SVID_BAD_SIGNATURE',
      /does not verify/,
    );
    const oracle = await opensslVerify(pem('r.pem', [root]), pem('f.pem', [forged]), {
      untrusted: pem('i.pem', [inter]),
    });
    expect(oracle.ok).toBe(false);
  });

  it('an expired leaf, and a leaf not yet valid, at the injected time', async () => {
    const text = pem('l.pem', [leaf]);
    const later = new Date(inADay.getTime() + 1000);
    expectSpiffeError(
      () => verifyX509Svid([leaf, inter], bundles, { time: later }),
      'ERR_X509SVID_EXPIRED',
      /leaf certificate expired/,
    );
    expect(
      (await opensslVerify(pem('r.pem', [root]), text, { untrusted: pem('i.pem', [inter]), at: later }))
        .output,
    ).toMatch(/expired/);
    const future = await craftLeaf(leafExtensions(uri), '', {
      notBefore: new Date(now.getTime() + 600_000),
      notAfter: inADay,
    });
    expectSpiffeError(
      () => verifyX509Svid([future, inter], bundles, { time: now }),
      'ERR_X509SVID_NOT_YET_VALID',
      /not valid until/,
    );
  });

  it('an intermediate without cA=true, or without keyCertSign, or with a path in its ID', async () => {
    const cases: [px.Extension[], SpiffeErrorCode, RegExp][] = [
      [
        caExtensions('spiffe://example.org', {
          bc: new px.BasicConstraintsExtension(false, undefined, true),
        }),
        'ERR_X509SVID_CA_NOT_CA',
        /cA=true/,
      ],
      [
        caExtensions('spiffe://example.org', {
          ku: new px.KeyUsagesExtension(px.KeyUsageFlags.cRLSign, true),
        }),
        'ERR_X509SVID_CA_NO_KEY_CERT_SIGN',
        /keyCertSign/,
      ],
      [caExtensions('spiffe://example.org/ca'), 'ERR_X509SVID_CA_ID_HAS_PATH', /§3\.2 forbids a path/],
    ];
    for (const [extensions, code, rule] of cases) {
      const k = p256();
      const badInter = await craft({
        subject: 'CN=bad-inter',
        publicKey: k.publicKey,
        issuer: { cert: root, key: rootKey.privateKey },
        extensions,
      });
      const svid = await mintX509Svid(
        { spiffeId: workload, publicKey: leafKey.publicKey, notBefore: hourAgo, notAfter: inADay },
        { certificate: badInter, signer: k.signer },
      );
      expectSpiffeError(() => verifyX509Svid([svid, badInter], bundles), code, rule);
    }
  });

  it('a chain longer than the root’s pathLenConstraint', async () => {
    // root allows 1 intermediate; add a second one below the first.
    const k2 = p256();
    const inter2 = await mintX509Ca(
      {
        trustDomain: td,
        publicKey: k2.publicKey,
        notBefore: hourAgo,
        notAfter: inADay,
        subject: 'CN=inter2',
      },
      interIssuer,
    );
    const deep = await mintX509Svid(
      { spiffeId: workload, publicKey: leafKey.publicKey, notBefore: hourAgo, notAfter: inADay },
      { certificate: inter2, signer: k2.signer },
    );
    expectSpiffeError(
      () => verifyX509Svid([deep, inter2, inter], bundles),
      'ERR_X509SVID_PATH_LENGTH',
      /pathLenConstraint/,
    );
    const oracle = await opensslVerify(pem('r.pem', [root]), pem('d.pem', [deep]), {
      untrusted: pem('u.pem', [inter2, inter]),
    });
    expect(oracle.output).toMatch(/path length/);
  });

  it('a leaf outside the root’s URI name constraints (X-11)', async () => {
    const k = p256();
    const constrained = await mintX509Ca(
      {
        trustDomain: td,
        publicKey: k.publicKey,
        notBefore: hourAgo,
        notAfter: inADay,
        permittedTrustDomains: [otherTd],
        subject: 'CN=constrained',
      },
      k.signer,
    );
    const svid = await mintX509Svid(
      { spiffeId: workload, publicKey: leafKey.publicKey, notBefore: hourAgo, notAfter: inADay },
      { certificate: constrained, signer: k.signer },
    );
    const set = new BundleSet([new X509Bundle(td, [constrained])]);
    expectSpiffeError(
      () => verifyX509Svid([svid], set),
      'ERR_X509SVID_NAME_CONSTRAINTS',
      /outside the name constraints/,
    );
    const oracle = await opensslVerify(
      tmp.write('c.pem', constrained.toString()),
      tmp.write('cs.pem', svid.toString()),
    );
    expect(oracle.output).toMatch(/name constraints|permitted subtree/i);
    // And inside them it passes.
    const ok = await mintX509Ca(
      {
        trustDomain: td,
        publicKey: k.publicKey,
        notBefore: hourAgo,
        notAfter: inADay,
        permittedTrustDomains: [td],
        subject: 'CN=constrained',
      },
      k.signer,
    );
    const okSvid = await mintX509Svid(
      { spiffeId: workload, publicKey: leafKey.publicKey, notBefore: hourAgo, notAfter: inADay },
      { certificate: ok, signer: k.signer },
    );
    expect(verifyX509Svid([okSvid], new BundleSet([new X509Bundle(td, [ok])])).id.equals(workload)).toBe(
      true,
    );
  });

  it('any chain once the trust domain revoked its keys (empty bundle, B-10)', () => {
    const revoked = new BundleSet([new X509Bundle(td, [])]);
    expectSpiffeError(() => verifyX509Svid([leaf, inter], revoked), 'ERR_X509SVID_UNTRUSTED', /untrusted/);
  });
});

describe('X509Svid (a workload’s own SVID)', () => {
  it('round-trips the Workload API DER form and PEM', () => {
    const svid = X509Svid.fromParts([leaf, inter], leafKey.privateKey);
    const der = svid.marshalDer();
    const back = X509Svid.parseDer(der.certificates, der.privateKey);
    expect(back.id.equals(workload)).toBe(true);
    expect(back.certificates.map((c) => c.fingerprint256)).toEqual([
      leaf.fingerprint256,
      inter.fingerprint256,
    ]);
    const p = svid.marshalPem();
    expect(X509Svid.parsePem(p.certificates, p.privateKey).id.equals(workload)).toBe(true);
  });

  it('rejects a key that is not the leaf’s', () => {
    expectSpiffeError(
      () => X509Svid.fromParts([leaf, inter], p256().privateKey),
      'ERR_X509SVID_KEY_MISMATCH',
      /does not match the leaf/,
    );
  });

  it('rejects an unreadable key and non-DER certificates', () => {
    const der = X509Svid.fromParts([leaf], leafKey.privateKey).marshalDer();
    expectSpiffeError(
      () => X509Svid.parseDer(der.certificates, new Uint8Array([1, 2, 3])),
      'ERR_X509SVID_BAD_PRIVATE_KEY',
      /PKCS#8/,
    );
    expectSpiffeError(
      () => X509Svid.parseDer(Buffer.from(leaf.toString()), der.privateKey),
      'ERR_X509SVID_PARSE',
      /not PEM/,
    );
  });

  it('rejects a chain out of order', () => {
    expectSpiffeError(
      () => X509Svid.fromParts([leaf, root, inter], leafKey.privateKey),
      'ERR_X509SVID_BAD_SIGNATURE',
      /leaf first/,
    );
  });

  it('applies the leaf rules (root path, X-3)', async () => {
    const bad = await craftLeaf(leafExtensions('spiffe://example.org'));
    expectSpiffeError(
      () => X509Svid.fromParts([bad, inter], leafKey.privateKey),
      'ERR_X509SVID_ROOT_PATH',
      /§3\.1/,
    );
  });
});
