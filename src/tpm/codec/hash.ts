/**
 * The hash algorithms TPM structures name, mapped to node:crypto.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { TpmError } from '../errors.js';
import { algName, TPM_ALG } from './constants.js';

export type TpmHashName = 'sha1' | 'sha256' | 'sha384' | 'sha512';

const HASHES: ReadonlyMap<number, { readonly name: TpmHashName; readonly size: number }> = new Map([
  [TPM_ALG.SHA1, { name: 'sha1', size: 20 }],
  [TPM_ALG.SHA256, { name: 'sha256', size: 32 }],
  [TPM_ALG.SHA384, { name: 'sha384', size: 48 }],
  [TPM_ALG.SHA512, { name: 'sha512', size: 64 }],
]);

/** True for the TPM hash algorithms this library can compute. */
export function isSupportedHash(alg: number): boolean {
  return HASHES.has(alg);
}

function lookup(alg: number): { readonly name: TpmHashName; readonly size: number } {
  const hash = HASHES.get(alg);
  if (!hash) throw new TpmError('ERR_TPM_UNSUPPORTED', `hash algorithm ${algName(alg)} is not supported`);
  return hash;
}

/** node:crypto name of a TPM hash algorithm. */
export function hashName(alg: number): TpmHashName {
  return lookup(alg).name;
}

/** Digest size in bytes of a TPM hash algorithm. */
export function digestSize(alg: number): number {
  return lookup(alg).size;
}

/** The TPM_ALG_ID of a hash name (`sha256` → 0x000b). */
export function hashAlgByName(name: string): number {
  for (const [alg, hash] of HASHES) if (hash.name === name.toLowerCase()) return alg;
  throw new TpmError(
    'ERR_TPM_UNSUPPORTED',
    `hash "${name}" is not supported (use sha1, sha256, sha384, sha512)`,
  );
}

/** H(parts…) with a TPM hash algorithm. */
export function tpmHash(alg: number, ...parts: Uint8Array[]): Uint8Array {
  const h = createHash(hashName(alg));
  for (const part of parts) h.update(part);
  return new Uint8Array(h.digest());
}
