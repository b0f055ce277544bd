/**
 * @module
 * What each key type and signature scheme means, shared by all three key managers: which JOSE
 * algorithms fit which key, digest sizes and the DigestInfo prefixes RSA PKCS#1 v1.5 needs when the
 * token is handed a digest rather than the message.
 */
import type { KeyObject } from 'node:crypto';
import { HsmError } from './errors.js';
import type { HashName, JoseAlgorithm, KeyType, SignatureScheme } from './key-manager.js';

export const KEY_TYPES: readonly KeyType[] = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096'];

export function isKeyType(value: string): value is KeyType {
  return (KEY_TYPES as readonly string[]).includes(value);
}

export type KeyFamily = 'ec' | 'rsa';

export function familyOf(type: KeyType): KeyFamily {
  return type.startsWith('ec-') ? 'ec' : 'rsa';
}

/** Curve name as node:crypto spells it, for EC types. */
export function namedCurveOf(type: 'ec-p256' | 'ec-p384'): 'P-256' | 'P-384' {
  return type === 'ec-p256' ? 'P-256' : 'P-384';
}

export function rsaBitsOf(type: KeyType): number {
  switch (type) {
    case 'rsa-2048':
      return 2048;
    case 'rsa-3072':
      return 3072;
    case 'rsa-4096':
      return 4096;
    default:
      throw new TypeError(`${type} is not an RSA key type`);
  }
}

/** Length of a signature in bytes: r‖s for ECDSA, the modulus length for RSA. */
export function signatureLength(type: KeyType): number {
  switch (type) {
    case 'ec-p256':
      return 64;
    case 'ec-p384':
      return 96;
    default:
      return rsaBitsOf(type) / 8;
  }
}

export const HASH_LENGTH: Readonly<Record<HashName, number>> = { sha256: 32, sha384: 48, sha512: 64 };

/** DER of the DigestInfo header (RFC 8017 section 9.2, note 1) that precedes the digest. */
export const DIGEST_INFO_PREFIX: Readonly<Record<HashName, Buffer>> = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};

/** The scheme a JOSE algorithm names. */
export function schemeOf(algorithm: JoseAlgorithm): SignatureScheme {
  const hash: HashName = algorithm.endsWith('256')
    ? 'sha256'
    : algorithm.endsWith('384')
      ? 'sha384'
      : 'sha512';
  if (algorithm.startsWith('ES')) return { kind: 'ecdsa', hash };
  if (algorithm.startsWith('RS')) return { kind: 'rsa-pkcs1', hash };
  return { kind: 'rsa-pss', hash };
}

/**
 * Refuses a scheme the key cannot make. ECDSA takes any of the hashes (X.509 allows P-256 with
 * SHA-384), but a JOSE ES256 signer must sit on P-256 and ES384 on P-384 (RFC 7518 section 3.4).
 */
export function assertSchemeFits(id: string, type: KeyType, scheme: SignatureScheme): void {
  const family = familyOf(type);
  const wanted: KeyFamily = scheme.kind === 'ecdsa' ? 'ec' : 'rsa';
  if (family !== wanted) {
    throw new HsmError(
      'ERR_HSM_KEY_TYPE',
      `key "${id}" is ${type} and cannot make ${scheme.kind} signatures; use a ${wanted.toUpperCase()} key`,
    );
  }
}

export function assertAlgorithmFits(id: string, type: KeyType, algorithm: JoseAlgorithm): void {
  assertSchemeFits(id, type, schemeOf(algorithm));
  const curve = algorithm === 'ES256' ? 'ec-p256' : algorithm === 'ES384' ? 'ec-p384' : undefined;
  if (curve !== undefined && curve !== type) {
    throw new HsmError('ERR_HSM_KEY_TYPE', `${algorithm} needs a ${curve} key, but key "${id}" is ${type}`);
  }
}

/** The KeyType of a node:crypto key, or undefined for a key this layer does not manage. */
export function keyTypeOf(key: KeyObject): KeyType | undefined {
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'ec') {
    if (details?.namedCurve === 'prime256v1') return 'ec-p256';
    if (details?.namedCurve === 'secp384r1') return 'ec-p384';
    return undefined;
  }
  if (key.asymmetricKeyType === 'rsa') {
    const type = `rsa-${details?.modulusLength ?? 0}`;
    return isKeyType(type) ? type : undefined;
  }
  return undefined;
}

/**
 * Key ids become file names and CKA_LABEL/CKA_ID values, so they are kept to a portable, unambiguous
 * alphabet.
 */
export function assertKeyId(id: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(id)) {
    throw new TypeError(
      `key id "${id}" is not allowed: use 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit`,
    );
  }
}
