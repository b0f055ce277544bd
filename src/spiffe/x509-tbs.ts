/**
 * X.509-SVID certificates encoded directly in DER from a template kept per issuing certificate.
 *
 * Every SVID one CA signs shares its version, signature algorithm, issuer name, the
 * basicConstraints, keyUsage and extKeyUsage extensions and the authority key identifier; only the
 * serial number, validity, subject, subject public key, SAN and subject key identifier change. Building
 * the whole TBSCertificate through @peculiar/x509's ASN.1 object model for each SVID was most of an
 * issuance's CPU time, so the fixed parts are constants or encoded once per issuer certificate, and
 * only the changing parts are encoded per SVID. `test/spiffe/x509-tbs.test.ts` checks the
 * output field by field and byte for byte against @peculiar/x509's generator.
 *
 * @module
 */
import { constants, type KeyObject, type X509Certificate } from 'node:crypto';
import { splitDer } from './der.js';
import * as px from './peculiar.js';
import type { Signer, SigningAlgorithm } from './signer.js';
import { verifyOffThread } from './verify-async.js';
import { keyIdentifier, OID, readTlvs, spkiKeyIdentifier, tlv } from './x509-extensions.js';

const SEQUENCE = 0x30;
const INTEGER = 0x02;
const BIT_STRING = 0x03;
const OCTET_STRING = 0x04;
const NULL = Uint8Array.of(0x05, 0x00);
const TRUE = Uint8Array.of(0x01, 0x01, 0xff);

const seq = (...parts: Uint8Array[]): Uint8Array => tlv(SEQUENCE, Buffer.concat(parts));

/** DER OBJECT IDENTIFIER for dotted text. */
export function derOid(dotted: string): Uint8Array {
  const arcs = dotted.split('.').map(Number);
  const [a = 0, b = 0, ...rest] = arcs;
  const out: number[] = [];
  for (const arc of [a * 40 + b, ...rest]) {
    const base128: number[] = [arc % 128];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) base128.unshift(0x80 | (v % 128));
    out.push(...base128);
  }
  return tlv(0x06, Uint8Array.from(out));
}

/**
 * DER INTEGER for an unsigned big-endian magnitude: leading zero bytes dropped, one zero byte put
 * back when the top bit is set (so the value stays positive).
 */
export function derUnsignedInteger(magnitude: Uint8Array): Uint8Array {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const trimmed = magnitude.subarray(start);
  if (trimmed.length === 0) return Uint8Array.of(INTEGER, 1, 0);
  return tlv(INTEGER, (trimmed[0] ?? 0) > 0x7f ? Buffer.concat([Uint8Array.of(0), trimmed]) : trimmed);
}

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

/**
 * RSASSA-PSS parameters (RFC 4055) as the signer signs: MGF1 over the same hash, a salt as long as
 * the hash. The hash identifiers have absent parameters (RFC 5754 §2), as @peculiar/x509 wrote them.
 */
function pss(hashOid: string, saltLength: number): Uint8Array {
  const hash = seq(derOid(hashOid));
  const params = seq(
    tlv(0xa0, hash),
    tlv(0xa1, seq(derOid('1.2.840.113549.1.1.8'), hash)),
    tlv(0xa2, derUnsignedInteger(Uint8Array.of(saltLength))),
  );
  return seq(derOid('1.2.840.113549.1.1.10'), params);
}

/** The signature AlgorithmIdentifier of each algorithm a {@link Signer} may have (RFC 5758, 4055). */
const SIGNATURE_ALGORITHMS: Record<SigningAlgorithm, Uint8Array> = {
  ES256: seq(derOid('1.2.840.10045.4.3.2')),
  ES384: seq(derOid('1.2.840.10045.4.3.3')),
  RS256: seq(derOid('1.2.840.113549.1.1.11'), NULL),
  RS384: seq(derOid('1.2.840.113549.1.1.12'), NULL),
  RS512: seq(derOid('1.2.840.113549.1.1.13'), NULL),
  PS256: pss('2.16.840.1.101.3.4.2.1', 32),
  PS384: pss('2.16.840.1.101.3.4.2.2', 48),
  PS512: pss('2.16.840.1.101.3.4.2.3', 64),
};

/** The DER OIDs of the extensions an SVID carries, encoded once. */
const EXTENSION_OIDS = new Map<string, Uint8Array>(Object.values(OID).map((oid) => [oid, derOid(oid)]));

/** One Extension: critical only written when true (DER omits a DEFAULT value). */
function extension(oid: string, critical: boolean, value: Uint8Array): Uint8Array {
  const id = EXTENSION_OIDS.get(oid) ?? derOid(oid);
  return critical ? seq(id, TRUE, tlv(OCTET_STRING, value)) : seq(id, tlv(OCTET_STRING, value));
}

/** basicConstraints cA=false (an empty SEQUENCE: cA defaults to false), keyUsage and EKU of every SVID. */
const SVID_FIXED_EXTENSIONS = Buffer.concat([
  extension(OID.basicConstraints, true, seq()),
  // BIT STRING with 7 unused bits: only bit 0, digitalSignature.
  extension(OID.keyUsage, true, tlv(BIT_STRING, Uint8Array.of(0x07, 0x80))),
  extension(
    OID.extKeyUsage,
    false,
    seq(derOid('1.3.6.1.5.5.7.3.1'), derOid('1.3.6.1.5.5.7.3.2')), // serverAuth, clientAuth
  ),
]);

