import { execFile } from 'node:child_process';
import { createHash, type KeyObject, X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import * as px from '../../../src/spiffe/peculiar.js';
import type { TpmtPublic } from '../../../src/tpm/codec/public.js';
import { TpmError, type TpmErrorCode } from '../../../src/tpm/errors.js';
import {
  certificateExtensions,
  checkEkCertificateKey,
  ekCertificateTpmInfo,
  ekPublicKeyHash,
  MAX_CHAIN_LENGTH,
  MAX_ISSUER_CHECKS,
  MAX_PRESENTED_CERTIFICATES,
  parseCertificateBundle,
  parseEkCertificate,
  verifyEkCertificateChain,
} from '../../../src/tpm/verify/ek-certificate.js';
import { EXTENSION_OID } from '../../../src/tpm/verify/ek-extensions.js';
import { craft, p256 } from '../../helpers/x509.js';
import { EK_HANDLE, type EkKind, readEkPublic, readOut, startTestTpm, type TestTpm } from './harness.js';

const exec = promisify(execFile);

let tpm: TestTpm;
interface EkFixture {
  readonly nv: Buffer;
  readonly cert: X509Certificate;
  readonly area: TpmtPublic;
}
const fixtures = new Map<EkKind, EkFixture>();

function ek(kind: EkKind): EkFixture {
  const fixture = fixtures.get(kind);
  if (fixture === undefined) throw new Error(`no ${kind} EK fixture (beforeAll failed?)`);
  return fixture;
}
let root: X509Certificate;
let issuer: X509Certificate;
let foreignRoot: X509Certificate;

/** Runs openssl in the TPM's directory. */
async function openssl(args: string[]): Promise<string> {
  return (await exec('openssl', args, { cwd: tpm.dir })).stdout;
}

/** Expects `fn` to throw a verifier error with `code` and a message matching `message`. */
function expectCode(fn: () => unknown, code: TpmErrorCode, message: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown instanceof TpmError && thrown.code === code, `expected ${code}, got ${String(thrown)}`).toBe(
    true,
  );
  expect(String(thrown)).toMatch(message);
}

/**
 * A CA made by openssl, unrelated to the TPM, and a certificate it signs for `keyFile` with the
 * given extensions (openssl -addext syntax).
 */
async function foreignCert(name: string, keyFile: string, extensions: string[]): Promise<X509Certificate> {
  await openssl([
    'x509',
    '-new',
    '-CA',
    'foreign-root.pem',
    '-CAkey',
    'foreign-root.key',
    '-force_pubkey',
    keyFile,
    '-subj',
    '/CN=unknown',
    '-days',
    '30',
    '-out',
    `${name}.pem`,
    ...extensions.flatMap((e) => ['-extfile', e]),
  ]);
  return parseEkCertificate(await readFile(join(tpm.dir, `${name}.pem`), 'utf8'));
}

async function loadOne(path: string): Promise<X509Certificate> {
  const [cert, ...rest] = parseCertificateBundle(await readFile(path, 'utf8'), path);
  if (cert === undefined || rest.length > 0) throw new Error(`${path} must hold exactly one certificate`);
  return cert;
}

beforeAll(async () => {
  tpm = await startTestTpm();
  for (const [kind, index] of [
    ['rsa', '0x1c00002'],
    ['ecc', '0x1c00016'],
  ] as const) {
    await tpm.tool('tpm2_nvread', [index, '-C', 'o', '-o', `ek-${kind}.nv`]);
    // PEM for openssl (the SPKI hash check and certificates made for this key).
    await tpm.tool('tpm2_readpublic', ['-c', EK_HANDLE[kind], '-f', 'pem', '-o', `ek-${kind}.pem`]);
    const nv = await readOut(tpm, `ek-${kind}.nv`);
    fixtures.set(kind, { nv, cert: parseEkCertificate(nv), area: (await readEkPublic(tpm, kind)).area });
  }
  root = await loadOne(tpm.swtpm.ekRootCertPath);
  issuer = await loadOne(tpm.swtpm.ekIssuerCertPath);
  await openssl([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    'foreign-root.key',
    '-subj',
    '/CN=swtpm-localca-rootca',
    '-days',
    '30',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign',
    '-out',
    'foreign-root.pem',
  ]);
  foreignRoot = await loadOne(join(tpm.dir, 'foreign-root.pem'));
});

