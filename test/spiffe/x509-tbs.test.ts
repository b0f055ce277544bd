/**
 * X.509-SVIDs encoded from the per-issuer template (src/spiffe/x509-tbs.ts) against the same
 * certificates built by @peculiar/x509's generator, the way mintX509Svid built them before: the
 * TBSCertificate must be identical field by field and byte for byte (ECDSA and PSS signatures differ
 * from run to run; RS256 ones do not, so those certificates are compared whole). Minted SVIDs are
 * also checked by `openssl verify -x509_strict` against their root.
 */
import { createPrivateKey, createPublicKey, type KeyObject, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KeyManager, Pkcs11KeyManager, parsePkcs11Uri } from '../../src/hsm/index.js';
import { splitDer } from '../../src/spiffe/der.js';
import { signatureValue, subjectPublicKeyInfo } from '../../src/spiffe/der-writer.js';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import type { Signer, SigningAlgorithm } from '../../src/spiffe/signer.js';
import { signerWebCrypto, signingParams } from '../../src/spiffe/signer-crypto.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { TrustDomain } from '../../src/spiffe/trust-domain.js';
import { keyIdentifier, spkiKeyIdentifier } from '../../src/spiffe/x509-extensions.js';
import {
  mintX509Ca,
  mintX509Svid,
  mintX509SvidDer,
  type X509Issuer,
  type X509SvidTemplate,
} from '../../src/spiffe/x509-mint.js';
import { derTime } from '../../src/spiffe/x509-tbs.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';
import { opensslCert, opensslVerify, px, tempDir } from '../helpers/x509.js';

const td = TrustDomain.parse('example.org');
const tmp = tempDir();
const notBefore = new Date('2026-03-01T10:00:00Z');
const hour = 3_600_000;

