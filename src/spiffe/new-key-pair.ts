/**
 * Key pairs made synchronously, safe to use at once.
 *
 * On Node 20, `generateKeyPairSync` hands out KeyObjects that share a mutex with the job that made
 * them, and the job, freed later by the garbage collector, locks that mutex in its destructor. A
 * collection that starts inside a native call already holding it (`asymmetricKeyDetails`, `sign`,
 * `export`: each allocates on the heap while it holds the lock) waits on the thread's own lock:
 * the process hangs for good. It was seen in the test suite, and a loop of generate-then-sign on a
 * small young generation hangs within a few hundred keys. Asking the job for DER and importing it
 * leaves the job the only holder of its key. (The asynchronous `generateKeyPair` frees its job as
 * soon as it answers, not by the collector, and is not affected.)
 *
 * @module
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyPairKeyObjectResult,
} from 'node:crypto';

/**
 * A fresh key pair, as `generateKeyPairSync(type, options)` would return it.
 *
 * @example
 * ```ts
 * const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
 * ```
 */
export function newKeyPair(type: 'ec', options: { namedCurve: string }): KeyPairKeyObjectResult;
export function newKeyPair(type: 'rsa', options: { modulusLength: number }): KeyPairKeyObjectResult;
export function newKeyPair(
  type: 'ec' | 'rsa',
  options: { namedCurve: string } | { modulusLength: number },
): KeyPairKeyObjectResult {
  const privateKeyEncoding = { type: 'pkcs8', format: 'der' } as const;
  const publicKeyEncoding = { type: 'spki', format: 'der' } as const;
  const der: Buffer =
    type === 'ec' && 'namedCurve' in options
      ? generateKeyPairSync('ec', { namedCurve: options.namedCurve, privateKeyEncoding, publicKeyEncoding })
          .privateKey
      : generateKeyPairSync('rsa', {
          modulusLength: 'modulusLength' in options ? options.modulusLength : 0,
          privateKeyEncoding,
          publicKeyEncoding,
        }).privateKey;
  const privateKey = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  return { privateKey, publicKey: createPublicKey(privateKey) };
}
