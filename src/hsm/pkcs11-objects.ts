/**
 * @module
 * Key objects on a token: the templates ironroot generates with, reading the protection attributes
 * back, and turning CKA_EC_POINT / CKA_MODULUS into node:crypto public keys.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { DIGEST_INFO_PREFIX, HASH_LENGTH, rsaBitsOf } from './algorithms.js';
import type { HashName, KeyType, SignatureScheme } from './key-manager.js';
import {
  type Attribute,
  type Mechanism,
  type PKCS11,
  pkcs11js as p,
  type RsaPSS,
  type Template,
} from './pkcs11-binding.js';

/** DER OIDs of the curves, as CKA_EC_PARAMS holds them. */
const EC_PARAMS: Readonly<Record<'ec-p256' | 'ec-p384', Buffer>> = {
  'ec-p256': Buffer.from('06082a8648ce3d030107', 'hex'),
  'ec-p384': Buffer.from('06052b81040022', 'hex'),
};

const EC_FIELD_BYTES: Readonly<Record<'ec-p256' | 'ec-p384', number>> = { 'ec-p256': 32, 'ec-p384': 48 };

/** The protection every private key ironroot signs with must have, read back after generation. */
const REQUIRED_PRIVATE: ReadonlyArray<readonly [number, string, boolean]> = [
  [p.CKA_TOKEN, 'CKA_TOKEN', true],
  [p.CKA_PRIVATE, 'CKA_PRIVATE', true],
  [p.CKA_SENSITIVE, 'CKA_SENSITIVE', true],
  [p.CKA_EXTRACTABLE, 'CKA_EXTRACTABLE', false],
  [p.CKA_ALWAYS_SENSITIVE, 'CKA_ALWAYS_SENSITIVE', true],
  [p.CKA_NEVER_EXTRACTABLE, 'CKA_NEVER_EXTRACTABLE', true],
  [p.CKA_SIGN, 'CKA_SIGN', true],
  [p.CKA_DECRYPT, 'CKA_DECRYPT', false],
  [p.CKA_UNWRAP, 'CKA_UNWRAP', false],
  [p.CKA_DERIVE, 'CKA_DERIVE', false],
];

export function idBytes(id: string): Buffer {
  return Buffer.from(id, 'utf8');
}

