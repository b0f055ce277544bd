/**
 * CSRs encoded directly (createCsr, src/spiffe/csr.ts) against the same requests built by
 * @peculiar/x509's generator as createCsr built them before (test/helpers/legacy-csr.ts): the
 * CertificationRequestInfo and the signature algorithm byte for byte, the whole CSR where the
 * signature is deterministic (RSA PKCS#1 v1.5), the signature checked with node:crypto otherwise;
 * then parseCsr, the previous parser and `openssl req -verify` must all accept it with the same fields.
 */
import { execFile } from 'node:child_process';
import { constants, type KeyObject, verify } from 'node:crypto';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { createCsr, parseCsr } from '../../src/spiffe/csr.js';
import { splitDer, toPem } from '../../src/spiffe/der.js';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import type { Signer, SigningAlgorithm } from '../../src/spiffe/signer.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { readTlvs } from '../../src/spiffe/x509-extensions.js';
import { legacyCreateCsr, parseCsrBothWays } from '../helpers/legacy-csr.js';
import { tempDir } from '../helpers/x509.js';

const run = promisify(execFile);
const tmp = tempDir();
afterAll(() => tmp.cleanup());

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

/** The three parts of a CertificationRequest: info and algorithm as encoded, the signature's bytes. */
function partsOf(der: Uint8Array): { info: string; algorithm: string; signature: Uint8Array } {
  const outer = readTlvs(der);
  expect(
    outer?.map((f) => f.tag),
    'one outer SEQUENCE',
  ).toEqual([0x30]);
  const [info, algorithm, signature] = splitDer(outer?.[0]?.content ?? new Uint8Array()) ?? [];
  expect([info?.[0], algorithm?.[0], signature?.[0]]).toEqual([0x30, 0x30, 0x03]);
  const bits = readTlvs(signature ?? new Uint8Array())?.[0]?.content ?? new Uint8Array();
  expect(bits[0], 'no unused bits in the signature').toBe(0);
  return {
    info: hex(info ?? new Uint8Array()),
    algorithm: hex(algorithm ?? new Uint8Array()),
    signature: bits.subarray(1),
  };
}

/** Whether `signature` verifies over `info` with `publicKey` under `algorithm`, by node:crypto alone. */
function verifies(
  algorithm: SigningAlgorithm,
  info: Uint8Array,
  publicKey: KeyObject,
  signature: Uint8Array,
) {
  const hash = `sha${algorithm.slice(2)}`;
  if (algorithm.startsWith('ES'))
    return verify(hash, info, { key: publicKey, dsaEncoding: 'der' }, signature);
  if (algorithm.startsWith('PS')) {
    const saltLength = Number(algorithm.slice(2)) / 8;
    return verify(
      hash,
      info,
      { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength },
      signature,
    );
  }
  return verify(hash, info, publicKey, signature);
}

interface Case {
  spiffeId: SpiffeId;
  dnsNames?: string[];
  subject?: string;
}

/** Builds `request` both ways with `signer`: same info and algorithm, and a signature that verifies. */
async function encodesAsLegacy(request: Case, signer: Signer): Promise<Uint8Array> {
  const now = await createCsr(request, signer);
  const before = await legacyCreateCsr(request, signer);
  const a = partsOf(now);
  const b = partsOf(before);
  expect(a.info, 'CertificationRequestInfo').toBe(b.info);
  expect(a.algorithm, 'signatureAlgorithm').toBe(b.algorithm);
  if (signer.algorithm.startsWith('RS'))
    expect(hex(now), 'whole CSR (deterministic signature)').toBe(hex(before));
  expect(verifies(signer.algorithm, Buffer.from(a.info, 'hex'), signer.publicKey, a.signature)).toBe(true);
  return now;
}

/**
 * {@link encodesAsLegacy}, then parseCsr and the previous parser read the request back. openssl
 * ({@link opensslAccepts}) runs on fewer cases since it starts a process.
 */
async function sameAsLegacy(request: Case, signer: Signer): Promise<Uint8Array> {
  const now = await encodesAsLegacy(request, signer);
  const parsed = await parseCsr(now);
  expect(parsed.spiffeId.toString()).toBe(request.spiffeId.toString());
  expect(parsed.dnsNames).toEqual(request.dnsNames ?? []);
  expect(parsed.publicKey.equals(signer.publicKey)).toBe(true);
  // The previous parser (@peculiar/x509 and WebCrypto) reads the same request out of it.
  const both = await parseCsrBothWays(now);
  expect(both).toMatchObject({ accepted: true, spiffeId: request.spiffeId.toString() });
  return now;
}

let files = 0;
async function opensslAccepts(der: Uint8Array, request: Case): Promise<void> {
  const path = tmp.write(`req-${files++}.pem`, toPem('CERTIFICATE REQUEST', der));
  const { stdout, stderr } = await run('openssl', ['req', '-in', path, '-verify', '-noout', '-text']);
  expect(stdout + stderr).toMatch(/verify OK/i);
  const names = [`URI:${request.spiffeId.toString()}`, ...(request.dnsNames ?? []).map((n) => `DNS:${n}`)];
  expect(stdout.replace(/\s+/g, ' ')).toContain(names.join(', '));
}

const idOfLength = (length: number): SpiffeId => {
  const prefix = 'spiffe://example.org/';
  return SpiffeId.parse(prefix + 'w'.repeat(length - prefix.length));
};