const VERSION_3 = tlv(0xa0, Uint8Array.of(INTEGER, 1, 2));

const EC_PUBLIC_KEY = derOid('1.2.840.10045.2.1');
const CURVE_OIDS: Record<string, Uint8Array> = {
  'P-256': derOid('1.2.840.10045.3.1.7'),
  'P-384': derOid('1.3.132.0.34'),
  'P-521': derOid('1.3.132.0.35'),
};
const RSA_ENCRYPTION = seq(derOid('1.2.840.113549.1.1.1'), NULL);

/**
 * The SubjectPublicKeyInfo of a key. EC keys on the NIST curves and RSA keys are encoded here from
 * their JWK form (OpenSSL 3's SPKI encoder costs about 0.1–0.2 ms a call, the JWK export a few µs);
 * EC points are written uncompressed, the form RFC 5480 requires every implementation to accept.
 * Other keys go through OpenSSL.
 */
export function subjectPublicKeyInfo(publicKey: KeyObject): Uint8Array {
  const type = publicKey.asymmetricKeyType;
  if (type === 'ec') {
    const jwk = publicKey.export({ format: 'jwk' });
    const curve = CURVE_OIDS[jwk.crv ?? ''];
    if (curve !== undefined && jwk.x !== undefined && jwk.y !== undefined) {
      const point = Buffer.concat([
        Uint8Array.of(0x00, 0x04),
        Buffer.from(jwk.x, 'base64url'),
        Buffer.from(jwk.y, 'base64url'),
      ]);
      return seq(seq(EC_PUBLIC_KEY, curve), tlv(BIT_STRING, point));
    }
  } else if (type === 'rsa') {
    const jwk = publicKey.export({ format: 'jwk' });
    if (jwk.n !== undefined && jwk.e !== undefined) {
      const key = seq(
        derUnsignedInteger(Buffer.from(jwk.n, 'base64url')),
        derUnsignedInteger(Buffer.from(jwk.e, 'base64url')),
      );
      return seq(RSA_ENCRYPTION, tlv(BIT_STRING, Buffer.concat([Uint8Array.of(0), key])));
    }
  }
  return new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
}

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
    if (subject === undefined || subject[0] !== SEQUENCE) {
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

/** IA5String text (ASCII) of a SAN, refused otherwise rather than written as something else. */
function ia5(kind: string, text: string): Buffer {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: IA5 is exactly the 7-bit range.
  if (!/^[\x00-\x7f]*$/.test(text)) {
    throw new TypeError(`${kind} SAN ${JSON.stringify(text)} is not ASCII; X.509 writes it as an IA5String`);
  }
  return Buffer.from(text, 'latin1');
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
  const names = [
    tlv(0x86, ia5('URI', parts.spiffeId)),
    ...parts.dnsNames.map((name) => tlv(0x82, ia5('DNS', name))),
  ];
  // Without an SKI to copy, the method-1 identifier of the signer's key, as mintX509Ca writes its SKI.
  const aki =
    template.authorityKeyId ??
    authorityKeyIdExtension(Buffer.from(keyIdentifier(issuer.signer.publicKey), 'hex'));
  const extensions = tlv(
    0xa3,
    seq(
      SVID_FIXED_EXTENSIONS,
      extension(OID.subjectAltName, parts.subject === '', seq(...names)),
      extension(
        OID.subjectKeyIdentifier,
        false,
        tlv(OCTET_STRING, Buffer.from(spkiKeyIdentifier(spki), 'hex')),
      ),
      aki,
    ),
  );
  const subject = parts.subject === '' ? seq() : new Uint8Array(new px.Name(parts.subject).toArrayBuffer());
  return seq(
    VERSION_3,
    derSerial(parts.serialNumber),
    SIGNATURE_ALGORITHMS[issuer.signer.algorithm],
    template.issuerName,
    seq(derTime(parts.notBefore), derTime(parts.notAfter)),
    subject,
    spki,
    extensions,
  );
}

/**
 * The X.509 signatureValue bytes for a {@link Signer}'s output: ECDSA's r‖s becomes the DER
 * `ECDSA-Sig-Value` (RFC 3279 §2.2.3); RSA signatures are used as they are.
 */
export function signatureValue(algorithm: SigningAlgorithm, signature: Uint8Array): Uint8Array {
  if (!algorithm.startsWith('ES')) return signature;
  const half = signature.length / 2;
  if (!Number.isInteger(half) || half === 0) {
    throw new TypeError(
      `${algorithm} signer returned ${signature.length} bytes; expected r‖s of equal halves`,
    );
  }
  return seq(derUnsignedInteger(signature.subarray(0, half)), derUnsignedInteger(signature.subarray(half)));
}

/** The DER Certificate around a TBSCertificate and its signatureValue bytes. */
export function certificateDer(
  tbs: Uint8Array,
  algorithm: SigningAlgorithm,
  signature: Uint8Array,
): Uint8Array {
  return seq(
    tbs,
    SIGNATURE_ALGORITHMS[algorithm],
    tlv(BIT_STRING, Buffer.concat([Uint8Array.of(0), signature])),
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
