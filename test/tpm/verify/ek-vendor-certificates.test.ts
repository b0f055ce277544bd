/**
 * Real TPM vendors' certificates (test/fixtures/ek-vendor, see its SOURCES.md) through the same
 * decoding the EK judgement uses. The strict DER reader was written against swtpm's certificates;
 * an operator's Infineon, STMicro, Nuvoton, Intel or Nationz certificate refused by it would be a
 * regression OpenSSL would not have made.
 */
import type { X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as px from '../../../src/spiffe/peculiar.js';
import { akTemplate } from '../../../src/tpm/agent/ak.js';
import { TPM_ALG } from '../../../src/tpm/codec/constants.js';
import type { TpmtPublic } from '../../../src/tpm/codec/public.js';
import { TpmError } from '../../../src/tpm/errors.js';
import {
  certificateExtensions,
  checkEkCertificateKey,
  ekCertificateTpmInfo,
  parseCertificateBundle,
  parseEkCertificate,
  verifyEkCertificateChain,
} from '../../../src/tpm/verify/ek-certificate.js';
import type { CertificateExtensions } from '../../../src/tpm/verify/ek-extensions.js';

const DIR = join(import.meta.dirname, '../../fixtures/ek-vendor');
const pemFiles = readdirSync(DIR)
  .filter((name) => name.endsWith('.pem'))
  .sort();

/** The CA certificates of the corpus (keylime's tpm_cert_store), by file name. */
const cas = new Map(
  pemFiles.map((name) => {
    const [cert, ...more] = parseCertificateBundle(readFileSync(join(DIR, name), 'utf8'), name);
    if (cert === undefined || more.length > 0) throw new Error(`${name} must hold one certificate`);
    return [name, cert];
  }),
);
function ca(name: string): X509Certificate {
  const cert = cas.get(name);
  if (cert === undefined) throw new Error(`no fixture ${name}`);
  return cert;
}

/** An EK certificate as the agent sends it: the NV index content (DER, possibly padded). */
function leafBytes(name: string): Buffer {
  return Buffer.from(readFileSync(join(DIR, name), 'utf8'), 'base64');
}

/** Everything @peculiar/x509 decodes of `cert` that the strict reader also returns. */
function theirs(cert: X509Certificate) {
  const library = new px.X509Certificate(cert.raw);
  const constraints = library.getExtension(px.BasicConstraintsExtension);
  return {
    all: library.extensions.map((ext) => ({
      oid: ext.type,
      critical: ext.critical,
      value: Buffer.from(ext.value).toString('hex'),
    })),
    basicConstraints: constraints && { ca: constraints.ca, pathLength: constraints.pathLength },
    extKeyUsage: library.getExtension(px.ExtendedKeyUsageExtension)?.usages,
    subjectAltNameDirectoryNames: library
      .getExtension(px.SubjectAlternativeNameExtension)
      ?.names.items.filter((item) => item.type === 'dn')
      .map((item) => new px.Name(item.value).toJSON().flatMap((rdn) => Object.entries(rdn))),
  };
}
function ours(read: CertificateExtensions) {
  return {
    all: read.all.map((ext) => ({
      oid: ext.oid,
      critical: ext.critical,
      value: Buffer.from(ext.value).toString('hex'),
    })),
    basicConstraints: read.basicConstraints,
    extKeyUsage: read.extKeyUsage,
    subjectAltNameDirectoryNames: read.subjectAltNameDirectoryNames?.map((attributes) =>
      attributes.map(({ oid, value }) => [oid, [value]]),
    ),
  };
}

/**
 * Which corpus certificate issued which (OpenSSL's check_issued and a verifying signature), found
 * with openssl when the corpus was built. Roots are self-issued; the IFX TPM 1.2 intermediates
 * (IFX1…IFX5, IFX15, IFX_RSA_08I/18I/20I) carry an authorityKeyIdentifier naming serial 3 of the
 * IFX root, an earlier issue than the IFX_RSA_RT here, so check_issued pairs them with nothing.
 */
const ISSUED_BY: Readonly<Record<string, string>> = {
  'IFX_ECC_034.pem': 'INF_ECC_010RT.pem',
  'IFX_RSA_034.pem': 'INF_RSA_010RT.pem',
  'IFX_RSA_042.pem': 'INF_ECC_010RT.pem',
  'IFX_RSA_17I.pem': 'IFX_RSA_RT.pem',
  'IFX_RSA_21I.pem': 'IFX_RSA_RT.pem',
  'INF_ECC_010I.pem': 'INF_ECC_010RT.pem',
  'INF_ECC_011.pem': 'INF_ECC_010RT.pem',
  'INF_RSA_010I.pem': 'INF_RSA_010RT.pem',
  'INF_RSA_011.pem': 'INF_RSA_010RT.pem',
  'INF_RSA_022.pem': 'INF_RSA_010RT.pem',
  'INTEL_I.pem': 'INTEL_RT.pem',
  'STM_ECC_01I.pem': 'STM_ECC_01RT.pem',
  'STM_RSA_01I.pem': 'STM_RSA_RT.pem',
  'STM_RSA_02I.pem': 'STM_RSA_RT.pem',
  'STM_RSA_03I.pem': 'STM_RSA_RT.pem',
  'STM_RSA_04I.pem': 'STM_RSA_RT.pem',
  'STM_RSA_05I.pem': 'STM_RSA_RT.pem',
  'STM_RSA_06I.pem': 'STM_RSA_RT.pem',
  'STM_RSA_07I.pem': 'STM_RSA_RT.pem',
  'STM_RSA_RT.pem': 'GS_TPM_RT.pem',
};

/** A moment inside the validity of every certificate given. */
function within(...certs: X509Certificate[]): Date {
  const from = Math.max(...certs.map((c) => Date.parse(c.validFrom)));
  const to = Math.min(...certs.map((c) => Date.parse(c.validTo)));
  expect(from < to, `no common validity for ${certs.map((c) => c.subject).join(' / ')}`).toBe(true);
  return new Date(from + 86_400_000);
}

/** Expects `fn` to throw a verifier error with `code` and a message matching `message`. */
function expectCode(fn: () => unknown, code: string, message: RegExp): void {
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

/** A TPM EK public area holding the same key as `cert` (what the TPM would report for it). */
function areaOf(cert: X509Certificate): TpmtPublic {
  const jwk = cert.publicKey.export({ format: 'jwk' });
  const bytes = (text: string | undefined) => Buffer.from(text ?? '', 'base64url');
  const area = akTemplate(jwk.kty === 'RSA' ? 'rsa2048' : 'ecc-p256');
  return area.type === TPM_ALG.RSA
    ? { ...area, unique: bytes(jwk.n) }
    : { ...area, unique: { x: bytes(jwk.x), y: bytes(jwk.y) } };
}

describe('real TPM vendor CA certificates (keylime tpm_cert_store)', () => {
  it('holds the 44 certificates of the corpus', () => {
    expect(cas.size).toBe(44);
  });

  it.each(pemFiles)(
    '%s: the strict reader accepts it and reads its extensions as @peculiar/x509 does',
    (name) => {
      const cert = ca(name);
      const read = certificateExtensions(cert, name);
      expect(read.all.length).toBeGreaterThan(0);
      expect(ours(read)).toEqual(theirs(cert));
      // Every one of them is a CA, as the chain builder requires of an issuer.
      expect(read.basicConstraints?.ca).toBe(true);
    },
  );

  it.each(Object.entries(ISSUED_BY))('%s chains to %s through the EK chain builder', (child, parent) => {
    const issuer = ca(parent);
    const chain = verifyEkCertificateChain(ca(child), { roots: [issuer] }, within(ca(child), issuer));
    expect(chain.map((c) => c.fingerprint256)).toEqual([ca(child).fingerprint256, issuer.fingerprint256]);
  });

  it('finds no other issuing pair in the corpus than the listed ones', () => {
    const pairs = [...cas].flatMap(([child, cert]) =>
      [...cas]
        .filter(([parent, candidate]) => parent !== child && cert.checkIssued(candidate))
        .map(([parent]) => [child, parent]),
    );
    expect(Object.fromEntries(pairs)).toEqual(ISSUED_BY);
  });
});

describe('real TPM vendor EK certificates', () => {
  const ST33 = {
    manufacturer: 'id:53544D20',
    manufacturerId: 0x53544d20,
    vendor: 'STM',
    model: 'ST33HTPHAHB4',
    version: 'id:00490004',
  };
  const leaves = [
    // STMicro: empty subject; the RSA one as read from NV, 0xff padding after the DER.
    { file: 'STM_ST33HTPHAHB4_EK_RSA.nv.b64', chain: ['STM_RSA_05I.pem', 'STM_RSA_RT.pem'], tpm: ST33 },
    { file: 'STM_ST33HTPHAHB4_EK_ECC.b64', chain: ['STM_ECC_01I.pem', 'STM_ECC_01RT.pem'], tpm: ST33 },
    // Nuvoton: empty subject, issuer and SAN directoryName each one multi-valued RDN whose SET is
    // not in DER order (python-cryptography refuses it; OpenSSL and this reader accept it).
    {
      file: 'NTC_NPCT75x_EK_RSA.b64',
      chain: ['NUVO_2111.pem'],
      tpm: {
        manufacturer: 'id:4E544300',
        manufacturerId: 0x4e544300,
        vendor: 'NTC',
        model: 'NPCT75x',
        version: 'id:00070002',
      },
    },
  ];

  it.each(leaves)(
    '$file: read, TPM facts taken, key matched, chained to its root',
    ({ file, chain, tpm }) => {
      const cert = parseEkCertificate(leafBytes(file));
      const read = certificateExtensions(cert, file);
      expect(ours(read)).toEqual(theirs(cert));
      expect(ekCertificateTpmInfo(cert)).toEqual(tpm);
      expect(read.basicConstraints).toEqual({ ca: false, pathLength: undefined });
      expect(read.extKeyUsage).toEqual(['2.23.133.8.1']);
      checkEkCertificateKey(cert, areaOf(cert));
      const issuers = chain.map(ca);
      const root = issuers.at(-1) as X509Certificate;
      const trust = { roots: [root], intermediates: issuers.slice(0, -1) };
      const built = verifyEkCertificateChain(cert, trust, within(cert, ...issuers));
      expect(built.map((c) => c.fingerprint256)).toEqual([cert, ...issuers].map((c) => c.fingerprint256));
    },
  );

  it('reads the STMicro RSA one from its NV content, 0xff padding after the DER included', () => {
    const nv = leafBytes('STM_ST33HTPHAHB4_EK_RSA.nv.b64');
    const cert = parseEkCertificate(nv);
    expect(nv.length).toBeGreaterThan(cert.raw.length);
    expect(nv.subarray(cert.raw.length).every((byte) => byte === 0xff)).toBe(true);
    expect(nv.subarray(0, cert.raw.length).equals(cert.raw)).toBe(true);
  });

  it('names an empty subject in refusals instead of failing on it (ERR_TPM_EK_UNTRUSTED)', () => {
    const cert = parseEkCertificate(leafBytes('STM_ST33HTPHAHB4_EK_ECC.b64'));
    const after = new Date(Date.parse(cert.validTo) + 86_400_000);
    for (const [trust, at, reason] of [
      [
        { roots: [ca('STM_ECC_01RT.pem')], intermediates: [ca('STM_ECC_01I.pem')] },
        after,
        /\(empty name\) expired on/,
      ],
      [{ roots: [ca('STM_RSA_RT.pem')] }, within(cert), /nothing in the trust store issued \(empty name\)/],
    ] as const) {
      expectCode(() => verifyEkCertificateChain(cert, trust, at), 'ERR_TPM_EK_UNTRUSTED', reason);
    }
  });

  it("refuses each STMicro one with the other's key, ERR_TPM_EK_MISMATCH", () => {
    const rsa = parseEkCertificate(leafBytes('STM_ST33HTPHAHB4_EK_RSA.nv.b64'));
    const ecc = parseEkCertificate(leafBytes('STM_ST33HTPHAHB4_EK_ECC.b64'));
    expectCode(
      () => checkEkCertificateKey(rsa, areaOf(ecc)),
      'ERR_TPM_EK_MISMATCH',
      /is not the EK public area/,
    );
    expectCode(
      () => checkEkCertificateKey(ecc, areaOf(rsa)),
      'ERR_TPM_EK_MISMATCH',
      /is not the EK public area/,
    );
  });
});
