import type { KeyObject } from 'node:crypto';
import { readCsr, requestedNames } from './csr-reader.js';
import { publicKeyOf, verifiesCsr } from './csr-signature.js';
import { pemBlocks } from './der.js';
import {
  derName,
  derOid,
  seq,
  signatureValue,
  signedDer,
  subjectAltName,
  subjectPublicKeyInfo,
  TAG,
} from './der-writer.js';
import { SpiffeError } from './errors.js';
import { checkProducible } from './id-syntax.js';
import type { Signer } from './signer.js';
import { SpiffeId } from './spiffe-id.js';
import { tlv } from './x509-extensions.js';

/** What goes into a CSR. */
export interface CsrTemplate {
  /** The SPIFFE ID requested, carried as the one URI SAN. */
  spiffeId: SpiffeId;
  /** Extra DNS SANs requested. */
  dnsNames?: readonly string[];
  /** Subject DN (RFC 4514 text); default empty. */
  subject?: string;
}

/** A CSR whose self-signature verified. */
export interface ParsedCsr {
  /** The requested SPIFFE ID (the one URI SAN). */
  readonly spiffeId: SpiffeId;
  /** The requested DNS SANs. */
  readonly dnsNames: readonly string[];
  /** The key the requester proved it holds; the issued certificate certifies it. */
  readonly publicKey: KeyObject;
}

const VERSION_1 = Uint8Array.of(TAG.INTEGER, 1, 0);
const EXTENSION_REQUEST = derOid('1.2.840.113549.1.9.14');

/**
 * Builds a PKCS#10 CSR (DER) for `signer`'s key, requesting `spiffeId` as its one URI SAN (in an
 * extensionRequest attribute), then the DNS names; the SAN is critical when the subject is empty.
 * The signer signs it, which proves possession of the key.
 *
 * Encoded directly (der-writer.ts), byte for byte what @peculiar/x509's generator wrote: building
 * it through that library's ASN.1 objects was about 1–3 ms of JavaScript and most of the garbage
 * an agent makes while it re-issues every SVID after a CA rotation.
 *
 * @throws SpiffeError `ERR_SPIFFEID_TOO_LONG` past 2048 bytes.
 * @throws TypeError when a DNS name is not ASCII (a SAN holds an IA5String; use the A-label).
 */
export async function createCsr(template: CsrTemplate, signer: Signer): Promise<Uint8Array> {
  const spiffeId = template.spiffeId.toString();
  checkProducible(spiffeId, 'cannot request a certificate');
  const subject = template.subject ?? '';
  const extensions = seq(subjectAltName(spiffeId, template.dnsNames ?? [], subject === ''));
  const info = seq(
    VERSION_1,
    derName(subject),
    subjectPublicKeyInfo(signer.publicKey),
    // attributes [0]: the one extensionRequest, a SET holding the Extensions.
    tlv(0xa0, seq(EXTENSION_REQUEST, tlv(TAG.SET, extensions))),
  );
  const signature = signatureValue(signer.algorithm, await signer.sign(info));
  return signedDer(info, signer.algorithm, signature);
}

/**
 * Parses a CSR (DER bytes or PEM text), checks its self-signature and returns the requested SPIFFE ID,
 * DNS names and public key. Whether the requester may have that ID is the issuer's decision.
 *
 * The CSR is read as strict DER (see csr-reader.ts); the signature is checked with node:crypto over
 * the exact CertificationRequestInfo bytes, with the key decoded once. Refusals keep their order:
 * structure and key, then signature, then the requested extensions.
 *
 * @throws SpiffeError `ERR_CSR_PARSE`, `ERR_CSR_BAD_SIGNATURE`, `ERR_CSR_NO_URI_SAN`,
 *   `ERR_CSR_MULTIPLE_URI_SANS`, or an `ERR_SPIFFEID_*` code for an invalid ID.
 */
export async function parseCsr(input: Uint8Array | string): Promise<ParsedCsr> {
  let csr: ReturnType<typeof readCsr>;
  let publicKey: KeyObject;
  try {
    const der =
      typeof input === 'string'
        ? pemBlocks(input).find((b) => b.label === 'CERTIFICATE REQUEST')?.der
        : input;
    if (der === undefined) throw new Error('no CERTIFICATE REQUEST PEM block');
    csr = readCsr(der);
    publicKey = publicKeyOf(csr.spki);
  } catch (err) {
    throw new SpiffeError(
      'ERR_CSR_PARSE',
      'input is not a PKCS#10 certificate signing request (DER or PEM)',
      {
        cause: err,
      },
    );
  }
  const verdict = await verifiesCsr(csr, publicKey);
  if (verdict !== true) {
    throw new SpiffeError(
      'ERR_CSR_BAD_SIGNATURE',
      "CSR signature does not verify with the CSR's own public key; the requester must sign it with the key it asks to certify",
      { cause: verdict },
    );
  }
  let names: { uris: string[]; dnsNames: string[] };
  try {
    names = requestedNames(csr);
  } catch (err) {
    throw new SpiffeError('ERR_CSR_PARSE', 'CSR carries an extension that does not decode; rebuild the CSR', {
      cause: err,
    });
  }
  const { uris, dnsNames } = names;
  if (uris.length > 1) {
    throw new SpiffeError(
      'ERR_CSR_MULTIPLE_URI_SANS',
      `CSR requests ${uris.length} URI SANs; an X.509-SVID has exactly one`,
    );
  }
  const uri = uris[0];
  if (uri === undefined) {
    throw new SpiffeError(
      'ERR_CSR_NO_URI_SAN',
      'CSR requests no URI SAN; it must carry the SPIFFE ID as its one URI SAN',
    );
  }
  // An IA5String holds ASCII only; a certificate could not carry such a name back as it was asked.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: IA5 is exactly the 7-bit range.
  const notAscii = dnsNames.find((name) => !/^[\x00-\x7f]*$/.test(name));
  if (notAscii !== undefined) {
    throw new SpiffeError(
      'ERR_CSR_PARSE',
      `CSR requests the DNS SAN ${JSON.stringify(notAscii)}, which is not ASCII; request its A-label (punycode) form`,
    );
  }
  return { spiffeId: SpiffeId.parse(uri), dnsNames, publicKey };
}