function ecSigner(namedCurve: string, algorithm?: SigningAlgorithm): Signer {
  return createKeySigner(newKeyPair('ec', { namedCurve }).privateKey, algorithm);
}
const rsaKeys = {
  2048: newKeyPair('rsa', { modulusLength: 2048 }).privateKey,
  3072: newKeyPair('rsa', { modulusLength: 3072 }).privateKey,
};

/** Every algorithm createKeySigner signs with, on the key it fits. Ed25519 keys it refuses. */
const signers: [string, () => Signer][] = [
  ['ES256 P-256', () => ecSigner('P-256')],
  ['ES384 P-384', () => ecSigner('P-384')],
  ['RS256 RSA-2048', () => createKeySigner(rsaKeys[2048], 'RS256')],
  ['RS384 RSA-3072', () => createKeySigner(rsaKeys[3072], 'RS384')],
  ['RS512 RSA-2048', () => createKeySigner(rsaKeys[2048], 'RS512')],
  ['PS256 RSA-2048', () => createKeySigner(rsaKeys[2048], 'PS256')],
  ['PS384 RSA-3072', () => createKeySigner(rsaKeys[3072], 'PS384')],
  ['PS512 RSA-2048', () => createKeySigner(rsaKeys[2048], 'PS512')],
  // createKeySigner takes a P-521 key only with an explicit algorithm (its default is refused).
  ['ES384 P-521', () => ecSigner('P-521', 'ES384')],
];

const cases: [string, Case][] = [
  ['no DNS names, no subject', { spiffeId: SpiffeId.parse('spiffe://example.org/agent/tpm/abc') }],
  ['one DNS name', { spiffeId: idOfLength(127), dnsNames: ['node1.example.org'] }],
  [
    'three DNS names and a subject',
    {
      spiffeId: idOfLength(128),
      dnsNames: ['a.example.org', 'b.example.org', 'c.example.org'],
      subject: 'CN=workload, O=Example Org, C=DE',
    },
  ],
  ['a subject and no DNS names', { spiffeId: idOfLength(256), subject: 'CN=web' }],
  ['the longest ID (2048 bytes)', { spiffeId: idOfLength(2048), dnsNames: ['x.example.org'] }],
];

describe('createCsr encodes what @peculiar/x509 encoded', () => {
  for (const [name, makeSigner] of signers) {
    it(`${name}: each request, then openssl verifies it`, async () => {
      const signer = makeSigner();
      for (const [label, request] of cases) {
        const der = await sameAsLegacy(request, signer).catch((error: Error) => {
          throw new Error(`${label}: ${error.message}`);
        });
        await opensslAccepts(der, request);
      }
    });
  }

  it('a key whose SubjectPublicKeyInfo comes from OpenSSL (secp256k1), which issuers refuse', async () => {
    const signer = ecSigner('secp256k1', 'ES256');
    for (const [label, request] of cases) {
      const der = await encodesAsLegacy(request, signer).catch((error: Error) => {
        throw new Error(`${label}: ${error.message}`);
      });
      await opensslAccepts(der, request);
      // Both parsers refuse it alike: neither verifies signatures on curves outside P-256/384/521.
      expect(await parseCsrBothWays(der)).toMatchObject({ accepted: false, code: 'ERR_CSR_BAD_SIGNATURE' });
    }
  });

  it('SPIFFE IDs of 100–300 bytes: every DER length crossing 127/128 and 255/256', async () => {
    const signer = ecSigner('P-256');
    for (let length = 100; length <= 300; length++) {
      const request = {
        spiffeId: idOfLength(length),
        ...(length % 2 ? { dnsNames: ['a.example.org'] } : {}),
      };
      await sameAsLegacy(request, signer).catch((error: Error) => {
        throw new Error(`ID of ${length} bytes: ${error.message}`);
      });
    }
    const rsa = createKeySigner(rsaKeys[2048], 'RS256');
    for (const length of [120, 127, 128, 129, 250, 255, 256, 257]) {
      await sameAsLegacy({ spiffeId: idOfLength(length) }, rsa);
    }
  });

  it('1100 DNS names: lengths past 65 535 bytes (three length bytes)', async () => {
    const dnsNames = Array.from({ length: 1100 }, (_, i) => `${'h'.repeat(50)}-${i}.example.org`);
    const request = { spiffeId: idOfLength(300), dnsNames };
    const der = await sameAsLegacy(request, createKeySigner(rsaKeys[2048], 'RS256'));
    expect(der.length).toBeGreaterThan(65_535);
    expect(hex(der.subarray(0, 2)), 'SEQUENCE with three length bytes').toBe('3083');
    await opensslAccepts(der, request);
  });

  it('refuses a DNS name that is not ASCII, naming it', async () => {
    await expect(
      createCsr({ spiffeId: idOfLength(40), dnsNames: ['bücher.example'] }, ecSigner('P-256')),
    ).rejects.toThrow(/DNS SAN "bücher\.example" is not ASCII/);
  });

  it('a signer whose ECDSA signature is not r‖s of equal halves is refused', async () => {
    const good = ecSigner('P-256');
    const odd: Signer = { ...good, sign: async () => new Uint8Array(63) };
    await expect(createCsr({ spiffeId: idOfLength(40) }, odd)).rejects.toThrow(/63 bytes; expected r‖s/);
  });
});
