/**
 * Reads PKCS#10 certification requests (RFC 2986) with the strict DER reader and finds the names
 * they request; csr-signature.ts decodes their key and checks their signature.
 *
 * Decoding CSRs through @peculiar/x509 (asn1js) and verifying through WebCrypto (which decodes the
 * key a second time) was most of an issuance's CPU time. What the issuer uses is read here
 * directly: the CertificationRequestInfo's exact bytes, the key, the signature algorithm and value,
 * and the subjectAltName's URI and DNS names. The rest of the request is still checked as before:
 * any other attribute or extension, and a subjectAltName holding any other kind of name, is decoded
 * by @peculiar/x509 as it always was (rare: our agents and SPIRE's send only the SAN), so what
 * decodes and what is refused stays the same.
 *
 * @module
 */
import {
  bitStringBytes,
  booleanValue,
  checkDerTree,
  DerError,
  DerReader,
  oidText,
  readOne,
  smallUnsigned,
  TAG,
} from '../der/index.js';
import * as px from './peculiar.js';
import { OID } from './x509-extensions.js';

/** The parts of a CSR read before its signature is checked. */
export interface CsrParts {
  /** CertificationRequestInfo as encoded: what the signature covers. */
  readonly info: Uint8Array;
  /** SubjectPublicKeyInfo as encoded. */
  readonly spki: Uint8Array;
  /** Each attribute: its type and its SET of values' content. */
  readonly attributes: readonly { type: string; values: Uint8Array; encoded: Uint8Array }[];
  /** signatureAlgorithm: the OID and its parameters (undefined when absent). */
  readonly signatureOid: string;
  readonly signatureParams: Uint8Array | undefined;
  /** The signature bytes (for ECDSA, the DER ECDSA-Sig-Value). */
  readonly signature: Uint8Array;
}

const EXTENSION_REQUEST = '1.2.840.113549.1.9.14';

/**
 * Reads a CSR's structure: every layer down to the attributes, in DER, with nothing after it.
 *
 * @throws DerError naming what is malformed.
 */
export function readCsr(der: Uint8Array): CsrParts {
  checkDerTree(der, 'CertificationRequest');
  const outer = new DerReader(
    readOne(der, TAG.SEQUENCE, 'CertificationRequest').content,
    'CertificationRequest',
  );
  const info = outer.read(TAG.SEQUENCE, 'certificationRequestInfo');
  const algorithm = outer.read(TAG.SEQUENCE, 'signatureAlgorithm');
  const signature = bitStringBytes(outer.read(TAG.BIT_STRING, 'signature'), 'signature');
  outer.end();

  const fields = new DerReader(info.content, 'certificationRequestInfo');
  const version = smallUnsigned(fields.read(TAG.INTEGER, 'version'), 'version');
  if (version !== 0) throw new DerError(`certificationRequestInfo: version ${version}, expected 0 (v1)`);
  checkName(fields.read(TAG.SEQUENCE, 'subject').content);
  const spki = fields.read(TAG.SEQUENCE, 'subjectPKInfo');
  checkSpki(spki.content);
  const attributes = readAttributes(fields.read(0xa0, 'attributes').content);
  fields.end();

  const alg = new DerReader(algorithm.content, 'signatureAlgorithm');
  const signatureOid = oidText(alg.read(TAG.OID, 'algorithm').content, 'signatureAlgorithm');
  const signatureParams = alg.done ? undefined : alg.read(undefined, 'parameters').encoded;
  alg.end();
  return { info: info.encoded, spki: spki.encoded, attributes, signatureOid, signatureParams, signature };
}

/** Name ::= SEQUENCE OF SET SIZE (1..MAX) OF SEQUENCE { type OID, value ANY }. */
function checkName(content: Uint8Array): void {
  const rdns = new DerReader(content, 'subject');
  while (!rdns.done) {
    const set = new DerReader(rdns.read(TAG.SET, 'RelativeDistinguishedName').content, 'subject');
    if (set.done) throw new DerError('subject: empty RelativeDistinguishedName');
    while (!set.done) {
      const pair = new DerReader(set.read(TAG.SEQUENCE, 'AttributeTypeAndValue').content, 'subject');
      oidText(pair.read(TAG.OID, 'attribute type').content, 'subject');
      pair.read(undefined, 'attribute value');
      pair.end();
    }
  }
}

/** SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }. */
function checkSpki(content: Uint8Array): void {
  const spki = new DerReader(content, 'subjectPKInfo');
  const algorithm = new DerReader(spki.read(TAG.SEQUENCE, 'algorithm').content, 'subjectPKInfo algorithm');
  oidText(algorithm.read(TAG.OID, 'algorithm').content, 'subjectPKInfo');
  if (!algorithm.done) algorithm.read(undefined, 'parameters');
  algorithm.end();
  bitStringBytes(spki.read(TAG.BIT_STRING, 'subjectPublicKey'), 'subjectPublicKey');
  spki.end();
}

/** attributes [0] IMPLICIT SET OF SEQUENCE { type OID, values SET OF ANY }. */
function readAttributes(content: Uint8Array): CsrParts['attributes'] {
  const out: { type: string; values: Uint8Array; encoded: Uint8Array }[] = [];
  const list = new DerReader(content, 'attributes');
  while (!list.done) {
    const attribute = list.read(TAG.SEQUENCE, 'Attribute');
    const parts = new DerReader(attribute.content, 'Attribute');
    const type = oidText(parts.read(TAG.OID, 'type').content, 'Attribute');
    const values = parts.read(TAG.SET, 'values').content;
    parts.end();
    const each = new DerReader(values, 'Attribute values');
    while (!each.done) each.read(undefined, 'value');
    out.push({ type, values, encoded: attribute.encoded });
  }
  return out;
}

/**
 * The URI and DNS names the CSR's extensionRequest asks for, across its subjectAltName extensions.
 * Every other attribute and extension is decoded by @peculiar/x509 as before, so one that does not
 * decode still refuses the CSR.
 *
 * @throws Error (DerError or @peculiar/x509's) when an attribute or extension does not decode.
 */
export function requestedNames(csr: CsrParts): { uris: string[]; dnsNames: string[] } {
  const uris: string[] = [];
  const dnsNames: string[] = [];
  const requests = csr.attributes.filter((a) => a.type === EXTENSION_REQUEST);
  if (requests.length > 1) throw new DerError(`${requests.length} extensionRequest attributes; one at most`);
  for (const attribute of csr.attributes) {
    if (attribute.type !== EXTENSION_REQUEST) px.AttributeFactory.create(attribute.encoded);
  }
  const request = requests[0];
  if (request === undefined) return { uris, dnsNames };
  const values = readOne(request.values, TAG.SEQUENCE, 'extensionRequest');
  const extensions = new DerReader(values.content, 'extensionRequest');
  while (!extensions.done) {
    const extension = extensions.read(TAG.SEQUENCE, 'Extension');
    const fields = new DerReader(extension.content, 'Extension');
    const id = oidText(fields.read(TAG.OID, 'extnID').content, 'Extension');
    const critical = fields.optional(TAG.BOOLEAN, 'critical');
    if (critical !== undefined) booleanValue(critical, `extension ${id} critical flag`);
    const value = fields.read(TAG.OCTET_STRING, 'extnValue').content;
    fields.end();
    if (id !== OID.subjectAltName) {
      px.ExtensionFactory.create(extension.encoded);
      continue;
    }
    const names = readGeneralNames(value);
    if (names === undefined) {
      // Names other than URI and DNS: decoded (and refused when malformed) by @peculiar/x509.
      const san = px.ExtensionFactory.create(extension.encoded) as px.SubjectAlternativeNameExtension;
      for (const name of san.names.items) {
        if (name.type === 'url') uris.push(name.value);
        else if (name.type === 'dns') dnsNames.push(name.value);
      }
      continue;
    }
    uris.push(...names.uris);
    dnsNames.push(...names.dnsNames);
  }
  return { uris, dnsNames };
}

/**
 * GeneralNames holding only uniformResourceIdentifier [6] and dNSName [2] (IA5String, read byte for
 * byte as @peculiar/x509 reads it); undefined when any other name form is present.
 */
function readGeneralNames(value: Uint8Array): { uris: string[]; dnsNames: string[] } | undefined {
  const names = new DerReader(readOne(value, TAG.SEQUENCE, 'GeneralNames').content, 'GeneralNames');
  const uris: string[] = [];
  const dnsNames: string[] = [];
  while (!names.done) {
    const tag = names.peekTag();
    if (tag !== 0x86 && tag !== 0x82) return undefined;
    const text = Buffer.from(names.read(tag).content).toString('latin1');
    (tag === 0x86 ? uris : dnsNames).push(text);
  }
  return { uris, dnsNames };
}
