/**
 * MakeCredential done by the verifier, without a TPM (TPM 2.0 Part 1, §24 "Credential Protection";
 * Annex B.10.4 for RSA and C.6.4 for ECC secret sharing).
 *
 * The credential is wrapped so that only the TPM holding the EK's private key can unwrap it, and only
 * when it is asked to with the object whose Name was bound in: ActivateCredential recomputes the
 * outer HMAC over that Name. So a secret that comes back proves the AK with that Name lives in the
 * same TPM as the EK.
 *
 * @module
 */
import {
  createCipheriv,
  createECDH,
  createHmac,
  createPublicKey,
  constants as cryptoConstants,
  publicEncrypt,
  randomBytes,
} from 'node:crypto';
import { digestSize, type HashName } from './hash.js';
import { kdfa, kdfe } from './kdf.js';

/** NIST curves an EK may use, by their node:crypto names. */
export type EccCurveName = 'prime256v1' | 'secp384r1' | 'secp521r1';

/** Byte length of a coordinate (and of a shared secret Z) on each curve. */
export const CURVE_BYTES: Readonly<Record<EccCurveName, number>> = {
  prime256v1: 32,
  secp384r1: 48,
  secp521r1: 66,
};

/** The parts of an EK public area that credential protection depends on. */
interface CredentialEkCommon {
  /** The EK's nameAlg: the hash of OAEP / KDFe, both KDFa calls and the outer HMAC. */
  readonly nameAlg: HashName;
  /** Key size of the EK's symmetric definition (AES-CFB), in bits: 128, 192 or 256. */
  readonly symmetricKeyBits: number;
}

export interface CredentialRsaEk extends CredentialEkCommon {
  readonly type: 'rsa';
  /** Big-endian modulus, as in TPM2B_PUBLIC_KEY_RSA. */
  readonly modulus: Uint8Array;
  /** The public exponent; 0 in a public area means the default 65537. */
  readonly exponent: number;
}

export interface CredentialEccEk extends CredentialEkCommon {
  readonly type: 'ecc';
  readonly curve: EccCurveName;
  readonly x: Uint8Array;
  readonly y: Uint8Array;
}

export type CredentialEk = CredentialRsaEk | CredentialEccEk;

/** What the agent hands to TPM2_ActivateCredential, as the marshalled TPM2B structures. */
export interface MadeCredential {
  /** TPM2B_ID_OBJECT: integrityHMAC (TPM2B_DIGEST) ‖ encIdentity, with its own size prefix. */
  readonly idObject: Buffer;
  /** TPM2B_ENCRYPTED_SECRET: the OAEP ciphertext (RSA) or the ephemeral TPMS_ECC_POINT (ECC). */
  readonly encryptedSecret: Buffer;
}

function tpm2b(body: Uint8Array): Buffer {
  if (body.length > 0xffff) throw new RangeError(`TPM2B body of ${body.length} bytes exceeds 65535`);
  const size = Buffer.alloc(2);
  size.writeUInt16BE(body.length);
  return Buffer.concat([size, body]);
}

/** Left-pads a big-endian integer to `length` bytes (TPMs may send coordinates without leading zeros). */
function padTo(value: Uint8Array, length: number): Buffer {
  if (value.length > length) throw new RangeError(`coordinate of ${value.length} bytes exceeds ${length}`);
  return Buffer.concat([Buffer.alloc(length - value.length), value]);
}

function b64url(value: Uint8Array): string {
  return Buffer.from(value).toString('base64url');
}

function exponentBytes(exponent: number): Buffer {
  const e = exponent === 0 ? 65537 : exponent;
  const out = Buffer.alloc(4);
  out.writeUInt32BE(e);
  let start = 0;
  while (start < 3 && out[start] === 0) start++;
  return out.subarray(start);
}

/**
 * Derives the seed and its encryption to the EK. RSA: a random seed of the nameAlg's size, OAEP
 * with that hash and the label "IDENTITY\0". ECC: an ephemeral key on the EK's curve; the seed is
 * KDFe over the shared x with "IDENTITY", and the encrypted secret is the ephemeral point.
 */