afterAll(async () => {
  await tpm?.stop();
});

describe.each(['rsa', 'ecc'] as const)('EK certificate from swtpm_setup, %s EK', (kind) => {
  it('decodes from the NV index content (also with the PC Client header), DER and PEM alike', () => {
    const { cert, nv } = ek(kind);
    expect(parseEkCertificate(cert.raw).fingerprint256).toBe(cert.fingerprint256);
    expect(parseEkCertificate(cert.toString()).fingerprint256).toBe(cert.fingerprint256);
    expect(parseEkCertificate(Buffer.concat([nv, Buffer.alloc(32, 0xff)])).fingerprint256).toBe(
      cert.fingerprint256,
    );
    const header = Buffer.from([0x10, 0x01, 0x00, cert.raw.length >> 8, cert.raw.length & 0xff]);
    expect(parseEkCertificate(Buffer.concat([header, cert.raw, Buffer.alloc(7)])).fingerprint256).toBe(
      cert.fingerprint256,
    );
  });

  it('chains to the local CA root through its intermediate', () => {
    const chain = verifyEkCertificateChain(ek(kind).cert, { roots: [root], intermediates: [issuer] });
    expect(chain.map((c) => c.subject)).toEqual([
      'CN=unknown',
      'CN=swtpm-localca',
      'CN=swtpm-localca-rootca',
    ]);
  });

  it('chains when the intermediate itself is the configured anchor', () => {
    expect(verifyEkCertificateChain(ek(kind).cert, { roots: [issuer] })).toHaveLength(2);
  });

  it('is untrusted with an unrelated root of the same name, naming the issuer', () => {
    expectCode(
      () => verifyEkCertificateChain(ek(kind).cert, { roots: [foreignRoot], intermediates: [issuer] }),
      'ERR_TPM_EK_UNTRUSTED',
      /issued by "CN=swtpm-localca".*nothing in the trust store issued CN=swtpm-localca \(its issuer is CN=swtpm-localca-rootca\)/,
    );
  });

  it('is untrusted without the intermediate', () => {
    expectCode(
      () => verifyEkCertificateChain(ek(kind).cert, { roots: [root] }),
      'ERR_TPM_EK_UNTRUSTED',
      /issued by "CN=swtpm-localca"/,
    );
  });

  it('is untrusted before its validity period', () => {
    const before = new Date(new Date(ek(kind).cert.validFrom).getTime() - 86_400_000);
    expectCode(
      () => verifyEkCertificateChain(ek(kind).cert, { roots: [root], intermediates: [issuer] }, before),
      'ERR_TPM_EK_UNTRUSTED',
      /not valid before/,
    );
  });

  it('certifies the EK public key the TPM reports', () => {
    expect(() => checkEkCertificateKey(ek(kind).cert, ek(kind).area)).not.toThrow();
  });

  it('does not certify the other EK', () => {
    const other = ek(kind === 'rsa' ? 'ecc' : 'rsa').area;
    expectCode(
      () => checkEkCertificateKey(ek(kind).cert, other),
      'ERR_TPM_EK_MISMATCH',
      /not the EK public area/,
    );
  });

  it('gives manufacturer, model and version as openssl x509 -text shows them', async () => {
    const text = await openssl(['x509', '-in', `ek-${kind}.nv`, '-inform', 'DER', '-noout', '-text']);
    const dirName = /DirName:(\S+)/.exec(text)?.[1] ?? '';
    const attrs = Object.fromEntries(dirName.split('/').flatMap((part) => (part ? [part.split('=')] : [])));
    const info = ekCertificateTpmInfo(ek(kind).cert);
    expect(info.manufacturer).toBe(attrs['2.23.133.2.1']);
    expect(info.model).toBe(attrs['2.23.133.2.2']);
    expect(info.version).toBe(attrs['2.23.133.2.3']);
    expect(info.manufacturerId).toBe(0x00001014);
    expect(info.vendor).toBeUndefined();
  });

  it('hashes the EK as SHA-256 of its SubjectPublicKeyInfo, as openssl encodes it', async () => {
    const der = await openssl([
      'pkey',
      '-pubin',
      '-in',
      `ek-${kind}.pem`,
      '-outform',
      'DER',
      '-out',
      `ek-${kind}.spki`,
    ]);
    expect(der).toBe('');
    const spki = await readOut(tpm, `ek-${kind}.spki`);
    expect(ekPublicKeyHash(ek(kind).area)).toBe(createHash('sha256').update(spki).digest('hex'));
  });
});

