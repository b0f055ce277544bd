/**
 * Fuzzes the TPM parsers that read what an agent sends the server: TPM2B_PUBLIC (EK and AK), the
 * quote (TPMS_ATTEST and TPMT_SIGNATURE, also verified end to end with a real AK key), PCR
 * selections, NV public areas, credential blobs, EK certificates from swtpm (DER, NV-wrapped, PEM)
 * and real firmware event logs. See harness.ts for the oracle and the seeds.
 */
import { execFileSync } from 'node:child_process';
import { createHash, type KeyObject, sign, X509Certificate } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll } from 'vitest';
import { manufactureConfig } from '../../src/demo/swtpm.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { akTemplate } from '../../src/tpm/agent/ak.js';
import { ekProfile } from '../../src/tpm/agent/ek-templates.js';
import { marshalAttest, parseAttest } from '../../src/tpm/codec/attest.js';
import { TPM_ALG, TPM_GENERATED_VALUE, TPM_ST } from '../../src/tpm/codec/constants.js';
import {
  marshalIdObject,
  marshalTpm2ToolsCredential,
  parseIdObject,
  parseTpm2ToolsCredential,
} from '../../src/tpm/codec/credential.js';
import { marshalNvPublic, parseTpm2bNvPublic } from '../../src/tpm/codec/nv.js';
import { marshalPcrSelections, parsePcrSelections, pcrSelection } from '../../src/tpm/codec/pcr.js';
import {
  marshalTpm2bPublic,
  objectName,
  parsePublicArea,
  parseTpm2bPublic,
  type TpmtPublic,
} from '../../src/tpm/codec/public.js';
import { publicKeyFromArea } from '../../src/tpm/codec/public-key.js';
import { marshalSignature, parseSignature, type TpmtSignature } from '../../src/tpm/codec/signature.js';
import { bootFacts, selfBootFacts } from '../../src/tpm/eventlog/facts.js';
import { parseEventLog } from '../../src/tpm/eventlog/parse.js';
import { compareWithPcrs, replay } from '../../src/tpm/eventlog/replay.js';
import { checkDataDigests, decodeAll, summarize } from '../../src/tpm/eventlog/summary.js';
import { checkAkPublic } from '../../src/tpm/verify/ak.js';
import {
  checkEkCertificateKey,
  ekCertificateTpmInfo,
  ekPublicKeyHash,
  parseCertificateBundle,
  parseEkCertificate,
  verifyEkCertificateChain,
} from '../../src/tpm/verify/ek-certificate.js';
import { verifyQuote } from '../../src/tpm/verify/quote.js';
import { fuzz, fuzzSuite, mutated, randomBytes } from './harness.js';

const b64u = (s: string | undefined) => new Uint8Array(Buffer.from(s ?? '', 'base64url'));

/** `template` with `key` as its unique field: a public area as a TPM would return it. */
function areaWith(template: TpmtPublic, key: KeyObject): TpmtPublic {
  const jwk = key.export({ format: 'jwk' });
  return template.type === TPM_ALG.RSA
    ? { ...template, unique: b64u(jwk.n) }
    : { ...template, unique: { x: b64u(jwk.x), y: b64u(jwk.y) } };
}

const akEc = newKeyPair('ec', { namedCurve: 'P-256' });
const akRsa = newKeyPair('rsa', { modulusLength: 2048 });
const aks = [
  { area: areaWith(akTemplate('ecc-p256'), akEc.publicKey), key: akEc.privateKey },
  { area: areaWith(akTemplate('rsa2048'), akRsa.publicKey), key: akRsa.privateKey },
];
const nonce = new Uint8Array(32).fill(7);
const selection = [pcrSelection(TPM_ALG.SHA256, [0, 1, 7])];
const pcrValues = [0, 1, 7].map((i) => new Uint8Array(32).fill(i));
const pcrDigest = createHash('sha256').update(Buffer.concat(pcrValues)).digest();
const attest = marshalAttest({
  magic: TPM_GENERATED_VALUE,
  type: TPM_ST.ATTEST_QUOTE,
  qualifiedSigner: objectName(aks[0]?.area as TpmtPublic),
  extraData: nonce,
  clockInfo: { clock: 123456n, resetCount: 1, restartCount: 0, safe: true },
  firmwareVersion: 0x2019_1023n,
  attested: { kind: 'quote', pcrSelect: selection, pcrDigest: new Uint8Array(pcrDigest) },
});

