/**
 * The second X.509 parser of the EK path: a strict DER reading of a whole certificate's structure
 * (RFC 5280 §4.1), next to OpenSSL's. It replaced @peculiar/x509's decode, which built a generic
 * ASN.1 tree of the whole certificate only to throw it away (about a fifth of an attestation's
 * CPU). Decisions use OpenSSL's view of names, dates, keys and signatures; this reading exists so
 * a certificate that is not well-formed DER in every field is refused before a decision meets it,
 * and to hand over the extensions, which OpenSSL does not expose.
 *
 * @module
 */
import {
  booleanValue,
  checkBitString,
  DerError,
  type DerReader,
  eachOf,
  inside,
  readOid,
  readOne,
  smallUnsigned,
  TAG,
} from '../../der/index.js';
import { type CertificateExtension, readName } from './ek-extensions.js';

const UTC_TIME = 0x17;
const GENERALIZED_TIME = 0x18;

/** AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL } */
function readAlgorithm(reader: DerReader, what: string): void {
  const algorithm = inside(reader.read(TAG.SEQUENCE, what), what);
  readOid(algorithm, `${what} algorithm`);
  if (!algorithm.done) algorithm.read(undefined, `${what} parameters`);
  algorithm.end();
}

/**
 * Time ::= UTCTime (YYMMDDHHMMSSZ) | GeneralizedTime (YYYYMMDDHHMMSSZ): the only forms RFC 5280
 * allows in certificates, every field in its range.
 */
function readTime(reader: DerReader, what: string): void {
  const time = reader.read(undefined, what);
  const text = Buffer.from(time.content).toString('latin1');
  const form =
    time.tag === UTC_TIME
      ? /^\d{2}(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text)
      : time.tag === GENERALIZED_TIME
        ? /^\d{4}(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text)
        : null;
  if (form === null)
    throw new DerError(`${what} is not a UTCTime or GeneralizedTime in the form RFC 5280 requires`);
  const [month, day, hour, minute, second] = form.slice(1).map(Number);
  if (
    month === undefined ||
    month < 1 ||
    month > 12 ||
    day === undefined ||
    day < 1 ||
    day > 31 ||
    (hour ?? 24) > 23 ||
    (minute ?? 60) > 59 ||
    (second ?? 60) > 59
  )
    throw new DerError(`${what} has a field out of range (${text})`);
}

/**
 * Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension; an empty one is accepted, as @peculiar/x509
 * and OpenSSL accept it (some issuing tools write one).
 */
function readExtensions(content: Uint8Array): CertificateExtension[] {
  const extensions: CertificateExtension[] = [];
  eachOf(readOne(content, TAG.SEQUENCE, 'Extensions'), 'Extensions', (reader) => {
    const fields = inside(reader.read(TAG.SEQUENCE, 'Extension'), 'Extension');
    const oid = readOid(fields, 'extnID');
    const flag = fields.optional(TAG.BOOLEAN, 'critical');
    const value = fields.read(TAG.OCTET_STRING, 'extnValue');
    fields.end();
    extensions.push({
      oid,
      critical: flag === undefined ? false : booleanValue(flag, `extension ${oid} critical`),
      value: value.content,
    });
  });
  return extensions;
}

/**
 * Reads the certificate `der` field by field, strictly, and returns its extensions in order (empty
 * when it has none).
 *
 * @throws DerError naming the field that is not what RFC 5280 says, as DER.
 */
export function readCertificateStructure(der: Uint8Array): CertificateExtension[] {
  const certificate = inside(readOne(der, TAG.SEQUENCE, 'Certificate'), 'Certificate');
  const tbs = inside(certificate.read(TAG.SEQUENCE, 'tbsCertificate'), 'tbsCertificate');
  readAlgorithm(certificate, 'signatureAlgorithm');
  checkBitString(certificate.read(TAG.BIT_STRING, 'signatureValue').content, 'signatureValue');
  certificate.end();

  const version = tbs.optional(0xa0, 'version');
  if (version !== undefined && smallUnsigned(readOne(version.content, TAG.INTEGER, 'version'), 'version') > 2)
    throw new DerError('version: not v1, v2 or v3');
  if (tbs.read(TAG.INTEGER, 'serialNumber').content.length === 0)
    throw new DerError('serialNumber: empty INTEGER');
  readAlgorithm(tbs, 'signature');
  readName(tbs.read(TAG.SEQUENCE, 'issuer'), 'issuer', false);
  const validity = inside(tbs.read(TAG.SEQUENCE, 'validity'), 'validity');
  readTime(validity, 'notBefore');
  readTime(validity, 'notAfter');
  validity.end();
  readName(tbs.read(TAG.SEQUENCE, 'subject'), 'subject', false);
  const key = inside(tbs.read(TAG.SEQUENCE, 'subjectPublicKeyInfo'), 'subjectPublicKeyInfo');
  readAlgorithm(key, 'subjectPublicKeyInfo algorithm');
  checkBitString(key.read(TAG.BIT_STRING, 'subjectPublicKey').content, 'subjectPublicKey');
  key.end();
  for (const [tag, name] of [
    [0x81, 'issuerUniqueID'],
    [0x82, 'subjectUniqueID'],
  ] as const) {
    const id = tbs.optional(tag, name);
    if (id !== undefined) checkBitString(id.content, name);
  }
  const extensions = tbs.optional(0xa3, 'extensions');
  tbs.end();
  return extensions === undefined ? [] : readExtensions(extensions.content);
}
