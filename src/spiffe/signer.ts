import type { KeyObject } from 'node:crypto';

/**
 * JOSE names of the signature algorithms ironroot signs with. The name fixes the key type, the curve
 * or modulus family, the hash and the padding, so one value says everything a verifier needs.
 */
export type SigningAlgorithm = 'ES256' | 'ES384' | 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'PS384' | 'PS512';

/**
 * A private key that may live anywhere (HSM, disk, memory). Certificate and JWT code signs only
 * through this, so it never learns where the key is.
 */
export interface Signer {
  /** Algorithm this signer produces; fixed for the key's lifetime. */
  readonly algorithm: SigningAlgorithm;
  /** The public half, for building certificates, JWKS entries and verifying. */
  readonly publicKey: KeyObject;
  /**
   * Signs `data` (the signer hashes it). ECDSA signatures are returned as r‖s (IEEE P1363, the form
   * of JWS and of PKCS#11's CKM_ECDSA); callers that need DER convert.
   */
  sign(data: Uint8Array): Promise<Uint8Array>;
}