/** The AK's TPMT_SIGNATURE over `data`, as TPM2_Quote makes it. */
function quoteSignature(ak: (typeof aks)[number], data: Uint8Array): TpmtSignature {
  if (ak.area.type === TPM_ALG.RSA) {
    return { sigAlg: TPM_ALG.RSASSA, hash: TPM_ALG.SHA256, signature: sign('sha256', data, ak.key) };
  }
  const rs = sign('sha256', data, { key: ak.key, dsaEncoding: 'ieee-p1363' });
  return { sigAlg: TPM_ALG.ECDSA, hash: TPM_ALG.SHA256, r: rs.subarray(0, 32), s: rs.subarray(32) };
}

const publicSamples = [
  ...aks.map((ak) => marshalTpm2bPublic(ak.area)),
  ...(['rsa2048', 'ecc-p256', 'ecc-p384-high'] as const).map((kind) =>
    marshalTpm2bPublic(ekProfile(kind).template),
  ),
];
const signatureSamples = aks.map((ak) => marshalSignature(quoteSignature(ak, attest)));

/** Every real event log fixture (binary files only). */
function eventLogSamples(): Buffer[] {
  const out: Buffer[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (!/\.(ya?ml|json|md|b64|warn)$/.test(name) && name !== 'ek-template-default.bin') {
        const bytes = readFileSync(path);
        if (bytes.length > 0) out.push(bytes);
      }
    }
  };
  walk(join(import.meta.dirname, '../fixtures/eventlogs'));
  return out;
}
const logs = eventLogSamples();

/** Everything the server and the profile tools derive from a log. */
function digestLog(bytes: Uint8Array): void {
  const log = parseEventLog(Buffer.from(bytes));
  summarize(log, decodeAll(log));
  checkDataDigests(log);
  const replayed = replay(log);
  selfBootFacts(log);
  // As the server does with a quote: compare with reported values, then bind the covered PCRs.
  for (const [bank, values] of replayed.banks) {
    const pcrs = [...values.pcrs.keys()].filter((pcr) => pcr < 10 && replayed.extended.has(pcr));
    const reported = new Map(pcrs.map((pcr) => [pcr, values.pcrs.get(pcr) ?? Buffer.alloc(0)]));
    compareWithPcrs(log, new Map([[bank, reported]]), { required: pcrs });
    bootFacts(log, { bank, pcrs });
  }
}

