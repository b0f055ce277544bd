import { TpmVerifyError } from './errors.js';

/** Hash functions the verifier computes with, by their node:crypto names. */
export type HashName = 'sha1' | 'sha256' | 'sha384' | 'sha512';

// TPM_ALG_ID values of the hashes (TPM 2.0 Part 2, Table 9). SM3 is left out: node:crypto has no
// SM3 in the OpenSSL builds Node ships, so an SM3 EK or AK is reported as unsupported.
const HASH_BY_ALG: ReadonlyMap<number, HashName> = new Map([
  [0x0004, 'sha1'],
  [0x000b, 'sha256'],
  [0x000c, 'sha384'],
  [0x000d, 'sha512'],
]);

const DIGEST_SIZE: Readonly<Record<HashName, number>> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

/** The node:crypto hash for a TPM_ALG_ID, or ERR_TPM_UNSUPPORTED_ALGORITHM naming `what` it is for. */
export function hashFromAlg(alg: number, what: string): HashName {
  const name = HASH_BY_ALG.get(alg);
  if (name === undefined)
    throw new TpmVerifyError(
      'ERR_TPM_UNSUPPORTED_ALGORITHM',
      `${what} uses hash algorithm 0x${alg.toString(16).padStart(4, '0')}; supported are SHA-1, SHA-256, SHA-384 and SHA-512`,
    );
  return name;
}

/** Size in bytes of a digest of `hash`. */
export function digestSize(hash: HashName): number {
  return DIGEST_SIZE[hash];
}
