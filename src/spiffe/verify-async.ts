/**
 * node:crypto's one-shot signature check on libuv's thread pool (`crypto.verify` with a callback):
 * the OpenSSL work of an issuance's two checks (the CSR's proof of possession, the self-check of
 * the new certificate's signature) runs beside the event loop, so with several agents calling at
 * once another core does it while the loop reads the next request.
 *
 * @module
 */
import { type KeyObject, type VerifyKeyObjectInput, type VerifyPublicKeyInput, verify } from 'node:crypto';

/**
 * Resolves to whether `signature` verifies over `data`; rejects with node:crypto's error when the
 * inputs do not fit (a key of the wrong kind, an unknown digest), as the synchronous call throws.
 */
export function verifyOffThread(
  hash: string | null,
  data: Uint8Array,
  key: KeyObject | VerifyKeyObjectInput | VerifyPublicKeyInput,
  signature: Uint8Array,
): Promise<boolean> {
  return new Promise((resolve, reject) => {
    verify(hash, data, key, signature, (error, verified) => (error ? reject(error) : resolve(verified)));
  });
}
