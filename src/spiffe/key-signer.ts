import { constants, createPublicKey, type KeyObject, sign } from 'node:crypto';
import type { Signer, SigningAlgorithm } from './signer.js';

const DEFAULT_ALGORITHM: Record<string, SigningAlgorithm> = {
  prime256v1: 'ES256',
  secp384r1: 'ES384',
};

/**
 * A {@link Signer} over a private key held in this process: for development, tests, demos and
 * workload-side CSRs. Production CA keys sign through the HSM's Signer instead.
 *
 * @param algorithm Default: ES256/ES384 by curve for EC keys, RS256 for RSA keys.
 * @example
 * ```ts
 * const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
 * const signer = createKeySigner(privateKey);
 * ```
 */
export function createKeySigner(privateKey: KeyObject, algorithm?: SigningAlgorithm): Signer {
  if (privateKey.type !== 'private') throw new TypeError('createKeySigner needs a private key');
  const keyType = privateKey.asymmetricKeyType;
  const curve = privateKey.asymmetricKeyDetails?.namedCurve ?? '';
  const alg =
    algorithm ?? (keyType === 'ec' ? DEFAULT_ALGORITHM[curve] : keyType === 'rsa' ? 'RS256' : undefined);
  if (alg === undefined)
    throw new TypeError(`no SPIFFE signing algorithm for a ${keyType} key on "${curve}"`);
  if (alg.startsWith('ES') !== (keyType === 'ec') || (!alg.startsWith('ES') && keyType !== 'rsa')) {
    throw new TypeError(`algorithm ${alg} does not fit a ${keyType} key`);
  }
  const hash = `sha${alg.slice(2)}`;
  const publicKey = createPublicKey(privateKey);
  return {
    algorithm: alg,
    publicKey,
    sign: async (data) => {
      if (alg.startsWith('ES')) return sign(hash, data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      if (alg.startsWith('PS')) {
        // The salt is as long as the hash, as JWS (RFC 7518 §3.5) requires.
        const saltLength = Number(alg.slice(2)) / 8;
        return sign(hash, data, { key: privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength });
      }
      return sign(hash, data, privateKey);
    },
  };
}