function shareSeed(ek: CredentialEk): { seed: Buffer; encryptedSecret: Buffer } {
  const seedBits = digestSize(ek.nameAlg) * 8;
  if (ek.type === 'rsa') {
    const key = createPublicKey({
      key: { kty: 'RSA', n: b64url(ek.modulus), e: b64url(exponentBytes(ek.exponent)) },
      format: 'jwk',
    });
    const seed = randomBytes(seedBits / 8);
    const encrypted = publicEncrypt(
      {
        key,
        padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING,
        oaepHash: ek.nameAlg,
        oaepLabel: Buffer.from('IDENTITY\0', 'latin1'),
      },
      seed,
    );
    return { seed, encryptedSecret: tpm2b(encrypted) };
  }
  const size = CURVE_BYTES[ek.curve];
  const ekX = padTo(ek.x, size);
  const ekPoint = Buffer.concat([Buffer.of(0x04), ekX, padTo(ek.y, size)]);
  const ephemeral = createECDH(ek.curve);
  const ephemeralPoint = ephemeral.generateKeys(); // uncompressed: 04 ‖ x ‖ y
  // computeSecret validates that the EK point is on the curve and returns x of the shared point,
  // already at the curve's full length, which is Z as the TPM computes it.
  const z = ephemeral.computeSecret(ekPoint);
  const ephX = ephemeralPoint.subarray(1, 1 + size);
  const ephY = ephemeralPoint.subarray(1 + size);
  const seed = kdfe(ek.nameAlg, z, 'IDENTITY', ephX, ekX, seedBits);
  return { seed, encryptedSecret: tpm2b(Buffer.concat([tpm2b(ephX), tpm2b(ephY)])) };
}

/**
 * Wraps `credential` for the TPM that holds `ek`, bound to the object named `objectName` (the AK's
 * Name: nameAlg ‖ H(TPMT_PUBLIC), computed by the verifier from the attribute-checked public area,
 * never taken from the agent).
 *
 * @throws RangeError when the credential is empty or longer than a digest of the EK's nameAlg (the
 *   TPM takes it as a TPM2B_DIGEST), or the symmetric key size is not an AES size.
 */
export function makeCredentialFromParts(
  ek: CredentialEk,
  objectName: Uint8Array,
  credential: Uint8Array,
): MadeCredential {
  const maxCredential = digestSize(ek.nameAlg);
  if (credential.length === 0 || credential.length > maxCredential)
    throw new RangeError(
      `credential must be 1 to ${maxCredential} bytes for an EK with nameAlg ${ek.nameAlg}, got ${credential.length}`,
    );
  if (![128, 192, 256].includes(ek.symmetricKeyBits))
    throw new RangeError(`AES key size must be 128, 192 or 256 bits, got ${ek.symmetricKeyBits}`);

  const { seed, encryptedSecret } = shareSeed(ek);
  const symKey = kdfa(ek.nameAlg, seed, 'STORAGE', objectName, Buffer.alloc(0), ek.symmetricKeyBits);
  // The IV is zero: each seed encrypts exactly one message (Part 1, §24.4).
  const cipher = createCipheriv(`aes-${ek.symmetricKeyBits}-cfb`, symKey, Buffer.alloc(16));
  const encIdentity = Buffer.concat([cipher.update(tpm2b(credential)), cipher.final()]);
  const hmacKey = kdfa(
    ek.nameAlg,
    seed,
    'INTEGRITY',
    Buffer.alloc(0),
    Buffer.alloc(0),
    digestSize(ek.nameAlg) * 8,
  );
  const integrity = createHmac(ek.nameAlg, hmacKey).update(encIdentity).update(objectName).digest();
  return { idObject: tpm2b(Buffer.concat([tpm2b(integrity), encIdentity])), encryptedSecret };
}
