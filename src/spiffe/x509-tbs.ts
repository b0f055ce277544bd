/**
 * X.509-SVID certificates encoded directly in DER from a template kept per issuing certificate.
 *
 * Every SVID one CA signs shares its version, signature algorithm, issuer name, the
 * basicConstraints, keyUsage and extKeyUsage extensions and the authority key identifier; only the
 * serial number, validity, subject, subject public key, SAN and subject key identifier change. Building
 * the whole TBSCertificate through @peculiar/x509's ASN.1 object model for each SVID was most of an
 * issuance's CPU time, so the fixed parts are constants or encoded once per issuer certificate, and
 * only the changing parts are encoded per SVID, from the building blocks in der-writer.ts (shared
 * with the CSR encoder). `test/spiffe/x509-tbs.test.ts` checks the
 * output field by field and byte for byte against @peculiar/x509's generator.
 *
 * @module
 */
import { constants, type KeyObject, type X509Certificate } from 'node:crypto';
import { splitDer } from './der.js';
import {
  derName,
  derOid,
  derUnsignedInteger,
  extension,
  SIGNATURE_ALGORITHMS,
  seq,
  subjectAltName,
  subjectPublicKeyInfo,
  TAG,
} from './der-writer.js';
import * as px from './peculiar.js';
import type { Signer } from './signer.js';
import { verifyOffThread } from './verify-async.js';
import { keyIdentifier, OID, readTlvs, spkiKeyIdentifier, tlv } from './x509-extensions.js';

const pad2 = (n: number): string => String(n).padStart(2, '0');

/**
 * RFC 5280 §4.1.2.5 Time: UTCTime for 1950 through 2049, GeneralizedTime otherwise, in whole
 * seconds with `Z` (milliseconds are dropped, as RFC 5280 forbids fractions).
 */
export function derTime(date: Date): Uint8Array {
  const year = date.getUTCFullYear();
  const rest = [
    date.getUTCMonth() + 1,
    date.getUTCDate(),
    date.getUTCHours(),
    date.getUTCMinutes(),
    date.getUTCSeconds(),
  ]
    .map(pad2)
    .join('');
  if (year >= 1950 && year <= 2049) return tlv(0x17, Buffer.from(`${pad2(year % 100)}${rest}Z`, 'ascii'));
  return tlv(0x18, Buffer.from(`${String(year).padStart(4, '0')}${rest}Z`, 'ascii'));
}

/** The serial number hex text as a positive DER INTEGER. */
function derSerial(hex: string): Uint8Array {
  if (!/^(?:[0-9a-f]{2})+$/i.test(hex) || /^0+$/.test(hex)) {
    throw new TypeError(
      `certificate serial number "${hex}" is not a positive number in hex (an even number of hex digits, not all zero)`,
    );
  }
  return derUnsignedInteger(Buffer.from(hex, 'hex'));
}

/** basicConstraints cA=false (an empty SEQUENCE: cA defaults to false), keyUsage and EKU of every SVID. */
const SVID_FIXED_EXTENSIONS = Buffer.concat([
  extension(OID.basicConstraints, true, seq()),
  // BIT STRING with 7 unused bits: only bit 0, digitalSignature.
  extension(OID.keyUsage, true, tlv(TAG.BIT_STRING, Uint8Array.of(0x07, 0x80))),
  extension(
    OID.extKeyUsage,
    false,
    seq(derOid('1.3.6.1.5.5.7.3.1'), derOid('1.3.6.1.5.5.7.3.2')), // serverAuth, clientAuth
  ),
]);

const VERSION_3 = tlv(0xa0, Uint8Array.of(TAG.INTEGER, 1, 2));

/** What every SVID of one issuing certificate shares, encoded once. */
interface IssuerTemplate {
  /** The issuer's subject exactly as encoded in its certificate. */
  readonly issuerName: Uint8Array;
  /** The authorityKeyIdentifier extension, when the issuer certificate has an SKI to copy. */
  readonly authorityKeyId: Uint8Array | undefined;
}

/** Keyed weakly by certificate object: a rotated-out CA certificate drops out with its object. */
const templates = new WeakMap<X509Certificate, IssuerTemplate>();

function authorityKeyIdExtension(keyId: Uint8Array): Uint8Array {
  return extension(OID.authorityKeyIdentifier, false, seq(tlv(0x80, keyId)));
}

