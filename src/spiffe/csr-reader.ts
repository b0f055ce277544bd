/**
 * Reads PKCS#10 certification requests (RFC 2986) with the strict DER reader, checks their
 * signature with node:crypto, and finds the names they request.
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
import { createPublicKey, type KeyObject, constants as sslConstants, verify } from 'node:crypto';
import {
  bitStringBytes,
  checkDerTree,
  DerError,
  DerReader,
  oidText,
  readOne,
  smallInteger,
  TAG,
} from './der-reader.js';
import * as px from './peculiar.js';
import { OID } from './x509-extensions.js';

/**
 * The SubjectPublicKeyInfo of an uncompressed EC point on each WebCrypto curve, up to the point's
 * coordinates: the form nearly every CSR carries.
 */
const EC_SPKI_PREFIXES = [
  {
    crv: 'P-256',
    size: 32,
    prefix: Buffer.from('3059301306072a8648ce3d020106082a8648ce3d03010703420004', 'hex'),
  },
  { crv: 'P-384', size: 48, prefix: Buffer.from('3076301006072a8648ce3d020106052b8104002203620004', 'hex') },
  {
    crv: 'P-521',
    size: 66,
    prefix: Buffer.from('30819b301006072a8648ce3d020106052b810400230381860004', 'hex'),
  },
];

/**
 * The key of a SubjectPublicKeyInfo. OpenSSL 3 decodes DER keys through its generic provider
 * decoders, which costs about twice as much as importing the same EC point from its JWK form; the
 * key and its checks (the point must be on the curve) are the same, so the common EC forms go that
 * way and everything else through the DER decoder.
 *
 * @throws Error (from node:crypto) when the key does not decode.
 */
export function publicKeyOf(spki: Uint8Array): KeyObject {
  const bytes = Buffer.from(spki.buffer, spki.byteOffset, spki.byteLength);
  for (const { crv, size, prefix } of EC_SPKI_PREFIXES) {
    if (bytes.length === prefix.length + 2 * size && bytes.subarray(0, prefix.length).equals(prefix)) {
      const x = bytes.subarray(prefix.length, prefix.length + size).toString('base64url');
      const y = bytes.subarray(prefix.length + size).toString('base64url');
      return createPublicKey({ key: { kty: 'EC', crv, x, y }, format: 'jwk' });
    }
  }
  return createPublicKey({ key: bytes, format: 'der', type: 'spki' });
}

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

/** A signature algorithm (or its parameters) that CSRs are not accepted with. */
export class SignatureAlgorithmError extends Error {
  override readonly name = 'SignatureAlgorithmError';
}

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
  const signature = bitStringBytes(outer.read(TAG.BIT_STRING, 'signature').content, 'signature');
  outer.end();

  const fields = new DerReader(info.content, 'certificationRequestInfo');
  const version = smallInteger(fields.read(TAG.INTEGER, 'version').content, 'version');
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
  bitStringBytes(spki.read(TAG.BIT_STRING, 'subjectPublicKey').content, 'subjectPublicKey');
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

/** How node:crypto verifies one signature algorithm, and the key it needs. */
interface Verification {
  /** The digest, or null for EdDSA (which hashes inside the algorithm). */
  readonly hash: string | null;
  readonly key: 'ec' | 'rsa' | 'ed25519';
  readonly pssSaltLength?: number;
}

const HASHES: Record<string, string> = {
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};

const ECDSA: Record<string, string> = {
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
};

const RSA_PKCS1: Record<string, string> = {
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
};

/** Ed25519 only: Ed448 CSRs were refused before (WebCrypto here has no Ed448). */
const EDDSA: Record<string, 'ed25519'> = { '1.3.101.112': 'ed25519' };

const RSASSA_PSS = '1.2.840.113549.1.1.10';
const MGF1 = '1.2.840.113549.1.1.8';

/** The curves WebCrypto's ECDSA accepts, the ones CSRs were verified with before. */
const EC_CURVES = new Set(['prime256v1', 'secp384r1', 'secp521r1']);

const NULL_PARAMS = Uint8Array.of(TAG.NULL, 0);
const isNull = (params: Uint8Array | undefined): boolean =>
  params !== undefined && Buffer.from(params).equals(NULL_PARAMS);

/**
 * The signature algorithms accepted on CSRs: ECDSA and RSA (PKCS#1 v1.5 and PSS) with SHA-256,
 * SHA-384 or SHA-512, and Ed25519. Throws naming anything else (SHA-1 included).
 */
function verificationOf(oid: string, params: Uint8Array | undefined): Verification {
  const ecdsa = ECDSA[oid];
  if (ecdsa !== undefined) {
    // RFC 5758 §3.2: the parameters field is absent.
    if (params !== undefined)
      throw new SignatureAlgorithmError(`ECDSA signature algorithm ${oid} with parameters`);
    return { hash: ecdsa, key: 'ec' };
  }
  const eddsa = EDDSA[oid];
  if (eddsa !== undefined) {
    // RFC 8410 §3: the parameters are absent.
    if (params !== undefined)
      throw new SignatureAlgorithmError(`EdDSA signature algorithm ${oid} with parameters`);
    return { hash: null, key: eddsa };
  }
  const pkcs1 = RSA_PKCS1[oid];
  if (pkcs1 !== undefined) {
    // RFC 4055 §5: NULL, though some encoders leave it out.
    if (params !== undefined && !isNull(params))
      throw new SignatureAlgorithmError(`RSA signature algorithm ${oid} with parameters`);
    return { hash: pkcs1, key: 'rsa' };
  }
  if (oid === RSASSA_PSS && params !== undefined) {
    try {
      return pssVerification(params);
    } catch (error) {
      if (error instanceof SignatureAlgorithmError) throw error;
      throw new SignatureAlgorithmError(`malformed RSASSA-PSS parameters: ${(error as Error).message}`);
    }
  }
  throw new SignatureAlgorithmError(`unsupported CSR signature algorithm ${oid}`);
}