// EK certificates as swtpm's local CA makes them, for a real manufacturer-style chain.
let dir: string;
const ekCerts: Uint8Array[] = [];
let root: X509Certificate;
let issuer: X509Certificate;
let ekAreas: TpmtPublic[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ironroot-fuzz-ek-'));
  const { caDir, setupArgs } = await manufactureConfig(dir, join(dir, 'state'));
  execFileSync('mkdir', ['-p', join(dir, 'state'), join(dir, 'certs')]);
  execFileSync('swtpm_setup', [...setupArgs, '--write-ek-cert-files', join(dir, 'certs')]);
  for (const name of readdirSync(join(dir, 'certs')).sort())
    ekCerts.push(readFileSync(join(dir, 'certs', name)));
  root = new X509Certificate(readFileSync(join(caDir, 'swtpm-localca-rootca-cert.pem')));
  issuer = new X509Certificate(readFileSync(join(caDir, 'issuercert.pem')));
  // The EK public areas those certificates certify, as the agent would send them.
  ekAreas = ekCerts.map((der) => {
    const key = new X509Certificate(der).publicKey;
    return areaWith(ekProfile(key.asymmetricKeyType === 'rsa' ? 'rsa2048' : 'ecc-p384-high').template, key);
  });
  // The NV form: PC Client header `10 01 00 len`, then the DER, then padding.
  const [first] = ekCerts;
  if (first !== undefined) {
    const header = Buffer.from([0x10, 0x01, first.length >> 8, first.length & 0xff]);
    ekCerts.push(Buffer.concat([header, first, Buffer.alloc(16, 0xff)]));
  }
});
afterAll(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

/** What the server does with an EK certificate an agent sent. */
function admitEkCertificate(input: Uint8Array): void {
  const cert = parseEkCertificate(input);
  for (const area of ekAreas) {
    try {
      checkEkCertificateKey(cert, area);
    } catch (error) {
      if (!(error instanceof Error && 'code' in error && error.code === 'ERR_TPM_EK_MISMATCH')) throw error;
    }
  }
  ekCertificateTpmInfo(cert);
  verifyEkCertificateChain(cert, { roots: [root], intermediates: [issuer] }, new Date());
}

fuzzSuite('TPM parsers', () => {
  fuzz(
    'TPM2B_PUBLIC: parseTpm2bPublic + key, name, EK hash, AK check',
    fc.oneof(mutated(publicSamples), randomBytes),
    (bytes) => {
      const { area } = parseTpm2bPublic(bytes);
      objectName(area);
      publicKeyFromArea(area);
      ekPublicKeyHash(area);
      checkAkPublic(area);
    },
    400,
  );
  fuzz(
    'TPMT_PUBLIC: parsePublicArea',
    mutated(publicSamples.map((b) => b.subarray(2))),
    (b) => parsePublicArea(b),
    300,
  );
  fuzz('TPMS_ATTEST: parseAttest', fc.oneof(mutated([attest]), randomBytes), (b) => parseAttest(b), 300);
  fuzz(
    'TPMT_SIGNATURE: parseSignature',
    fc.oneof(mutated(signatureSamples), randomBytes),
    (b) => parseSignature(b),
    300,
  );
  fuzz(
    'verifyQuote (mutated attest signed by the AK)',
    fc.tuple(mutated([attest]), fc.nat({ max: aks.length - 1 })),
    ([bytes, which]) => {
      const ak = aks[which] ?? aks[0];
      if (ak === undefined) return;
      verifyQuote({
        akPublic: ak.area,
        attest: bytes,
        signature: quoteSignature(ak, bytes),
        nonce,
        pcrSelection: selection,
        pcrValues,
      });
    },
    200,
  );
  fuzz(
    'verifyQuote (mutated signature)',
    fc.tuple(mutated(signatureSamples), fc.nat({ max: aks.length - 1 })),
    ([signature, which]) => {
      const ak = aks[which] ?? aks[0];
      if (ak === undefined) return;
      verifyQuote({ akPublic: ak.area, attest, signature, nonce, pcrSelection: selection, pcrValues });
    },
    200,
  );
  fuzz(
    'TPML_PCR_SELECTION: parsePcrSelections',
    fc.oneof(mutated([marshalPcrSelections(selection)]), randomBytes),
    (b) => parsePcrSelections(b),
    200,
  );
  fuzz(
    'TPM2B_NV_PUBLIC: parseTpm2bNvPublic',
    fc.oneof(
      mutated([
        (() => {
          const body = marshalNvPublic({
            nvIndex: 0x01c00002,
            nameAlg: TPM_ALG.SHA256,
            attributes: 0x2002000a,
            authPolicy: new Uint8Array(32),
            dataSize: 1016,
          });
          return Buffer.concat([Buffer.from([body.length >> 8, body.length & 0xff]), body]);
        })(),
      ]),
      randomBytes,
    ),
    (b) => parseTpm2bNvPublic(b),
    200,
  );
  const credentialSamples = [
    marshalIdObject({ integrityHmac: new Uint8Array(32).fill(1), encIdentity: new Uint8Array(34).fill(2) }),
    marshalTpm2ToolsCredential({
      credentialBlob: marshalIdObject({ integrityHmac: new Uint8Array(32), encIdentity: new Uint8Array(34) }),
      secret: new Uint8Array(256).fill(3),
    }),
  ];
  fuzz('TPM2B_ID_OBJECT: parseIdObject', mutated(credentialSamples), (b) => parseIdObject(b), 150);
  fuzz(
    'credential file: parseTpm2ToolsCredential',
    mutated(credentialSamples),
    (b) => parseTpm2ToolsCredential(b),
    150,
  );
  fuzz(
    'EK certificate: parseEkCertificate + key match, TPM info, chain',
    fc.oneof(
      fc.constant(null).chain(() => mutated(ekCerts)),
      fc
        .constant(null)
        .chain(() => mutated(ekCerts.slice(0, 2)))
        .map((der) =>
          new TextEncoder().encode(
            `-----BEGIN CERTIFICATE-----\n${Buffer.from(der).toString('base64')}\n-----END CERTIFICATE-----\n`,
          ),
        ),
      randomBytes,
    ),
    admitEkCertificate,
    300,
  );
  fuzz(
    'EK chain: parseEkCertificate of a mutated intermediate, then verifyEkCertificateChain',
    fc.constant(null).chain(() => mutated([issuer.raw, root.raw])),
    (der) => {
      const [leaf] = ekCerts;
      if (leaf === undefined) return;
      verifyEkCertificateChain(parseEkCertificate(leaf), {
        roots: [root],
        intermediates: [parseEkCertificate(der)],
      });
    },
    200,
  );
  fuzz(
    'EK trust store: parseCertificateBundle',
    fc
      .constant(null)
      .chain(() =>
        mutated([Buffer.from(`${issuer.toString()}${root.toString()}`)]).map((b) =>
          Buffer.from(b).toString('latin1'),
        ),
      ),
    (pem) => parseCertificateBundle(pem, 'ek-ca.pem'),
    200,
  );
  fuzz('event log: parse, decode, summarize, replay, compare, boot facts', mutated(logs), digestLog, 120);
});