function templateOf(certificate: X509Certificate): IssuerTemplate {
  let template = templates.get(certificate);
  if (template === undefined) {
    // Certificate → TBSCertificate → [version], serial, signature, issuer, validity, subject, …
    const tbs = readTlvs(readTlvs(certificate.raw)?.[0]?.content ?? new Uint8Array())?.[0];
    const fields = tbs && splitDer(tbs.content);
    const offset = fields?.[0]?.[0] === 0xa0 ? 1 : 0;
    const subject = fields?.[offset + 4];
    if (subject === undefined || subject[0] !== TAG.SEQUENCE) {
      throw new TypeError('issuer certificate has no subject name where X.509 puts it');
    }
    // The SKI is read through @peculiar/x509 once per certificate: it decodes the extension's
    // OCTET STRING however the certificate's maker wrote it.
    const ski = new px.X509Certificate(certificate.raw).getExtension(px.SubjectKeyIdentifierExtension);
    template = {
      issuerName: Uint8Array.from(subject),
      authorityKeyId: ski ? authorityKeyIdExtension(Buffer.from(ski.keyId, 'hex')) : undefined,
    };
    templates.set(certificate, template);
  }
  return template;
}

/** The changing parts of one X.509-SVID. */
export interface SvidTbsParts {
  /** Serial number in hex (even length, not all zero). */
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
  /** Subject DN (RFC 4514 text); empty for none, which makes the SAN critical. */
  subject: string;
  /** The subject's public key. */
  publicKey: KeyObject;
  /** The SPIFFE ID as text: the one URI SAN. */
  spiffeId: string;
  /** DNS SANs after the URI. */
  dnsNames: readonly string[];
}

/**
 * The DER TBSCertificate of an X.509-SVID issued by `issuer.certificate`, to be signed by
 * `issuer.signer` (whose algorithm it names): v3, the extensions in the order basicConstraints, keyUsage, extKeyUsage, subjectAltName, subjectKeyIdentifier,
 * authorityKeyIdentifier.
 */
export function svidTbs(
  parts: SvidTbsParts,
  issuer: { certificate: X509Certificate; signer: Signer },
): Uint8Array {
  const template = templateOf(issuer.certificate);
  const spki = subjectPublicKeyInfo(parts.publicKey);
  // Without an SKI to copy, the method-1 identifier of the signer's key, as mintX509Ca writes its SKI.
  const aki =
    template.authorityKeyId ??
    authorityKeyIdExtension(Buffer.from(keyIdentifier(issuer.signer.publicKey), 'hex'));
  const extensions = tlv(
    0xa3,
    seq(
      SVID_FIXED_EXTENSIONS,
      subjectAltName(parts.spiffeId, parts.dnsNames, parts.subject === ''),
      extension(
        OID.subjectKeyIdentifier,
        false,
        tlv(TAG.OCTET_STRING, Buffer.from(spkiKeyIdentifier(spki), 'hex')),
      ),
      aki,
    ),
  );
  return seq(
    VERSION_3,
    derSerial(parts.serialNumber),
    SIGNATURE_ALGORITHMS[issuer.signer.algorithm],
    template.issuerName,
    seq(derTime(parts.notBefore), derTime(parts.notAfter)),
    derName(parts.subject),
    spki,
    extensions,
  );
}

/**
 * Resolves to true when `signature` (the signatureValue bytes, as the certificate will carry them)
 * verifies over `tbs` with the signer's public key under the signer's algorithm: what parsing the
 * certificate and `X509Certificate.verify` would check, without the parse. Runs on libuv's thread
 * pool, beside the event loop.
 */
export function verifiesTbs(tbs: Uint8Array, signature: Uint8Array, signer: Signer): Promise<boolean> {
  const algorithm = signer.algorithm;
  const hash = `sha${algorithm.slice(2)}`;
  const key = signer.publicKey;
  if (algorithm.startsWith('ES')) return verifyOffThread(hash, tbs, { key, dsaEncoding: 'der' }, signature);
  if (algorithm.startsWith('PS')) {
    const saltLength = Number(algorithm.slice(2)) / 8;
    return verifyOffThread(
      hash,
      tbs,
      { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength },
      signature,
    );
  }
  return verifyOffThread(hash, tbs, key, signature);
}
