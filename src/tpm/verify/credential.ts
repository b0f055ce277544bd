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
  constants as cryptoConstants,
  publicEncrypt,
  randomBytes,
} from 'node:crypto';
import { TpmWriter } from '../codec/buffer.js';
import { algName, TPM_ALG, TPM_ECC } from '../codec/constants.js';
import { type CredentialChallenge, marshalIdObject } from '../codec/credential.js';
import { digestSize, hashName } from '../codec/hash.js';
import type { EccPublic, RsaPublic, TpmtPublic } from '../codec/public.js';
import { curveCoordinateSize, publicKeyFromArea } from '../codec/public-key.js';
import { TpmVerifyError } from './errors.js';
import { kdfa, kdfe } from './kdf.js';

// node:crypto (OpenSSL) names of the curves an EK may use.
const ECDH_CURVES: ReadonlyMap<number, string> = new Map([
  [TPM_ECC.NIST_P256, 'prime256v1'],
  [TPM_ECC.NIST_P384, 'secp384r1'],
  [TPM_ECC.NIST_P521, 'secp521r1'],
]);

/** Left-pads a big-endian integer to `length` bytes (TPMs may send coordinates without leading zeros). */
function padTo(value: Uint8Array, length: number): Buffer {
  if (value.length > length)
    throw new TpmVerifyError('ERR_TPM_MALFORMED', `EK coordinate of ${value.length} bytes exceeds ${length}`);
  return Buffer.concat([Buffer.alloc(length - value.length), value]);
}

/** RSA: a random seed of the nameAlg's size, encrypted with OAEP (nameAlg, label "IDENTITY\0"). */
function rsaSeed(ek: RsaPublic): { seed: Buffer; secret: Uint8Array } {
  const seed = randomBytes(digestSize(ek.nameAlg));
  const secret = publicEncrypt(
    {
      key: publicKeyFromArea(ek),
      padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING,
      oaepHash: hashName(ek.nameAlg),
      oaepLabel: Buffer.from('IDENTITY\0', 'latin1'),
    },
    seed,
  );
  return { seed, secret };
}

/**
 * ECC: one-pass ECDH (C(1e, 1s)) with an ephemeral key on the EK's curve. The seed is
 * KDFe(nameAlg, Z, "IDENTITY", ephemeral x, EK x); the encrypted secret is the ephemeral point.
 */
function eccSeed(ek: EccPublic): { seed: Buffer; secret: Uint8Array } {
  const curve = ECDH_CURVES.get(ek.parameters.curveId);
  if (curve === undefined)
    throw new TpmVerifyError(
      'ERR_TPM_UNSUPPORTED',
      `EK curve 0x${ek.parameters.curveId.toString(16)} is not supported (NIST P-256, P-384, P-521 are)`,
    );
  const size = curveCoordinateSize(ek.parameters.curveId);
  const ekX = padTo(ek.unique.x, size);
  const ephemeral = createECDH(curve);
  const ephemeralPoint = ephemeral.generateKeys(); // uncompressed: 04 ‖ x ‖ y
  let z: Buffer;
  try {
    // Validates that the EK point is on the curve; returns the shared x at the curve's full
    // length, which is Z as the TPM computes it.
    z = ephemeral.computeSecret(Buffer.concat([Buffer.of(0x04), ekX, padTo(ek.unique.y, size)]));
  } catch (cause) {
    throw new TpmVerifyError('ERR_TPM_MALFORMED', 'the EK public point is not on its curve', { cause });
  }
  const ephX = ephemeralPoint.subarray(1, 1 + size);
  const ephY = ephemeralPoint.subarray(1 + size);
  const seed = kdfe(ek.nameAlg, z, 'IDENTITY', ephX, ekX, digestSize(ek.nameAlg) * 8);
  return { seed, secret: new TpmWriter().tpm2b(ephX).tpm2b(ephY).finish() };
}

/**
 * Wraps `credential` for the TPM that holds `ek`, bound to the object named `objectName` (the AK's
 * Name, which the verifier computes itself with `objectName()` from the attribute-checked AK public
 * area, never taking it from the agent).
 *
 * The result is what the agent passes to TPM2_ActivateCredential: `credentialBlob` is the body of a
 * TPM2B_ID_OBJECT, `secret` the body of a TPM2B_ENCRYPTED_SECRET.
 *
 * @throws RangeError when the credential is empty or longer than a digest of the EK's nameAlg (the TPM
 *   takes it as a TPM2B_DIGEST and returns it as one).
 * @throws TpmVerifyError ERR_TPM_UNSUPPORTED when the EK's symmetric definition is not AES-CFB, or its
 *   hash or curve is not one node:crypto provides; ERR_TPM_MALFORMED when its public key is invalid.
 */
export function makeCredential(
  ek: TpmtPublic,
  objectName: Uint8Array,
  credential: Uint8Array,
): CredentialChallenge {
  const hash = hashName(ek.nameAlg);
  const maxCredential = digestSize(ek.nameAlg);
  if (credential.length === 0 || credential.length > maxCredential)
    throw new RangeError(
      `credential must be 1 to ${maxCredential} bytes for an EK with nameAlg ${hash}, got ${credential.length}`,
    );
  const sym = ek.parameters.symmetric;
  if (sym.algorithm !== TPM_ALG.AES || sym.mode !== TPM_ALG.CFB || ![128, 192, 256].includes(sym.keyBits))
    throw new TpmVerifyError(
      'ERR_TPM_UNSUPPORTED',
      `EK symmetric definition ${algName(sym.algorithm)}-${sym.keyBits}-${algName(sym.mode)} is not supported; ` +
        'credential protection is implemented for AES-CFB EKs (all TCG EK templates)',
    );

  const { seed, secret } = ek.type === TPM_ALG.RSA ? rsaSeed(ek) : eccSeed(ek);
  const symKey = kdfa(ek.nameAlg, seed, 'STORAGE', objectName, Buffer.alloc(0), sym.keyBits);
  // The IV is zero: each seed encrypts exactly one message (Part 1, §24.4).
  const cipher = createCipheriv(`aes-${sym.keyBits}-cfb`, symKey, Buffer.alloc(16));
  const plain = new TpmWriter().tpm2b(credential).finish();
  const encIdentity = Buffer.concat([cipher.update(plain), cipher.final()]);
  const hmacKey = kdfa(ek.nameAlg, seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), maxCredential * 8);
  const integrityHmac = createHmac(hash, hmacKey).update(encIdentity).update(objectName).digest();
  return { credentialBlob: marshalIdObject({ integrityHmac, encIdentity }), secret };
}
