/**
 * The strict CSR reader (src/spiffe/csr-reader.ts) against the parser it replaced
 * (test/helpers/legacy-csr.ts): the same decision and fields on CSRs from createCsr, openssl and
 * @peculiar/x509 and on every one-bit corruption of them; and each thing the new reader decides on
 * its own, on CSRs built and signed by hand.
 */
import { execFile } from 'node:child_process';
import { ECDH, type KeyObject, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { createCsr, parseCsr } from '../../src/spiffe/csr.js';
import { derOid } from '../../src/spiffe/der-writer.js';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import type { SigningAlgorithm } from '../../src/spiffe/signer.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { tlv } from '../../src/spiffe/x509-extensions.js';
import { legacyParseCsr, parseCsrBothWays } from '../helpers/legacy-csr.js';
import { expectSpiffeRejection } from '../helpers/spiffe-errors.js';
import { px, tempDir } from '../helpers/x509.js';

const run = promisify(execFile);
const tmp = tempDir();
afterAll(() => tmp.cleanup());

const ID = 'spiffe://example.org/workload/a';
const id = SpiffeId.parse(ID);
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const spkiHex = (key: KeyObject) => hex(key.export({ type: 'spki', format: 'der' }));

// --- CSRs built by hand, signed with node:crypto ------------------------------------------------

const seq = (...parts: Uint8Array[]) => tlv(0x30, Buffer.concat(parts));
const set = (...parts: Uint8Array[]) => tlv(0x31, Buffer.concat(parts));
const INT0 = Uint8Array.of(0x02, 0x01, 0x00);
const TRUE = Uint8Array.of(0x01, 0x01, 0xff);
const ECDSA_SHA256 = seq(derOid('1.2.840.10045.4.3.2'));
const ia5 = (tag: number, text: string) => tlv(tag, Buffer.from(text, 'latin1'));

function extension(oid: string, value: Uint8Array, critical?: Uint8Array): Uint8Array {
  return seq(derOid(oid), ...(critical ? [critical] : []), tlv(0x04, value));
}
const san = (...names: Uint8Array[]) => extension('2.5.29.17', seq(...names), TRUE);
const extensionRequest = (...extensions: Uint8Array[]) =>
  seq(derOid('1.2.840.113549.1.9.14'), set(seq(...extensions)));

interface Parts {
  version?: Uint8Array;
  subject?: Uint8Array;
  attributes?: Uint8Array[] | undefined;
  algorithm?: Uint8Array;
  /** Signs something else than the CertificationRequestInfo (a signature that does not verify). */
  signOther?: boolean;
}

const p256 = newKeyPair('ec', { namedCurve: 'P-256' });

/** A CSR for `key`'s public key, signed by it with ECDSA SHA-256 unless `parts` says otherwise. */
function handmade(parts: Parts = {}, key = p256): Uint8Array {
  const attributes = parts.attributes ?? [extensionRequest(san(ia5(0x86, ID)))];
  const info = seq(
    parts.version ?? INT0,
    parts.subject ?? seq(),
    key.publicKey.export({ type: 'spki', format: 'der' }),
    ...(parts.attributes === undefined && 'attributes' in parts
      ? []
      : [tlv(0xa0, Buffer.concat(attributes))]),
  );
  const signature = sign('sha256', parts.signOther ? Buffer.from('other') : info, key.privateKey);
  return seq(info, parts.algorithm ?? ECDSA_SHA256, tlv(0x03, Buffer.concat([Uint8Array.of(0), signature])));
}

// --- CSRs from the tools that make them ---------------------------------------------------------

async function viaOpenssl(name: string, keyArgs: string[], extra: string[] = []): Promise<Uint8Array> {
  const key = join(tmp.dir, `${name}.key`);
  const out = join(tmp.dir, `${name}.csr`);
  await run('openssl', ['genpkey', ...keyArgs, '-out', key]);
  await run('openssl', [
    'req',
    '-new',
    '-key',
    key,
    '-subj',
    '/O=SPIFFE',
    '-addext',
    `subjectAltName=URI:${ID},DNS:${name}.example.org`,
    ...extra,
    '-outform',
    'DER',
    '-out',
    out,
  ]);
  return new Uint8Array(readFileSync(out));
}

async function viaCreateCsr(algorithm: SigningAlgorithm, dnsNames: string[] = [], subject?: string) {
  const key = algorithm.startsWith('ES')
    ? newKeyPair('ec', { namedCurve: algorithm === 'ES256' ? 'P-256' : 'P-384' })
    : newKeyPair('rsa', { modulusLength: 2048 });
  const der = await createCsr(
    { spiffeId: id, dnsNames, ...(subject ? { subject } : {}) },
    createKeySigner(key.privateKey, algorithm),
  );
  return { der, key };
}

describe('parseCsr: the strict reader decides as the previous parser did', () => {
  it('accepts what createCsr makes for every signing algorithm, with the same fields', async () => {
    const algorithms: SigningAlgorithm[] = [
      'ES256',
      'ES384',
      'RS256',
      'RS384',
      'RS512',
      'PS256',
      'PS384',
      'PS512',
    ];
    for (const algorithm of algorithms) {
      const { der, key } = await viaCreateCsr(
        algorithm,
        ['a.example.org', 'b.example.org'],
        'O=SPIFFE, CN=a',
      );
      const outcome = await parseCsrBothWays(der);
      expect(outcome, algorithm).toEqual({
        accepted: true,
        spiffeId: ID,
        dnsNames: ['a.example.org', 'b.example.org'],
        spki: spkiHex(key.publicKey),
      });
    }
  });

  it('judges openssl-made CSRs alike: EC, RSA, RSA-PSS and Ed25519 accepted; Ed448 and secp256k1 refused', async () => {
    const cases: [string, string[], string[], string][] = [
      ['p256', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'], [], 'accepted'],
      ['p384', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384'], ['-sha384'], 'accepted'],
      ['p521', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-521'], ['-sha512'], 'accepted'],
      ['rsa', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'], [], 'accepted'],
      [
        'rsapss',
        ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
        ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'],
        'accepted',
      ],
      [
        'extras',
        ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'],
        ['-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'keyUsage=critical,digitalSignature'],
        'accepted',
      ],
      ['ed25519', ['-algorithm', 'ED25519'], [], 'accepted'],
      ['ed448', ['-algorithm', 'ED448'], [], 'ERR_CSR_BAD_SIGNATURE'],
      ['k256', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:secp256k1'], [], 'ERR_CSR_BAD_SIGNATURE'],
    ];
    for (const [name, keyArgs, extra, expected] of cases) {
      const outcome = await parseCsrBothWays(await viaOpenssl(name, keyArgs, extra));
      expect(outcome.accepted ? 'accepted' : outcome.code, name).toBe(expected);
      if (outcome.accepted) expect(outcome.dnsNames, name).toEqual([`${name}.example.org`]);
    }
  });

  it('judges every one-bit corruption of an EC and an RSA CSR alike', async () => {
    for (const algorithm of ['ES256', 'RS256'] as const) {
      const { der } = await viaCreateCsr(algorithm, ['a.example.org']);
      const refusals = new Set<string>();
      for (let at = 0; at < der.length; at++) {
        const bad = Buffer.from(der);
        bad[at] = (bad[at] ?? 0) ^ (1 << (at % 8));
        const outcome = await parseCsrBothWays(bad);
        if (!outcome.accepted) refusals.add(outcome.code);
      }
      // Both refusal stages are reached, so the comparison covered more than the outer structure.
      expect([...refusals].sort(), algorithm).toEqual(
        expect.arrayContaining(['ERR_CSR_BAD_SIGNATURE', 'ERR_CSR_PARSE']),
      );
    }
  });

  it('judges @peculiar/x509-made CSRs with other name forms and extensions alike', async () => {
    const keys = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
      'sign',
      'verify',
    ]);
    const shapes: px.Extension[][] = [
      [
        new px.SubjectAlternativeNameExtension([
          { type: 'url', value: ID },
          { type: 'ip', value: '10.0.0.1' },
        ]),
      ],
      [
        new px.SubjectAlternativeNameExtension([
          { type: 'email', value: 'a@b.c' },
          { type: 'url', value: ID },
        ]),
      ],
      [
        new px.SubjectAlternativeNameExtension([{ type: 'url', value: ID }]),
        new px.SubjectAlternativeNameExtension([{ type: 'url', value: `${ID}/2` }]),
      ],
      [
        new px.SubjectAlternativeNameExtension([{ type: 'url', value: ID }]),
        new px.BasicConstraintsExtension(false),
      ],
      [new px.Extension('2.5.29.19', false, new Uint8Array())],
      [new px.SubjectAlternativeNameExtension([{ type: 'dns', value: 'only.dns' }])],
    ];
    const codes: string[] = [];
    for (const extensions of shapes) {
      const csr = await px.Pkcs10CertificateRequestGenerator.create(
        { keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' }, extensions },
        crypto,
      );
      const outcome = await parseCsrBothWays(new Uint8Array(csr.rawData));
      codes.push(outcome.accepted ? 'accepted' : outcome.code);
    }
    expect(codes).toEqual([
      'accepted',
      'accepted',
      'ERR_CSR_MULTIPLE_URI_SANS',
      'accepted',
      'ERR_CSR_PARSE',
      'ERR_CSR_NO_URI_SAN',
    ]);
  });

  it('reads an EC key sent uncompressed (the JWK import) and compressed (the DER decoder) as the same key', async () => {
    const outcome = await parseCsrBothWays(handmade());
    expect(outcome).toMatchObject({ accepted: true, spki: spkiHex(p256.publicKey) });
    // The same CSR with the point compressed: the previous parser accepted it, and so does this one.
    const compressed = p256.publicKey.export({ format: 'jwk' });
    const point = ECDH.convertKey(
      Buffer.concat([
        Buffer.of(4),
        Buffer.from(compressed.x ?? '', 'base64url'),
        Buffer.from(compressed.y ?? '', 'base64url'),
      ]),
      'prime256v1',
      undefined,
      undefined,
      'compressed',
    ) as Buffer;
    const spki = seq(
      seq(derOid('1.2.840.10045.2.1'), derOid('1.2.840.10045.3.1.7')),
      tlv(0x03, Buffer.concat([Buffer.of(0), point])),
    );
    const info = seq(INT0, seq(), spki, tlv(0xa0, extensionRequest(san(ia5(0x86, ID)))));
    const signature = sign('sha256', info, p256.privateKey);
    const der = seq(info, ECDSA_SHA256, tlv(0x03, Buffer.concat([Buffer.of(0), signature])));
    const parsed = await parseCsr(der);
    expect(parsed.publicKey.equals(p256.publicKey)).toBe(true);
    // Both parsers hand the key on as it was sent (OpenSSL keeps the point's form).
    expect(await parseCsrBothWays(der)).toMatchObject({ accepted: true, spiffeId: ID, spki: hex(spki) });
  });
});

describe('parseCsr: what the strict reader decides on its own', () => {
  const structure = /PKCS#10 certificate signing request/;
  /** What the previous parser made of `der`: 'accepted' or its code. */
  const previously = async (der: Uint8Array) => {
    try {
      await legacyParseCsr(der);
      return 'accepted';
    } catch (error) {
      return (error as { code?: string }).code;
    }
  };

  it('refuses bytes after the CSR, which the previous parser ignored', async () => {
    const der = Buffer.concat([handmade(), Buffer.of(5, 0)]);
    expect(await previously(der)).toBe('accepted');
    const error = await expectSpiffeRejection(parseCsr(der), 'ERR_CSR_PARSE', structure);
    expect(String(error.cause)).toMatch(/2 unexpected bytes after the last value/);
  });

  it('refuses a length not in its shortest form (BER, not DER)', async () => {
    const good = Buffer.from(handmade());
    // The outer SEQUENCE's two-byte length rewritten with a third, leading zero byte.
    expect(good[1]).toBe(0x81);
    const ber = Buffer.concat([Buffer.of(0x30, 0x82, 0x00), good.subarray(2)]);
    expect(await previously(ber)).toBe('accepted');
    const error = await expectSpiffeRejection(parseCsr(ber), 'ERR_CSR_PARSE', structure);
    expect(String(error.cause)).toMatch(/length has a leading zero byte/);
  });

  it('refuses a version other than v1 and a CSR without its attributes field, though signed', async () => {
    const version2 = handmade({ version: Uint8Array.of(0x02, 0x01, 0x01) });
    expect(await previously(version2)).toBe('accepted');
    const v2 = await expectSpiffeRejection(parseCsr(version2), 'ERR_CSR_PARSE', structure);
    expect(String(v2.cause)).toMatch(/version 1, expected 0/);
    expect(await previously(handmade({ attributes: undefined }))).toBe('ERR_CSR_NO_URI_SAN');
    const none = await expectSpiffeRejection(
      parseCsr(handmade({ attributes: undefined })),
      'ERR_CSR_PARSE',
      structure,
    );
    expect(String(none.cause)).toMatch(/attributes missing/);
  });

  it('refuses a wrong tag where the subject should be, as before', async () => {
    const setSubject = handmade({ subject: tlv(0x31, new Uint8Array()) });
    expect(await previously(setSubject)).toBe('ERR_CSR_PARSE');
    const error = await expectSpiffeRejection(parseCsr(setSubject), 'ERR_CSR_PARSE', structure);
    expect(String(error.cause)).toMatch(/subject has tag 0x31, expected 0x30/);
  });

  it('refuses a subjectAltName value that is not a GeneralNames SEQUENCE, and two extensionRequests', async () => {
    const notNames = handmade({
      attributes: [extensionRequest(extension('2.5.29.17', Uint8Array.of(0xa0, 0)))],
    });
    expect(await previously(notNames)).toBe('ERR_CSR_NO_URI_SAN');
    const error = await expectSpiffeRejection(parseCsr(notNames), 'ERR_CSR_PARSE', /does not decode/);
    expect(String(error.cause)).toMatch(/GeneralNames has tag 0xa0, expected 0x30/);
    const twice = handmade({
      attributes: [extensionRequest(san(ia5(0x86, ID))), extensionRequest(san(ia5(0x86, `${ID}/2`)))],
    });
    // The previous parser read the first and ignored the second.
    expect(await previously(twice)).toBe('accepted');
    const two = await expectSpiffeRejection(parseCsr(twice), 'ERR_CSR_PARSE', /does not decode/);
    expect(String(two.cause)).toMatch(/2 extensionRequest attributes/);
  });

  it('refuses a critical flag that is not a DER BOOLEAN', async () => {
    const loose = handmade({
      attributes: [
        extensionRequest(extension('2.5.29.17', seq(ia5(0x86, ID)), Uint8Array.of(0x01, 0x01, 0x01))),
      ],
    });
    expect(await previously(loose)).toBe('accepted');
    const error = await expectSpiffeRejection(parseCsr(loose), 'ERR_CSR_PARSE', structure);
    expect(String(error.cause)).toMatch(/BOOLEAN is not DER \(not one byte of 00 or FF\)/);
  });

  it('accepts and ignores an unknown critical extension: the SVID is built from its own template', async () => {
    const csr = handmade({
      attributes: [
        extensionRequest(san(ia5(0x86, ID)), extension('1.3.6.1.4.1.99999.1', Uint8Array.of(5, 0), TRUE)),
      ],
    });
    expect(await parseCsrBothWays(csr)).toMatchObject({ accepted: true, spiffeId: ID, dnsNames: [] });
  });

  it('refuses a signature that does not verify, and ECDSA with parameters, naming the reason in the cause', async () => {
    const other = await expectSpiffeRejection(
      parseCsr(handmade({ signOther: true })),
      'ERR_CSR_BAD_SIGNATURE',
      /does not verify/,
    );
    expect(String(other.cause)).toMatch(/signature does not verify/);
    const withParams = handmade({ algorithm: seq(derOid('1.2.840.10045.4.3.2'), Uint8Array.of(5, 0)) });
    expect(await previously(withParams)).toBe('accepted');
    const params = await expectSpiffeRejection(
      parseCsr(withParams),
      'ERR_CSR_BAD_SIGNATURE',
      /does not verify/,
    );
    expect(String(params.cause)).toMatch(
      /ECDSA signature algorithm 1\.2\.840\.10045\.4\.3\.2 with parameters/,
    );
    // An RSA key cannot answer for an ECDSA signature.
    const rsa = newKeyPair('rsa', { modulusLength: 2048 });
    const mismatch = await expectSpiffeRejection(
      parseCsr(handmade({}, rsa)),
      'ERR_CSR_BAD_SIGNATURE',
      /does not verify/,
    );
    expect(String(mismatch.cause)).toMatch(/a rsa key cannot check a ec signature/);
  });

  it('refuses a CSR signed with SHA-1, which the previous parser accepted', async () => {
    const sha1 = await viaOpenssl(
      'sha1',
      ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
      ['-sha1'],
    );
    expect(await previously(sha1)).toBe('accepted');
    const error = await expectSpiffeRejection(parseCsr(sha1), 'ERR_CSR_BAD_SIGNATURE', /does not verify/);
    expect(String(error.cause)).toMatch(/unsupported CSR signature algorithm 1\.2\.840\.113549\.1\.1\.5/);
  });
});
