/**
 * DER writing shared by the two structures ironroot encodes by hand, the X.509-SVID TBSCertificate
 * (x509-tbs.ts) and the PKCS#10 CSR (csr.ts): the building blocks, the signature
 * AlgorithmIdentifiers of every {@link SigningAlgorithm}, SubjectPublicKeyInfo from a key's JWK form,
 * names, extensions and the ECDSA r‖s to DER conversion. Each encodes what @peculiar/x509 wrote for
 * the same input; the tests of both users compare their output with it byte for byte.
 *
 * @module
 */
import type { KeyObject } from 'node:crypto';
import * as px from './peculiar.js';
import type { SigningAlgorithm } from './signer.js';
import { OID, tlv } from './x509-extensions.js';

export const TAG = {
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  OID: 0x06,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

export const NULL = Uint8Array.of(0x05, 0x00);
const TRUE = Uint8Array.of(0x01, 0x01, 0xff);

/** A DER SEQUENCE of already encoded values. */
export const seq = (...parts: Uint8Array[]): Uint8Array => tlv(TAG.SEQUENCE, Buffer.concat(parts));

/** A BIT STRING with no unused bits. */
export const bitString = (bytes: Uint8Array): Uint8Array =>
  tlv(TAG.BIT_STRING, Buffer.concat([Uint8Array.of(0), bytes]));

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
  return tlv(TAG.OID, Uint8Array.from(out));
}

/**
 * DER INTEGER for an unsigned big-endian magnitude: leading zero bytes dropped, one zero byte put
 * back when the top bit is set (so the value stays positive).
 */
export function derUnsignedInteger(magnitude: Uint8Array): Uint8Array {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const trimmed = magnitude.subarray(start);
  if (trimmed.length === 0) return Uint8Array.of(TAG.INTEGER, 1, 0);
  return tlv(TAG.INTEGER, (trimmed[0] ?? 0) > 0x7f ? Buffer.concat([Uint8Array.of(0), trimmed]) : trimmed);
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

/** The signature AlgorithmIdentifier of each algorithm a Signer may have (RFC 5758, 4055). */
export const SIGNATURE_ALGORITHMS: Readonly<Record<SigningAlgorithm, Uint8Array>> = {
  ES256: seq(derOid('1.2.840.10045.4.3.2')),
  ES384: seq(derOid('1.2.840.10045.4.3.3')),
  RS256: seq(derOid('1.2.840.113549.1.1.11'), NULL),
  RS384: seq(derOid('1.2.840.113549.1.1.12'), NULL),
  RS512: seq(derOid('1.2.840.113549.1.1.13'), NULL),
  PS256: pss('2.16.840.1.101.3.4.2.1', 32),
  PS384: pss('2.16.840.1.101.3.4.2.2', 48),
  PS512: pss('2.16.840.1.101.3.4.2.3', 64),
};

/** The DER OIDs of the extensions this library writes, encoded once. */
const EXTENSION_OIDS = new Map<string, Uint8Array>(Object.values(OID).map((oid) => [oid, derOid(oid)]));

/** One Extension: critical only written when true (DER omits a DEFAULT value). */
export function extension(oid: string, critical: boolean, value: Uint8Array): Uint8Array {
  const id = EXTENSION_OIDS.get(oid) ?? derOid(oid);
  return critical ? seq(id, TRUE, tlv(TAG.OCTET_STRING, value)) : seq(id, tlv(TAG.OCTET_STRING, value));
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
 * The subjectAltName extension of an SVID or a CSR: the SPIFFE ID as the one URI, then the DNS
 * names; critical when the subject name is empty (RFC 5280 §4.2.1.6, X509-SVID §4).
 *
 * @throws TypeError when a name is not ASCII.
 */
export function subjectAltName(spiffeId: string, dnsNames: readonly string[], critical: boolean): Uint8Array {
  const names = [tlv(0x86, ia5('URI', spiffeId)), ...dnsNames.map((name) => tlv(0x82, ia5('DNS', name)))];
  return extension(OID.subjectAltName, critical, seq(...names));
}

/** A Name for RFC 4514 text: an empty SEQUENCE for none, else @peculiar/x509's encoding of it. */
export function derName(text: string): Uint8Array {
  return text === '' ? seq() : new Uint8Array(new px.Name(text).toArrayBuffer());
}

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
        Uint8Array.of(0x04),
        Buffer.from(jwk.x, 'base64url'),
        Buffer.from(jwk.y, 'base64url'),
      ]);
      return seq(seq(EC_PUBLIC_KEY, curve), bitString(point));
    }
  } else if (type === 'rsa') {
    const jwk = publicKey.export({ format: 'jwk' });
    if (jwk.n !== undefined && jwk.e !== undefined) {
      const key = seq(
        derUnsignedInteger(Buffer.from(jwk.n, 'base64url')),
        derUnsignedInteger(Buffer.from(jwk.e, 'base64url')),
      );
      return seq(RSA_ENCRYPTION, bitString(key));
    }
  }
  return new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
}

/**
 * The X.509 / PKCS#10 signature bytes for a Signer's output: ECDSA's r‖s becomes the DER
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

/** A signed structure: the signed bytes, the algorithm identifier and the signature BIT STRING. */
export function signedDer(
  signed: Uint8Array,
  algorithm: SigningAlgorithm,
  signature: Uint8Array,
): Uint8Array {
  return seq(signed, SIGNATURE_ALGORITHMS[algorithm], bitString(signature));
}