/** Mechanism and templates for C_GenerateKeyPair: sign-only, sensitive, never extractable, on the token. */
export function generationTemplates(
  id: string,
  type: KeyType,
): { mechanism: Mechanism; publicTemplate: Template; privateTemplate: Template } {
  const naming: Attribute[] = [
    { type: p.CKA_ID, value: idBytes(id) },
    { type: p.CKA_LABEL, value: id },
  ];
  // No CKA_VERIFY or CKA_ENCRYPT: tpm2-pkcs11 derives them from the TPM object and refuses a template
  // that states them otherwise (CKR_GENERAL_ERROR). Ironroot verifies in software, and what a public
  // key may encrypt is public anyway; the private template is what keeps the key sign-only.
  const publicTemplate: Template = [
    { type: p.CKA_CLASS, value: p.CKO_PUBLIC_KEY },
    { type: p.CKA_TOKEN, value: true },
    { type: p.CKA_PRIVATE, value: false },
    { type: p.CKA_WRAP, value: false },
    { type: p.CKA_DERIVE, value: false },
    ...naming,
  ];
  const privateTemplate: Template = [
    { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY },
    ...REQUIRED_PRIVATE.filter(
      ([attribute]) => attribute !== p.CKA_ALWAYS_SENSITIVE && attribute !== p.CKA_NEVER_EXTRACTABLE,
    ).map(([attribute, , value]) => ({ type: attribute, value })),
    ...naming,
  ];
  if (type === 'ec-p256' || type === 'ec-p384') {
    publicTemplate.push(
      { type: p.CKA_KEY_TYPE, value: p.CKK_EC },
      { type: p.CKA_EC_PARAMS, value: EC_PARAMS[type] },
    );
    privateTemplate.push({ type: p.CKA_KEY_TYPE, value: p.CKK_EC });
    return { mechanism: { mechanism: p.CKM_EC_KEY_PAIR_GEN }, publicTemplate, privateTemplate };
  }
  publicTemplate.push(
    { type: p.CKA_KEY_TYPE, value: p.CKK_RSA },
    { type: p.CKA_MODULUS_BITS, value: rsaBitsOf(type) },
    { type: p.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
  );
  privateTemplate.push({ type: p.CKA_KEY_TYPE, value: p.CKK_RSA });
  return { mechanism: { mechanism: p.CKM_RSA_PKCS_KEY_PAIR_GEN }, publicTemplate, privateTemplate };
}

/** Every way the private key's attributes disagree with what ironroot requires; empty when it is sound. */
export function privateKeyProblems(module: PKCS11, session: Buffer, key: Buffer): string[] {
  const values = module.C_GetAttributeValue(
    session,
    key,
    REQUIRED_PRIVATE.map(([type]) => ({ type })),
  );
  const problems: string[] = [];
  REQUIRED_PRIVATE.forEach(([, name, wanted], index) => {
    const actual = values[index]?.value;
    const flag = actual !== undefined && actual.length > 0 && actual[0] !== 0;
    if (flag !== wanted) problems.push(`${name} is ${flag}, must be ${wanted}`);
  });
  return problems;
}

/** A CK_ULONG attribute: 8 bytes on 64-bit Unix, 4 on Windows and 32-bit platforms, host byte order. */
function ulong(value: Buffer): number {
  return value.length === 8 ? Number(value.readBigUInt64LE(0)) : value.readUInt32LE(0);
}

function base64url(bytes: Buffer): string {
  return bytes.toString('base64url');
}

/** CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 2.40); some tokens give the bare point. */
function unwrapEcPoint(value: Buffer, fieldBytes: number): Buffer {
  const bare = 2 * fieldBytes + 1;
  if (value.length === bare && value[0] === 0x04) return value;
  if (value[0] === 0x04 && value[1] === bare) return value.subarray(2);
  if (value[0] === 0x04 && value[1] === 0x81 && value[2] === bare) return value.subarray(3);
  throw new Error(`CKA_EC_POINT of ${value.length} bytes is not an uncompressed point`);
}

/** Reads a public-key object into a KeyObject and the KeyType it has; undefined for types ironroot does not use. */
export function readPublicKey(
  module: PKCS11,
  session: Buffer,
  object: Buffer,
): { type: KeyType; publicKey: KeyObject } | undefined {
  const [keyType] = module.C_GetAttributeValue(session, object, [{ type: p.CKA_KEY_TYPE }]);
  const kind = keyType === undefined ? undefined : ulong(keyType.value);
  if (kind === p.CKK_EC) {
    const [params, point] = module.C_GetAttributeValue(session, object, [
      { type: p.CKA_EC_PARAMS },
      { type: p.CKA_EC_POINT },
    ]);
    const type = (['ec-p256', 'ec-p384'] as const).find((name) => params?.value.equals(EC_PARAMS[name]));
    if (type === undefined || point === undefined) return undefined;
    const raw = unwrapEcPoint(point.value, EC_FIELD_BYTES[type]);
    const size = EC_FIELD_BYTES[type];
    const publicKey = createPublicKey({
      key: {
        kty: 'EC',
        crv: type === 'ec-p256' ? 'P-256' : 'P-384',
        x: base64url(raw.subarray(1, 1 + size)),
        y: base64url(raw.subarray(1 + size)),
      },
      format: 'jwk',
    });
    return { type, publicKey };
  }
  if (kind === p.CKK_RSA) {
    const [modulus, exponent] = module.C_GetAttributeValue(session, object, [
      { type: p.CKA_MODULUS },
      { type: p.CKA_PUBLIC_EXPONENT },
    ]);
    if (modulus === undefined || exponent === undefined) return undefined;
    const type = `rsa-${modulus.value.length * 8}`;
    if (type !== 'rsa-2048' && type !== 'rsa-3072' && type !== 'rsa-4096') return undefined;
    const publicKey = createPublicKey({
      key: { kty: 'RSA', n: base64url(modulus.value), e: base64url(exponent.value) },
      format: 'jwk',
    });
    return { type, publicKey };
  }
  return undefined;
}

const HASH_MECHANISM: Readonly<Record<HashName, { hash: number; mgf: number }>> = {
  sha256: { hash: p.CKM_SHA256, mgf: p.CKG_MGF1_SHA256 },
  sha384: { hash: p.CKM_SHA384, mgf: p.CKG_MGF1_SHA384 },
  sha512: { hash: p.CKM_SHA512, mgf: p.CKG_MGF1_SHA512 },
};

/**
 * The raw mechanism and its input for a digest computed here. Hashing in Node and using the raw
 * mechanisms (CKM_ECDSA, CKM_RSA_PKCS with a DigestInfo, CKM_RSA_PKCS_PSS) keeps the data sent to the
 * token small and works on tokens that lack the combined hash-and-sign mechanisms.
 */
export function signingMechanism(
  scheme: SignatureScheme,
  digest: Buffer,
): { mechanism: Mechanism; input: Buffer } {
  switch (scheme.kind) {
    case 'ecdsa':
      return { mechanism: { mechanism: p.CKM_ECDSA }, input: digest };
    case 'rsa-pkcs1':
      return {
        mechanism: { mechanism: p.CKM_RSA_PKCS },
        input: Buffer.concat([DIGEST_INFO_PREFIX[scheme.hash], digest]),
      };
    case 'rsa-pss': {
      const { hash, mgf } = HASH_MECHANISM[scheme.hash];
      // Salt as long as the hash, as JWS PS* requires (RFC 7518 section 3.5).
      const parameter: RsaPSS = {
        type: p.CK_PARAMS_RSA_PSS,
        hashAlg: hash,
        mgf,
        saltLen: HASH_LENGTH[scheme.hash],
      };
      return { mechanism: { mechanism: p.CKM_RSA_PKCS_PSS, parameter }, input: digest };
    }
  }
}