/**
 * RSASSA-PSS-params (RFC 4055 §3.1) with an explicit SHA-2 hash, MGF1 over the same hash (as
 * WebCrypto has it), a salt length and the trailer field 1. The SHA-1 defaults are not accepted.
 */
function pssVerification(params: Uint8Array): Verification {
  const fields = new DerReader(
    readOne(params, TAG.SEQUENCE, 'RSASSA-PSS-params').content,
    'RSASSA-PSS-params',
  );
  const hashField = fields.optional(0xa0, 'hashAlgorithm');
  const mgfField = fields.optional(0xa1, 'maskGenAlgorithm');
  const saltField = fields.optional(0xa2, 'saltLength');
  const trailerField = fields.optional(0xa3, 'trailerField');
  fields.end();
  if (hashField === undefined || mgfField === undefined)
    throw new SignatureAlgorithmError('RSASSA-PSS with SHA-1 defaults');
  const hash = hashAlgorithm(readOne(hashField.content, TAG.SEQUENCE, 'hashAlgorithm').content);
  const mgf = new DerReader(readOne(mgfField.content, TAG.SEQUENCE, 'maskGenAlgorithm').content, 'mgf');
  if (oidText(mgf.read(TAG.OID, 'algorithm').content, 'mgf') !== MGF1)
    throw new SignatureAlgorithmError('RSASSA-PSS without MGF1');
  const mgfHash = hashAlgorithm(mgf.read(TAG.SEQUENCE, 'MGF1 hash').content);
  mgf.end();
  if (mgfHash !== hash) throw new SignatureAlgorithmError(`RSASSA-PSS with ${hash} but MGF1 over ${mgfHash}`);
  const salt =
    saltField === undefined
      ? 20
      : smallInteger(readOne(saltField.content, TAG.INTEGER, 'saltLength').content, 'saltLength');
  if (trailerField !== undefined) {
    const trailer = smallInteger(
      readOne(trailerField.content, TAG.INTEGER, 'trailerField').content,
      'trailer',
    );
    if (trailer !== 1) throw new SignatureAlgorithmError(`RSASSA-PSS trailer field ${trailer}`);
  }
  return { hash, key: 'rsa', pssSaltLength: salt };
}

/** A hash AlgorithmIdentifier's name; SHA-2 only, parameters NULL or absent. */
function hashAlgorithm(content: Uint8Array): string {
  const alg = new DerReader(content, 'hash algorithm');
  const oid = oidText(alg.read(TAG.OID, 'algorithm').content, 'hash algorithm');
  const params = alg.done ? undefined : alg.read(undefined, 'parameters').encoded;
  alg.end();
  const hash = HASHES[oid];
  if (hash === undefined || (params !== undefined && !isNull(params))) {
    throw new SignatureAlgorithmError(`unsupported hash algorithm ${oid} in RSASSA-PSS`);
  }
  return hash;
}

/**
 * ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } in DER, as OpenSSL requires; checked first
 * so that a malformed value is named as such rather than as a signature that does not verify.
 */
function checkEcdsaSignature(signature: Uint8Array): void {
  checkDerTree(signature, 'ECDSA-Sig-Value');
  const fields = new DerReader(
    readOne(signature, TAG.SEQUENCE, 'ECDSA-Sig-Value').content,
    'ECDSA-Sig-Value',
  );
  fields.read(TAG.INTEGER, 'r');
  fields.read(TAG.INTEGER, 's');
  fields.end();
}

/**
 * True when the CSR's signature verifies with `publicKey` over the exact CertificationRequestInfo
 * bytes; otherwise the reason (unsupported algorithm, a key that does not fit it, or a signature
 * that does not verify), for the refusal's cause.
 */
export function verifiesCsr(csr: CsrParts, publicKey: KeyObject): true | Error {
  try {
    const how = verificationOf(csr.signatureOid, csr.signatureParams);
    const type = publicKey.asymmetricKeyType;
    if (type !== how.key) throw new Error(`a ${type} key cannot check a ${how.key} signature`);
    if (type === 'ec' && !EC_CURVES.has(publicKey.asymmetricKeyDetails?.namedCurve ?? '')) {
      throw new Error(`EC curve ${publicKey.asymmetricKeyDetails?.namedCurve} is not P-256, P-384 or P-521`);
    }
    if (how.key === 'ec') checkEcdsaSignature(csr.signature);
    const key =
      how.pssSaltLength === undefined
        ? { key: publicKey, dsaEncoding: 'der' as const }
        : { key: publicKey, padding: sslConstants.RSA_PKCS1_PSS_PADDING, saltLength: how.pssSaltLength };
    return verify(how.hash, csr.info, key, csr.signature) ? true : new Error('signature does not verify');
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
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
    if (
      critical !== undefined &&
      !(critical.content.length === 1 && [0x00, 0xff].includes(critical.content[0] ?? 1))
    ) {
      throw new DerError(`extension ${id}: critical flag is not a DER BOOLEAN`);
    }
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