describe('EK certificates from another CA', () => {
  it('decodes a printable TCG vendor ID and keeps the attributes as written', async () => {
    await writeFile(
      join(tpm.dir, 'tcg-san.ext'),
      'subjectAltName=critical,dirName:tpm\nbasicConstraints=critical,CA:FALSE\n[tpm]\n' +
        // OpenSSL drops a field name's text up to the first dot (its "1.CN" syntax), hence the prefixes.
        '1.2.23.133.2.1=id:4D534654\n2.2.23.133.2.2=NPCT75x\n3.2.23.133.2.3=id:00070002\n',
    );
    const cert = await foreignCert('msft', 'ek-rsa.pem', ['tcg-san.ext']);
    expect(ekCertificateTpmInfo(cert)).toEqual({
      manufacturer: 'id:4D534654',
      manufacturerId: 0x4d534654,
      vendor: 'MSFT',
      model: 'NPCT75x',
      version: 'id:00070002',
    });
    expect(verifyEkCertificateChain(cert, { roots: [foreignRoot] })).toHaveLength(2);
  });

  it('refuses a critical extension it does not process', async () => {
    await writeFile(join(tpm.dir, 'nc.ext'), 'nameConstraints=critical,permitted;DNS:example.com\n');
    const cert = await foreignCert('nc', 'ek-ecc.pem', ['nc.ext']);
    expectCode(
      () => verifyEkCertificateChain(cert, { roots: [foreignRoot] }),
      'ERR_TPM_EK_UNTRUSTED',
      /critical extension\(s\) 2\.5\.29\.30 that are not processed/,
    );
  });

  /** A P-256 CA `name` (key and cert files), self-signed or issued by CA `issuer`, with `extensions`. */
  async function makeCa(name: string, extensions: string, issuer?: string): Promise<X509Certificate> {
    await writeFile(join(tpm.dir, `${name}.ext`), extensions);
    await openssl([
      'genpkey',
      '-algorithm',
      'EC',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-out',
      `${name}.key`,
    ]);
    await openssl(['pkey', '-in', `${name}.key`, '-pubout', '-out', `${name}.pub.pem`]);
    const signer =
      issuer === undefined
        ? ['-key', `${name}.key`]
        : ['-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`, '-force_pubkey', `${name}.pub.pem`];
    const subject = ['-subj', `/CN=${name}`, '-days', '30', '-extfile', `${name}.ext`, '-out', `${name}.pem`];
    await openssl(['x509', '-new', ...signer, ...subject]);
    return loadOne(join(tpm.dir, `${name}.pem`));
  }

  /** An EK-like certificate for the RSA EK's key, issued by CA `issuer`. */
  async function issueLeaf(name: string, issuer: string): Promise<X509Certificate> {
    await writeFile(join(tpm.dir, 'leaf.ext'), 'basicConstraints=critical,CA:FALSE\n');
    await openssl(
      [
        'x509',
        '-new',
        '-CA',
        `${issuer}.pem`,
        '-CAkey',
        `${issuer}.key`,
        '-force_pubkey',
        'ek-rsa.pem',
      ].concat(['-subj', '/CN=unknown', '-days', '30', '-extfile', 'leaf.ext', '-out', `${name}.pem`]),
    );
    return parseEkCertificate(await readFile(join(tpm.dir, `${name}.pem`), 'utf8'));
  }

  it('refuses a chain whose issuer is not a CA', async () => {
    const notCa = await makeCa('not-a-ca', 'basicConstraints=critical,CA:FALSE\n');
    const cert = await issueLeaf('under-not-a-ca', 'not-a-ca');
    expectCode(
      () => verifyEkCertificateChain(cert, { roots: [notCa] }),
      'ERR_TPM_EK_UNTRUSTED',
      /CN=not-a-ca is not a CA/,
    );
  });

  it("refuses a chain longer than a CA's path length constraint allows", async () => {
    const ca = 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n';
    const pathRoot = await makeCa(
      'pathlen-root',
      'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=keyCertSign\n',
    );
    const middle = await makeCa('pathlen-middle', ca, 'pathlen-root');
    const cert = await issueLeaf('under-pathlen', 'pathlen-middle');
    expect(verifyEkCertificateChain(cert, { roots: [middle] })).toHaveLength(2);
    expectCode(
      () => verifyEkCertificateChain(cert, { roots: [pathRoot], intermediates: [middle] }),
      'ERR_TPM_EK_UNTRUSTED',
      /CN=pathlen-root allows 0 intermediate CA\(s\) below it, the chain has 1/,
    );
  });

  it('refuses an issuer whose key usage does not include keyCertSign', async () => {
    const noSign = await makeCa(
      'no-certsign',
      'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature\n',
    );
    const cert = await issueLeaf('under-no-certsign', 'no-certsign');
    expectCode(
      () => verifyEkCertificateChain(cert, { roots: [noSign] }),
      'ERR_TPM_EK_UNTRUSTED',
      /nothing in the trust store issued CN=unknown \(its issuer is CN=no-certsign\).*keyCertSign/,
    );
  });

  it('refuses a certificate whose extended key usage is not for EKs', async () => {
    await writeFile(join(tpm.dir, 'tls-eku.ext'), 'extendedKeyUsage=serverAuth\n');
    const cert = await foreignCert('tls-eku', 'ek-rsa.pem', ['tls-eku.ext']);
    expectCode(
      () => verifyEkCertificateChain(cert, { roots: [foreignRoot] }),
      'ERR_TPM_EK_UNTRUSTED',
      /extendedKeyUsage \(1\.3\.6\.1\.5\.5\.7\.3\.1\) does not include tcg-kp-EKCertificate/,
    );
  });

  it('rejects bytes that are not a certificate', () => {
    expectCode(
      () => parseEkCertificate(Buffer.from('not a certificate')),
      'ERR_TPM_MALFORMED',
      /not a valid X\.509/,
    );
  });
});

describe('chain building stays bounded, whatever the pool holds', () => {
  const caExtensions = () => [
    new px.BasicConstraintsExtension(true, undefined, true),
    new px.KeyUsagesExtension(px.KeyUsageFlags.keyCertSign, true),
  ];

  /** A CA named `name`: self-signed with `key`, or issued by `issuer`. */
  async function ca(
    name: string,
    key: { privateKey: KeyObject; publicKey: KeyObject },
    issuer?: { cert: X509Certificate; key: KeyObject },
  ): Promise<X509Certificate> {
    return craft({
      subject: `CN=${name}`,
      publicKey: key.publicKey,
      ...(issuer === undefined ? { selfKey: key.privateKey } : { issuer }),
      extensions: caExtensions(),
    });
  }

  async function leafUnder(issuer: { cert: X509Certificate; key: KeyObject }): Promise<X509Certificate> {
    return craft({ subject: 'CN=ek', publicKey: p256().publicKey, issuer, extensions: [] });
  }

  /** Issuer matches and signature verifications made while `fn` runs, counted at node:crypto. */
  function workDuring(fn: () => unknown): { matches: number; verifications: number } {
    const matches = vi.spyOn(X509Certificate.prototype, 'checkIssued');
    const verifications = vi.spyOn(X509Certificate.prototype, 'verify');
    try {
      fn();
    } catch {
      // The caller asserts on the outcome separately.
    }
    const work = { matches: matches.mock.calls.length, verifications: verifications.mock.calls.length };
    vi.restoreAllMocks();
    return work;
  }

  function verificationsDuring(fn: () => unknown): number {
    return workDuring(fn).verifications;
  }

  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('finds a chain through an intermediate among 200 unrelated CAs, matching and verifying only its two links', async () => {
    const rootKey = p256();
    const middleKey = p256();
    const anchor = await ca('root', rootKey);
    const middle = await ca('middle', middleKey, { cert: anchor, key: rootKey.privateKey });
    const leaf = await leafUnder({ cert: middle, key: middleKey.privateKey });
    const decoys = await Promise.all(Array.from({ length: 200 }, (_, i) => ca(`decoy-${i}`, p256())));
    const trust = { roots: [anchor], intermediates: [...decoys, middle] };
    expect(verifyEkCertificateChain(leaf, trust).map((c) => c.subject)).toEqual([
      'CN=ek',
      'CN=middle',
      'CN=root',
    ]);
    // Candidates are looked up by name: the 200 others are never even matched against.
    expect(workDuring(() => verifyEkCertificateChain(leaf, trust))).toEqual({ matches: 2, verifications: 2 });
  });

  it('verifies identical copies of a CA once', async () => {
    const key = p256();
    const evil = await ca('evil', key);
    const leaf = await leafUnder({ cert: evil, key: key.privateKey });
    const copies = Array.from({ length: 6 }, () => new X509Certificate(evil.raw));
    const trust = { roots: [await ca('root', p256())], intermediates: copies };
    expectCode(() => verifyEkCertificateChain(leaf, trust), 'ERR_TPM_EK_UNTRUSTED', /issued by "CN=evil"/);
    expect(verificationsDuring(() => verifyEkCertificateChain(leaf, trust))).toBe(1);
  });

  it('tries each of several distinct CAs with one name and key once, never their orderings', async () => {
    const key = p256();
    const first = await ca('evil', key);
    const leaf = await leafUnder({ cert: first, key: key.privateKey });
    // Same name, same key, distinct certificates: each one issues every other one.
    const others = await Promise.all(Array.from({ length: 5 }, () => ca('evil', key)));
    const trust = { roots: [await ca('root', p256())], intermediates: [first, ...others] };
    expectCode(() => verifyEkCertificateChain(leaf, trust), 'ERR_TPM_EK_UNTRUSTED', /issued by "CN=evil"/);
    expect(verificationsDuring(() => verifyEkCertificateChain(leaf, trust))).toBe(6);
  });

  it("gives up on 200 distinct CAs of the issuer's name at MAX_ISSUER_CHECKS, saying so", async () => {
    const key = p256();
    const first = await ca('evil', key);
    const leaf = await leafUnder({ cert: first, key: key.privateKey });
    const strangers = await Promise.all(Array.from({ length: 199 }, () => ca('evil', p256())));
    const trust = { roots: [await ca('root', p256())], intermediates: [...strangers, first] };
    expectCode(
      () => verifyEkCertificateChain(leaf, trust),
      'ERR_TPM_EK_CHAIN_LIMIT',
      new RegExp(`within MAX_ISSUER_CHECKS \\(${MAX_ISSUER_CHECKS}\\) issuer checks`),
    );
    expect(verificationsDuring(() => verifyEkCertificateChain(leaf, trust))).toBeLessThanOrEqual(
      MAX_ISSUER_CHECKS,
    );
  });

  it('refuses more presented CA certificates than MAX_PRESENTED_CERTIFICATES, verifying none', async () => {
    const key = p256();
    const evil = await ca('evil', key);
    const leaf = await leafUnder({ cert: evil, key: key.privateKey });
    const presented = Array.from({ length: MAX_PRESENTED_CERTIFICATES + 1 }, () => evil);
    const trust = { roots: [await ca('root', p256())], presented };
    expectCode(
      () => verifyEkCertificateChain(leaf, trust),
      'ERR_TPM_EK_CHAIN_LIMIT',
      new RegExp(
        `9 CA certificates came with it, more than MAX_PRESENTED_CERTIFICATES \\(${MAX_PRESENTED_CERTIFICATES}\\)`,
      ),
    );
    expect(verificationsDuring(() => verifyEkCertificateChain(leaf, trust))).toBe(0);
  });

  it('accepts a chain of MAX_CHAIN_LENGTH certificates and refuses a longer one, naming the cap', async () => {
    const rootKey = p256();
    const anchor = await ca('root', rootKey);
    let issuer = { cert: anchor, key: rootKey.privateKey };
    const intermediates: X509Certificate[] = [];
    // Leaf, 7 intermediates and the root: one more than MAX_CHAIN_LENGTH.
    for (let i = 1; i <= MAX_CHAIN_LENGTH - 1; i += 1) {
      const key = p256();
      const cert = await ca(`ca-${i}`, key, issuer);
      intermediates.push(cert);
      issuer = { cert, key: key.privateKey };
    }
    const leaf = await leafUnder(issuer);
    expectCode(
      () => verifyEkCertificateChain(leaf, { roots: [anchor], intermediates }),
      'ERR_TPM_EK_CHAIN_LIMIT',
      new RegExp(`no chain of at most MAX_CHAIN_LENGTH \\(${MAX_CHAIN_LENGTH}\\) certificates`),
    );
    const [top] = intermediates;
    if (top === undefined) throw new Error('no intermediate');
    expect(
      verifyEkCertificateChain(leaf, { roots: [top], intermediates: intermediates.slice(1) }),
    ).toHaveLength(MAX_CHAIN_LENGTH);
  });
});

describe('certificates one X.509 parser reads and the other does not', () => {
  /** A DER-valid subjectAltName holding an ediPartyName (partyName "A"): OpenSSL reads it, the strict DER reader refuses it. */
  const ediPartyName = new px.Extension('2.5.29.17', false, Buffer.from('3007a505a1030c0141', 'hex'));

  it('refuses an EK certificate with an ediPartyName as malformed, naming what did not decode', async () => {
    const key = p256();
    const cert = await craft({
      subject: 'CN=ek',
      publicKey: key.publicKey,
      selfKey: key.privateKey,
      extensions: [ediPartyName],
    });
    expect(cert.subjectAltName).toBe('EdiPartyName:<unsupported>');
    expectCode(() => parseEkCertificate(cert.raw), 'ERR_TPM_MALFORMED', /EDIPartyName/);
    expect(() => parseCertificateBundle(cert.toString(), 'ca.pem')).toThrow(
      /ca\.pem: certificate 1 does not decode.*EDIPartyName/,
    );
  });
});

describe('whole certificates OpenSSL reads and the strict DER reader refuses', () => {
  /** A fresh self-signed certificate's DER, with `edit` applied to its bytes. */
  async function edited(edit: (der: Buffer) => void): Promise<Buffer> {
    const key = p256();
    const cert = await craft({
      subject: 'CN=ek',
      publicKey: key.publicKey,
      selfKey: key.privateKey,
      extensions: [],
      notAfter: new Date('2060-01-01T00:00:00Z'),
    });
    const der = Buffer.from(cert.raw);
    edit(der);
    return der;
  }
  const notAfterAt = (der: Buffer) => der.indexOf(Buffer.from('20600101000000Z'));

  it.each([
    [
      'a notAfter in month 13',
      (der: Buffer) => der.write('13', notAfterAt(der) + 4, 'latin1'),
      /notAfter has a field out of range \(20601301000000Z\)/,
    ],
    [
      'a notAfter with a time zone offset',
      (der: Buffer) => der.write('+', notAfterAt(der) + 14, 'latin1'),
      /notAfter is not a UTCTime or GeneralizedTime in the form RFC 5280 requires/,
    ],
    [
      'version 4',
      (der: Buffer) => {
        der[der.indexOf(Buffer.from('a003020102', 'hex')) + 4] = 3;
      },
      /version: not v1, v2 or v3/,
    ],
  ])('refuses %s as malformed, naming the field', async (_, edit, message) => {
    const der = await edited(edit);
    expect(() => new X509Certificate(der)).not.toThrow();
    expectCode(() => parseEkCertificate(der), 'ERR_TPM_MALFORMED', message);
  });
});

describe("extensions read by the strict DER reader, as @peculiar/x509's classes read them", () => {
  /** DER of one value: `tag`, then the parts (hex strings or bytes) as its content. */
  function tlv(tag: number, ...parts: (string | Uint8Array)[]): Buffer {
    const content = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'hex') : p)));
    const n = content.length;
    const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
    return Buffer.concat([Buffer.from([tag, ...length]), content]);
  }
  /** An OBJECT IDENTIFIER's DER, base-128 arcs after the first two combined. */
  function oid(dotted: string): Buffer {
    const [a = 0, b = 0, ...rest] = dotted.split('.').map(Number);
    const bytes = [a * 40 + b].concat(
      rest.flatMap((arc) => {
        const out = [arc & 0x7f];
        for (let n = Math.floor(arc / 128); n > 0; n = Math.floor(n / 128)) out.unshift((n & 0x7f) | 0x80);
        return out;
      }),
    );
    return tlv(0x06, Buffer.from(bytes));
  }

  /** What @peculiar/x509 makes of every extension of `cert`: OID, flag, value. */
  function theirs(cert: X509Certificate) {
    return new px.X509Certificate(cert.raw).extensions.map((ext) => ({
      oid: ext.type,
      critical: ext.critical,
      value: Buffer.from(ext.value).toString('hex'),
    }));
  }
  function ours(cert: X509Certificate) {
    return certificateExtensions(cert, 'it').all.map((ext) => ({
      oid: ext.oid,
      critical: ext.critical,
      value: Buffer.from(ext.value).toString('hex'),
    }));
  }

  /** The classes @peculiar/x509's ExtensionFactory picks by OID (a private field, read to compare). */
  const registered = (px.ExtensionFactory as unknown as { items: Map<string, unknown> }).items;

  it("reads swtpm's EK certificates and its CA certificates as @peculiar/x509 does, decoded values included", () => {
    for (const cert of [ek('rsa').cert, ek('ecc').cert, root, issuer]) {
      const library = new px.X509Certificate(cert.raw);
      expect(ours(cert).length).toBeGreaterThan(0);
      expect(ours(cert)).toEqual(theirs(cert));
      const read = certificateExtensions(cert, 'it');
      const constraints = library.getExtension(px.BasicConstraintsExtension);
      expect(read.basicConstraints).toEqual(
        constraints && { ca: constraints.ca, pathLength: constraints.pathLength },
      );
      expect(read.extKeyUsage).toEqual(library.getExtension(px.ExtendedKeyUsageExtension)?.usages);
      const dirNames = library
        .getExtension(px.SubjectAlternativeNameExtension)
        ?.names.items.filter((item) => item.type === 'dn')
        .map((item) => new px.Name(item.value).toJSON().flatMap((rdn) => Object.entries(rdn)));
      expect(
        read.subjectAltNameDirectoryNames?.map((attributes) =>
          attributes.map(({ oid: type, value }) => [type, [value]]),
        ),
      ).toEqual(dirNames);
    }
    // The EK certificates carry the TCG SAN, basicConstraints and extendedKeyUsage the decisions read.
    const rsa = certificateExtensions(ek('rsa').cert, 'it');
    expect(rsa.subjectAltNameDirectoryNames?.flat().map((a) => a.oid)).toEqual(
      expect.arrayContaining(['2.23.133.2.1', '2.23.133.2.2', '2.23.133.2.3']),
    );
    expect(rsa.basicConstraints).toEqual({ ca: false, pathLength: undefined });
    expect(rsa.extKeyUsage).toEqual(['2.23.133.8.1']);
  });

  it('reads every extension type @peculiar/x509 has a class for, and OIDs it has none for, the same way', async () => {
    const key = p256();
    const extensions = [
      new px.CertificatePolicyExtension(['1.2.3.4']),
      new px.BasicConstraintsExtension(true, 2, true),
      new px.ExtendedKeyUsageExtension(['2.23.133.8.1'], false),
      new px.KeyUsagesExtension(px.KeyUsageFlags.keyCertSign, true),
      new px.SubjectKeyIdentifierExtension('0102030405'),
      new px.AuthorityKeyIdentifierExtension('0607080910'),
      new px.SubjectAlternativeNameExtension([{ type: 'dns', value: 'ek.example' }], true),
      new px.CRLDistributionPointsExtension(['http://crl.example/ek.crl']),
      new px.AuthorityInfoAccessExtension({ caIssuers: 'http://ca.example/ca.cer' }),
      new px.IssuerAlternativeNameExtension([{ type: 'url', value: 'http://ca.example' }]),
      // No class for these: subjectDirectoryAttributes (a short id-ce OID) and a private OID.
      new px.Extension('2.5.29.9', false, Buffer.from('3000', 'hex')),
      new px.Extension('1.3.6.1.4.1.55555.1.2', true, Buffer.from('0500', 'hex')),
    ];
    const cert = await craft({
      subject: 'CN=all',
      publicKey: key.publicKey,
      selfKey: key.privateKey,
      extensions,
    });
    expect(ours(cert)).toEqual(theirs(cert));
    expect(ours(cert)).toHaveLength(extensions.length);
    expect(certificateExtensions(cert, 'it')).toMatchObject({
      basicConstraints: { ca: true, pathLength: 2 },
      extKeyUsage: ['2.23.133.8.1'],
      subjectAltNameDirectoryNames: [],
    });
    // A class registered by a later @peculiar/x509 would go undecoded here: the reader must know it.
    expect(Object.values(EXTENSION_OID).sort()).toEqual([...registered.keys()].sort());
  });

  it('reads a certificate without extensions as having none', async () => {
    const key = p256();
    const cert = await craft({
      subject: 'CN=bare',
      publicKey: key.publicKey,
      selfKey: key.privateKey,
      extensions: [],
    });
    expect(certificateExtensions(cert, 'it')).toEqual({
      all: [],
      basicConstraints: undefined,
      extKeyUsage: undefined,
      subjectAltNameDirectoryNames: undefined,
    });
    expect(new px.X509Certificate(cert.raw).extensions).toEqual([]);
  });

  it('keeps TCG attributes exactly as written: RFC 4514 specials, non-ASCII text, non-string values', async () => {
    const key = p256();
    const attribute = (type: string, value: Buffer) => tlv(0x31, tlv(0x30, oid(type), value));
    const name = tlv(
      0x30,
      attribute('2.23.133.2.1', tlv(0x0c, Buffer.from('id:00001014'))),
      attribute('2.23.133.2.2', tlv(0x0c, Buffer.from('Model, "X"+Ü\\1'))),
      attribute('2.23.133.2.3', tlv(0x02, '0102')),
    );
    const san = new px.Extension('2.5.29.17', true, tlv(0x30, tlv(0xa4, name)));
    const cert = await craft({
      subject: 'CN=ek',
      publicKey: key.publicKey,
      selfKey: key.privateKey,
      extensions: [san],
    });
    expect(ekCertificateTpmInfo(parseEkCertificate(cert.raw))).toEqual({
      manufacturer: 'id:00001014',
      manufacturerId: 0x1014,
      vendor: undefined,
      model: 'Model, "X"+Ü\\1',
      version: '#02020102',
    });
  });

  it.each([
    [
      'basicConstraints with a BOOLEAN that is not DER',
      '2.5.29.19',
      '3003010101',
      /extension 2\.5\.29\.19.*BOOLEAN is not DER/,
    ],
    ['basicConstraints with a negative path length', '2.5.29.19', '30060101ff020180', /negative INTEGER/],
    [
      'basicConstraints followed by stray bytes',
      '2.5.29.19',
      '300000',
      /unexpected bytes after the last value/,
    ],
    ['an extendedKeyUsage that is not a SEQUENCE', '2.5.29.37', '0400', /has tag 0x04, expected 0x30/],
    ['an extendedKeyUsage OID with a padded arc', '2.5.29.37', '3004060280 01', /leading 0x80/],
    ['a subjectAltName with an x400Address', '2.5.29.17', '3002a300', /X400Address is not supported/],
    ['a subjectAltName with no names', '2.5.29.17', '3000', /empty GeneralNames/],
    ['a subjectAltName with a 5-byte iPAddress', '2.5.29.17', '3007870501020304 05', /iPAddress/],
    ['a subjectKeyIdentifier length not in its shortest form', '2.5.29.14', '04810100', /shortest form/],
    [
      'an authorityKeyIdentifier with an unknown field',
      '2.5.29.35',
      '30028300',
      /unexpected bytes after the last value/,
    ],
    [
      'certificatePolicies whose qualifier has no value',
      '2.5.29.32',
      '300e300c06020304 3006300406020304',
      /qualifier missing/,
    ],
    [
      'a cRLDistributionPoints name of an unknown form',
      '2.5.29.31',
      '30063004a002a300',
      /DistributionPointName with tag 0xa3/,
    ],
    [
      'an authorityInfoAccess with an indefinite length',
      '1.3.6.1.5.5.7.1.1',
      '3080',
      /unsupported length form/,
    ],
    ['a keyUsage BIT STRING with 8 unused bits', '2.5.29.15', '03020802', /unused-bits/],
  ])('refuses %s as malformed, naming what did not decode', async (_, type, value, message) => {
    const key = p256();
    const ext = new px.Extension(type, false, Buffer.from(value.replaceAll(' ', ''), 'hex'));
    const cert = await craft({
      subject: 'CN=ek',
      publicKey: key.publicKey,
      selfKey: key.privateKey,
      extensions: [ext],
    });
    expect(() => new X509Certificate(cert.raw)).not.toThrow();
    expectCode(() => parseEkCertificate(cert.raw), 'ERR_TPM_MALFORMED', message);
    expect(() => parseCertificateBundle(cert.toString(), 'ca.pem')).toThrow(
      /ca\.pem: certificate 1 does not decode/,
    );
  });
});