/** The generator path mintX509Svid used before the template: kept here only as the reference. */
async function referenceSvid(t: X509SvidTemplate & { serialNumber: string }, issuer: X509Issuer) {
  const subject = t.subject ?? '';
  const spki = new Uint8Array(t.publicKey.export({ type: 'spki', format: 'der' }));
  const issuerCert = new px.X509Certificate(issuer.certificate.raw);
  const names: px.JsonGeneralName[] = [
    { type: 'url', value: t.spiffeId.toString() },
    ...(t.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
  ];
  const { crypto, key } = signerWebCrypto(issuer.signer);
  const generated = await px.X509CertificateGenerator.create(
    {
      serialNumber: t.serialNumber,
      subject: new px.Name(subject),
      issuer: issuerCert.subjectName,
      notBefore: t.notBefore,
      notAfter: t.notAfter,
      publicKey: spki,
      signingKey: key,
      signingAlgorithm: signingParams(issuer.signer),
      extensions: [
        new px.BasicConstraintsExtension(false, undefined, true),
        new px.KeyUsagesExtension(px.KeyUsageFlags.digitalSignature, true),
        new px.ExtendedKeyUsageExtension([px.ExtendedKeyUsage.serverAuth, px.ExtendedKeyUsage.clientAuth]),
        new px.SubjectAlternativeNameExtension(names, subject === ''),
        new px.SubjectKeyIdentifierExtension(spkiKeyIdentifier(spki)),
        new px.AuthorityKeyIdentifierExtension(
          issuerCert.getExtension(px.SubjectKeyIdentifierExtension)?.keyId ??
            keyIdentifier(issuer.signer.publicKey),
        ),
      ],
    },
    crypto,
  );
  return new Uint8Array(generated.rawData);
}

const hex = (bytes: Uint8Array | undefined) => Buffer.from(bytes ?? new Uint8Array()).toString('hex');

const contentOf = (tlv: Uint8Array) => tlv.subarray((tlv[1] ?? 0) < 0x80 ? 2 : 2 + ((tlv[1] ?? 0) & 0x7f));

/** The TBSCertificate of a DER certificate and its signatureAlgorithm. */
function parts(der: Uint8Array): { tbs: Uint8Array; signatureAlgorithm: Uint8Array } {
  const [tbs, signatureAlgorithm] = splitDer(contentOf(der)) ?? [];
  if (tbs === undefined || signatureAlgorithm === undefined) throw new Error('not a certificate');
  return { tbs, signatureAlgorithm };
}

const FIELDS = [
  'version',
  'serialNumber',
  'signature',
  'issuer',
  'validity',
  'subject',
  'spki',
  'extensions',
];

/** Compares two TBSCertificates field by field (each extension on its own), then whole. */
function expectSameTbs(actualCert: Uint8Array, expectedCert: Uint8Array): void {
  const actual = parts(actualCert);
  const expected = parts(expectedCert);
  const a = splitDer(contentOf(actual.tbs)) ?? [];
  const e = splitDer(contentOf(expected.tbs)) ?? [];
  expect(a.length, 'number of TBSCertificate fields').toBe(e.length);
  FIELDS.forEach((name, i) => {
    if (name === 'extensions') {
      const extsOf = (f: Uint8Array | undefined) =>
        splitDer(contentOf(contentOf(f ?? new Uint8Array()))) ?? [];
      const ax = extsOf(a[i]);
      const ex = extsOf(e[i]);
      expect(ax.length, 'number of extensions').toBe(ex.length);
      ex.forEach((ext, j) => {
        expect(hex(ax[j]), `extension ${j} (${hex(splitDer(contentOf(ext))?.[0])})`).toBe(hex(ext));
      });
    }
    expect(hex(a[i]), `TBSCertificate field ${name}`).toBe(hex(e[i]));
  });
  expect(hex(actual.tbs), 'whole TBSCertificate').toBe(hex(expected.tbs));
  expect(hex(actual.signatureAlgorithm), 'signatureAlgorithm').toBe(hex(expected.signatureAlgorithm));
}

interface Ca {
  name: string;
  issuer: X509Issuer;
  rootPem: string;
}

async function selfSignedCa(name: string, signer: Signer): Promise<Ca> {
  const certificate = await mintX509Ca(
    { trustDomain: td, publicKey: signer.publicKey, notBefore, notAfter: new Date('2060-01-01T00:00:00Z') },
    signer,
  );
  return { name, issuer: { certificate, signer }, rootPem: tmp.write(`${name}.pem`, certificate.toString()) };
}

/** Mints with the template and with the reference; compares; and has openssl verify the new one. */
async function mintBothWays(ca: Ca, template: X509SvidTemplate & { serialNumber: string }) {
  const minted = await mintX509Svid(template, ca.issuer);
  const reference = await referenceSvid(template, ca.issuer);
  expectSameTbs(minted.raw, reference);
  if (ca.issuer.signer.algorithm.startsWith('RS')) {
    // PKCS#1 v1.5 signatures are deterministic: the certificates must be identical as a whole.
    expect(hex(minted.raw), 'whole certificate (RS256)').toBe(hex(reference));
  }
  return minted;
}

const ecKey = (namedCurve: string) => newKeyPair('ec', { namedCurve });
const rsaKey = (modulusLength: number) => newKeyPair('rsa', { modulusLength });
const idOfLength = (length: number) => SpiffeId.parse(`spiffe://example.org/${'a'.repeat(length - 21)}`);

let cas: Ca[];
let rsaPrivate: KeyObject;
const subjectKeys: Record<string, KeyObject> = {};

beforeAll(async () => {
  const rsa = rsaKey(2048);
  rsaPrivate = rsa.privateKey;
  cas = await Promise.all([
    selfSignedCa('es256', createKeySigner(ecKey('P-256').privateKey)),
    selfSignedCa('es384', createKeySigner(ecKey('P-384').privateKey)),
    selfSignedCa('rs256', createKeySigner(rsa.privateKey, 'RS256')),
  ]);
  subjectKeys['EC P-256'] = ecKey('P-256').publicKey;
  subjectKeys['EC P-384'] = ecKey('P-384').publicKey;
  subjectKeys['EC P-521'] = ecKey('P-521').publicKey;
  subjectKeys['RSA 2048'] = rsa.publicKey;
  subjectKeys['RSA 3072'] = rsaKey(3072).publicKey;
}, 60_000);

afterAll(() => tmp.cleanup());

const caNamed = (name: string): Ca => {
  const ca = cas.find((c) => c.name === name);
  if (ca === undefined) throw new Error(`no CA ${name}`);
  return ca;
};

describe('X.509-SVID from the issuer template, against @peculiar/x509', () => {
  it.each(['es256', 'es384', 'rs256'])(
    '%s CA: same TBSCertificate for EC P-256/P-384/P-521 and RSA subject keys, and openssl verifies each',
    async (caName) => {
      const ca = caNamed(caName);
      for (const [keyName, publicKey] of Object.entries(subjectKeys)) {
        const svid = await mintBothWays(ca, {
          spiffeId: SpiffeId.parse(`spiffe://example.org/ns/prod/sa/${keyName.replace(/ /g, '-')}`),
          publicKey,
          notBefore,
          notAfter: new Date(notBefore.getTime() + hour),
          serialNumber: '3a7f09c2d4e5f60718293a4b5c6d7e8f',
        });
        const leaf = tmp.write(`${caName}-${keyName}.pem`, svid.toString());
        const verdict = await opensslVerify(ca.rootPem, leaf, { at: new Date(notBefore.getTime() + 60_000) });
        expect(verdict.output, `${caName} CA, ${keyName} subject`).toContain(': OK');
        expect(verdict.ok).toBe(true);
      }
    },
    60_000,
  );

  it('SPIFFE IDs whose SAN crosses the 127 and 255 byte DER length boundaries, up to the 2048-byte limit', async () => {
    const ca = caNamed('es256');
    for (const length of [100, 125, 126, 127, 128, 129, 253, 254, 255, 256, 257, 1000, 2048]) {
      await mintBothWays(ca, {
        spiffeId: idOfLength(length),
        publicKey: subjectKeys['EC P-256'] as KeyObject,
        notBefore,
        notAfter: new Date(notBefore.getTime() + hour),
        serialNumber: '01',
      });
    }
  });

  it('DNS names: one, several, and enough that the SAN, the extensions and the TBS pass 65535 bytes', async () => {
    const ca = caNamed('rs256');
    const many = Array.from(
      { length: 1100 },
      (_, i) => `${String(i).padStart(4, '0')}.${'d'.repeat(54)}.example.org`,
    );
    for (const dnsNames of [['web.example.org'], ['a.example.org', 'b.example.org', 'c.example.org'], many]) {
      const svid = await mintBothWays(ca, {
        spiffeId: idOfLength(300),
        publicKey: subjectKeys['RSA 2048'] as KeyObject,
        notBefore,
        notAfter: new Date(notBefore.getTime() + hour),
        dnsNames,
        serialNumber: 'ff',
      });
      expect(svid.subjectAltName?.split(', ').filter((n) => n.startsWith('DNS:'))).toHaveLength(
        dnsNames.length,
      );
    }
    const big = await mintX509Svid(
      {
        spiffeId: idOfLength(2048),
        publicKey: subjectKeys['EC P-256'] as KeyObject,
        notBefore,
        notAfter: new Date(notBefore.getTime() + hour),
        dnsNames: many,
      },
      ca.issuer,
    );
    // Long form with three length bytes: past 65535.
    expect(big.raw.subarray(0, 2)).toEqual(Buffer.from([0x30, 0x83]));
    const verdict = await opensslVerify(ca.rootPem, tmp.write('big.pem', big.toString()), {
      at: new Date(notBefore.getTime() + 60_000),
    });
    expect(verdict.output).toContain(': OK');
  });

  it('validity: TTLs from one second to decades, milliseconds dropped, UTCTime to 2049 and GeneralizedTime from 2050', async () => {
    const ca = caNamed('es384');
    const cases: [Date, Date][] = [
      [notBefore, new Date(notBefore.getTime() + 1000)],
      [notBefore, new Date(notBefore.getTime() + hour)],
      [new Date('2026-03-01T10:00:00.999Z'), new Date('2026-03-02T10:00:00.001Z')],
      [notBefore, new Date('2031-03-01T10:00:00Z')],
      [new Date('2049-12-31T23:59:59Z'), new Date('2050-01-01T00:00:00Z')],
      [new Date('2050-06-01T00:00:00Z'), new Date('2059-12-31T23:59:59Z')],
    ];
    for (const [from, to] of cases) {
      await mintBothWays(ca, {
        spiffeId: SpiffeId.parse('spiffe://example.org/ttl'),
        publicKey: subjectKeys['EC P-384'] as KeyObject,
        notBefore: from,
        notAfter: to,
        serialNumber: '7f',
      });
    }
    expect(hex(derTime(new Date('2049-12-31T23:59:59.500Z')))).toBe(
      hex(Buffer.from('\x17\x0d491231235959Z', 'latin1')),
    );
    expect(hex(derTime(new Date('2050-01-01T00:00:00Z')))).toBe(
      hex(Buffer.from('\x18\x0f20500101000000Z', 'latin1')),
    );
  });

  it('serial numbers with leading zeros and with the top bit set, and a subject (the SAN is then not critical)', async () => {
    const ca = caNamed('es256');
    for (const serialNumber of [
      '00000a',
      '80',
      'ff00ff00ff00ff00ff00ff00ff00ff00',
      '0080',
      '7fffffffffffffffffff',
    ]) {
      await mintBothWays(ca, {
        spiffeId: SpiffeId.parse('spiffe://example.org/serial'),
        publicKey: subjectKeys['EC P-256'] as KeyObject,
        notBefore,
        notAfter: new Date(notBefore.getTime() + hour),
        serialNumber,
      });
    }
    const withSubject = await mintBothWays(ca, {
      spiffeId: SpiffeId.parse('spiffe://example.org/named'),
      publicKey: subjectKeys['RSA 3072'] as KeyObject,
      notBefore,
      notAfter: new Date(notBefore.getTime() + hour),
      subject: 'O=SPIFFE, CN=web',
      serialNumber: '42',
    });
    expect(withSubject.subject).toBe('O=SPIFFE\nCN=web');
  });

  it('every signing algorithm a Signer may have: RS384/RS512 and PS256/PS384/PS512 CAs', async () => {
    const algorithms: SigningAlgorithm[] = ['RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
    for (const algorithm of algorithms) {
      const ca = await selfSignedCa(algorithm, createKeySigner(rsaPrivate, algorithm));
      const svid = await mintBothWays(ca, {
        spiffeId: SpiffeId.parse(`spiffe://example.org/${algorithm}`),
        publicKey: subjectKeys['EC P-256'] as KeyObject,
        notBefore,
        notAfter: new Date(notBefore.getTime() + hour),
        serialNumber: '0b',
      });
      const verdict = await opensslVerify(ca.rootPem, tmp.write(`${algorithm}-leaf.pem`, svid.toString()), {
        at: new Date(notBefore.getTime() + 60_000),
      });
      expect(verdict.output, algorithm).toContain(': OK');
    }
  }, 60_000);

  it('an issuer made by openssl: its subject is copied as encoded, and without an SKI the AKI is computed', async () => {
    for (const [name, extensions] of [
      ['with-ski', ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign']],
      [
        'without-ski',
        [
          'basicConstraints=critical,CA:TRUE',
          'keyUsage=critical,keyCertSign,cRLSign',
          'subjectKeyIdentifier=none',
          'authorityKeyIdentifier=none',
        ],
      ],
    ] as const) {
      const cert = join(tmp.dir, `${name}.crt`);
      const key = join(tmp.dir, `${name}.key`);
      await opensslCert({ cert, key, subject: '/C=DE/O=Open SSL/OU=unit/CN=External CA', extensions });
      const certificate = new X509Certificate(await readFile(cert));
      const signer = createKeySigner(createPrivateKey(await readFile(key, 'utf8')));
      const ca = { name, issuer: { certificate, signer }, rootPem: cert };
      const svid = await mintBothWays(ca, {
        spiffeId: SpiffeId.parse('spiffe://example.org/external'),
        publicKey: subjectKeys['EC P-256'] as KeyObject,
        notBefore: new Date(Date.now() - 60_000),
        notAfter: new Date(Date.now() + hour),
        serialNumber: '0c',
      });
      expect(svid.checkIssued(certificate), name).toBe(true);
      expect(svid.verify(certificate.publicKey), name).toBe(true);
      if (name === 'with-ski') {
        // openssl -x509_strict refuses any CA without an SKI, so only this issuer goes through it.
        const verdict = await opensslVerify(cert, tmp.write(`${name}-leaf.pem`, svid.toString()));
        expect(verdict.output, name).toContain(': OK');
      }
    }
  });
});

describe('X.509-SVID from the template, CA key on SoftHSM2', () => {
  let hsm: SoftHsm;
  let keys: KeyManager;
  beforeAll(async () => {
    hsm = await createSoftHsm('tbs');
    keys = await Pkcs11KeyManager.open(parsePkcs11Uri(hsm.uri()));
  });
  afterAll(async () => {
    await keys?.close();
    await hsm?.cleanup();
  });

  it.each([
    ['ec-p256', 'ES256'],
    ['ec-p384', 'ES384'],
    ['rsa-2048', 'RS256'],
  ] as const)(
    '%s key signing %s through the key manager: same TBSCertificate, and openssl verifies',
    async (type, alg) => {
      await keys.generateKey(`ca-${type}`, type);
      const ca = await selfSignedCa(`hsm-${type}`, await keys.signer(`ca-${type}`, alg));
      const svid = await mintBothWays(ca, {
        spiffeId: idOfLength(130),
        publicKey: subjectKeys['EC P-256'] as KeyObject,
        notBefore,
        notAfter: new Date(notBefore.getTime() + hour),
        dnsNames: ['hsm.example.org'],
        serialNumber: '5e',
      });
      const verdict = await opensslVerify(ca.rootPem, tmp.write(`hsm-${type}-leaf.pem`, svid.toString()), {
        at: new Date(notBefore.getTime() + 60_000),
      });
      expect(verdict.output).toContain(': OK');
    },
    60_000,
  );
});

describe('DER pieces', () => {
  it('ECDSA r‖s becomes the same ECDSA-Sig-Value as @peculiar/x509 writes, for leading zeros and top bits', () => {
    const formatter = new px.AsnEcSignatureFormatter();
    for (const [curve, size] of [
      ['P-256', 32],
      ['P-384', 48],
    ] as const) {
      const halves = [
        Buffer.alloc(size, 0x01),
        Buffer.alloc(size, 0xff),
        Buffer.concat([Buffer.alloc(3), Buffer.alloc(size - 3, 0x80)]),
        Buffer.concat([Buffer.alloc(1), Buffer.alloc(size - 1, 0x7f)]),
        Buffer.concat([Buffer.alloc(size - 1), Buffer.of(0x05)]),
      ];
      for (const r of halves) {
        for (const s of halves) {
          const rs = Buffer.concat([r, s]);
          const expected = formatter.toAsnSignature(
            { name: 'ECDSA', namedCurve: curve } as Parameters<typeof formatter.toAsnSignature>[0],
            rs,
          );
          expect(hex(signatureValue(size === 32 ? 'ES256' : 'ES384', rs)), `${curve} ${hex(rs)}`).toBe(
            hex(new Uint8Array(expected ?? new ArrayBuffer(0))),
          );
        }
      }
    }
    expect(() => signatureValue('ES256', new Uint8Array(63))).toThrow(/63 bytes/);
  });

  it('SubjectPublicKeyInfo from the JWK form equals OpenSSL’s encoding; a compressed EC point is written uncompressed', () => {
    for (const [name, key] of Object.entries(subjectKeys)) {
      expect(hex(subjectPublicKeyInfo(key)), name).toBe(hex(key.export({ type: 'spki', format: 'der' })));
    }
    const p256 = subjectKeys['EC P-256'] as KeyObject;
    const uncompressed = p256.export({ type: 'spki', format: 'der' });
    const point = uncompressed.subarray(-65);
    const compressedSpki = Buffer.concat([
      Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'),
      Buffer.of(0x02 + ((point[64] ?? 0) & 1)),
      point.subarray(1, 33),
    ]);
    const compressed = createPublicKey({ key: compressedSpki, format: 'der', type: 'spki' });
    expect(compressed.export({ type: 'spki', format: 'der' }).length).toBe(59);
    expect(hex(subjectPublicKeyInfo(compressed))).toBe(hex(uncompressed));
  });

  it('refuses to return a certificate whose signature the signer’s public key rejects (a faulty HSM)', async () => {
    const ca = caNamed('es256');
    const good = ca.issuer.signer;
    const template = {
      spiffeId: SpiffeId.parse('spiffe://example.org/faulty'),
      publicKey: subjectKeys['EC P-256'] as KeyObject,
      notBefore,
      notAfter: new Date(notBefore.getTime() + hour),
    };
    // Signs with another key: well-formed r‖s, wrong signature.
    const faulty: Signer = { ...good, sign: createKeySigner(ecKey('P-256').privateKey).sign };
    for (const mint of [mintX509Svid, mintX509SvidDer]) {
      await expect(mint(template, { certificate: ca.issuer.certificate, signer: faulty })).rejects.toThrow(
        'signer (ES256) produced a certificate signature that its public key rejects',
      );
    }
    // The RSA paths of the check: PKCS#1 v1.5 and PSS signatures by another key, each refused, while
    // the right key's signatures pass (the DER returned is what mintX509Svid parses).
    const other = rsaKey(2048).privateKey;
    for (const algorithm of ['RS256', 'PS256'] as const) {
      const signer = createKeySigner(rsaPrivate, algorithm);
      const certificate = caNamed('rs256').issuer.certificate;
      const der = await mintX509SvidDer(template, { certificate, signer });
      expect(new X509Certificate(der).verify(signer.publicKey), algorithm).toBe(true);
      const wrong: Signer = { ...signer, sign: createKeySigner(other, algorithm).sign };
      await expect(mintX509SvidDer(template, { certificate, signer: wrong })).rejects.toThrow(
        `signer (${algorithm}) produced a certificate signature that its public key rejects`,
      );
    }
  });

  it('refuses a serial number that is not positive hex, and a DNS name that is not ASCII, naming it', async () => {
    const ca = caNamed('es256');
    const base = {
      spiffeId: SpiffeId.parse('spiffe://example.org/refused'),
      publicKey: subjectKeys['EC P-256'] as KeyObject,
      notBefore,
      notAfter: new Date(notBefore.getTime() + hour),
    };
    for (const serialNumber of ['', '0000', 'abc', 'xyz1']) {
      await expect(mintX509Svid({ ...base, serialNumber }, ca.issuer)).rejects.toThrow(
        `certificate serial number "${serialNumber}" is not a positive number in hex`,
      );
    }
    await expect(mintX509Svid({ ...base, dnsNames: ['bücher.example'] }, ca.issuer)).rejects.toThrow(
      'DNS SAN "bücher.example" is not ASCII',
    );
  });
});
