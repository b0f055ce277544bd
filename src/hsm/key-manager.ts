import type { KeyObject } from 'node:crypto';

/** Key types a KeyManager can generate. `ec-p256` is the default for CA and JWT keys. */
export type KeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-3072' | 'rsa-4096';

export type HashName = 'sha256' | 'sha384' | 'sha512';

/**
 * How to sign. The manager hashes the data itself. ECDSA signatures come back as r‖s (IEEE P1363,
 * as CKM_ECDSA and JWS produce them); RSA signatures as the modulus-length octet string.
 */
export type SignatureScheme =
  | { readonly kind: 'ecdsa'; readonly hash: HashName }
  | { readonly kind: 'rsa-pkcs1'; readonly hash: HashName }
  | { readonly kind: 'rsa-pss'; readonly hash: HashName };

/** JOSE algorithm names; structurally the same set as `SigningAlgorithm` in src/spiffe. */
export type JoseAlgorithm = 'ES256' | 'ES384' | 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'PS384' | 'PS512';

export interface ManagedKey {
  /** Caller-chosen, stable identifier (CKA_ID/CKA_LABEL on a token, a file name on disk). */
  readonly id: string;
  readonly type: KeyType;
  readonly publicKey: KeyObject;
}

/**
 * A signer bound to one key and one algorithm. Its shape matches `Signer` in src/spiffe, so the
 * server hands it to certificate and JWT code without this module importing that one.
 */
export interface KeySigner {
  readonly algorithm: JoseAlgorithm;
  readonly publicKey: KeyObject;
  sign(data: Uint8Array): Promise<Uint8Array>;
}

/**
 * Where CA and JWT signing keys live: PKCS#11 in production, disk or memory in development. Failures
 * are HsmErrors with a stable code (see errors.ts); a malformed key id is a TypeError.
 */
export interface KeyManager {
  readonly kind: 'pkcs11' | 'disk' | 'memory';
  /** Creates a new key; fails with ERR_HSM_KEY_EXISTS if `id` is taken. */
  generateKey(id: string, type: KeyType): Promise<ManagedKey>;
  /** The key with this id, or undefined when there is none. */
  getKey(id: string): Promise<ManagedKey | undefined>;
  listKeys(): Promise<ManagedKey[]>;
  /**
   * Hashes `data` with the scheme's hash and signs it. ERR_HSM_KEY_NOT_FOUND, ERR_HSM_KEY_TYPE when the
   * scheme does not fit the key, ERR_HSM_UNAVAILABLE while a token cannot be reached.
   */
  sign(id: string, scheme: SignatureScheme, data: Uint8Array): Promise<Uint8Array>;
  /** A signer for `id` with the given JOSE algorithm, which must fit the key's type. */
  signer(id: string, algorithm: JoseAlgorithm): Promise<KeySigner>;
  /** Removes the key for good (on a token: C_DestroyObject on private and public objects). */
  destroyKey(id: string): Promise<void>;
  /** Releases sessions, handles and files; the manager is unusable afterwards. */
  close(): Promise<void>;
}
