/**
 * Attestation keys: restricted signing keys created under the EK, so they live in the endorsement
 * hierarchy and their quotes carry real resetCount/restartCount/firmwareVersion (tpm-notes §2.4).
 *
 * @module
 */
import { TPM_ALG, TPM_ECC } from '../codec/constants.js';
import { objectAttributes, objectName, type ParsedPublic, type TpmtPublic } from '../codec/public.js';
import { passwordSession } from '../session.js';
import type { LoadedObject, Tpm } from '../tpm.js';
import { type Ek, withEkSession } from './ek.js';

export type AkAlgorithm = 'rsa2048' | 'ecc-p256';

/** The blobs to persist; `loadAk` turns them back into a key under the same EK. */
export interface AkBlobs {
  /** TPM2B_PRIVATE (encrypted by the EK; useless on any other TPM). */
  readonly privateBlob: Uint8Array;
  /** TPM2B_PUBLIC. */
  readonly publicBlob: Uint8Array;
}

export interface CreatedAk extends AkBlobs {
  readonly public: ParsedPublic;
  readonly name: Uint8Array;
}

const AK_ATTRIBUTES = objectAttributes(
  'fixedTPM',
  'fixedParent',
  'sensitiveDataOrigin',
  'userWithAuth',
  'restricted',
  'sign',
);
const NO_SYMMETRIC = { algorithm: TPM_ALG.NULL, keyBits: 0, mode: 0 };

/** AK templates: RSA-2048 RSASSA-SHA256 or ECC P-256 ECDSA-SHA256, empty auth and policy. */
export function akTemplate(algorithm: AkAlgorithm): TpmtPublic {
  if (algorithm === 'rsa2048') {
    return {
      type: TPM_ALG.RSA,
      nameAlg: TPM_ALG.SHA256,
      objectAttributes: AK_ATTRIBUTES,
      authPolicy: new Uint8Array(),
      parameters: {
        symmetric: NO_SYMMETRIC,
        scheme: { scheme: TPM_ALG.RSASSA, hashAlg: TPM_ALG.SHA256 },
        keyBits: 2048,
        exponent: 0,
      },
      unique: new Uint8Array(),
    };
  }
  return {
    type: TPM_ALG.ECC,
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: AK_ATTRIBUTES,
    authPolicy: new Uint8Array(),
    parameters: {
      symmetric: NO_SYMMETRIC,
      scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 },
      curveId: TPM_ECC.NIST_P256,
      kdf: { scheme: TPM_ALG.NULL, hashAlg: TPM_ALG.NULL },
    },
    unique: { x: new Uint8Array(), y: new Uint8Array() },
  };
}

/** Creates an AK under `ek` and returns its blobs; nothing stays loaded. */
export async function createAk(tpm: Tpm, ek: Ek, algorithm: AkAlgorithm = 'rsa2048'): Promise<CreatedAk> {
  const created = await withEkSession(tpm, ek, (auth) => tpm.create(ek.handle, auth, akTemplate(algorithm)));
  return {
    privateBlob: created.privateBlob,
    publicBlob: created.publicBlob,
    public: created.public,
    name: objectName(created.public),
  };
}

/** Loads AK blobs under `ek`; flush the handle when done (or use `withAk`). */
export async function loadAk(tpm: Tpm, ek: Ek, blobs: AkBlobs): Promise<LoadedObject> {
  return withEkSession(tpm, ek, (auth) => tpm.load(ek.handle, auth, blobs.privateBlob, blobs.publicBlob));
}

export async function withAk<T>(
  tpm: Tpm,
  ek: Ek,
  blobs: AkBlobs,
  use: (ak: LoadedObject) => Promise<T>,
): Promise<T> {
  const ak = await loadAk(tpm, ek, blobs);
  return tpm.withHandle(ak.handle, () => use(ak));
}

/** The AK's auth: the empty password its template gives it. */
export const AK_AUTH = passwordSession();
