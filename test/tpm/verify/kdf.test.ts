import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { TPM_ALG } from '../../../src/tpm/codec/constants.js';
import { kdfa, kdfe } from '../../../src/tpm/verify/kdf.js';

const ALG = { sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384 } as const;

const exec = promisify(execFile);

/** Runs `openssl kdf` and returns the derived bytes (it prints them as colon-separated hex). */
async function opensslKdf(kind: 'KBKDF' | 'SSKDF', bytes: number, options: string[]): Promise<Buffer> {
  const args = ['kdf', '-keylen', String(bytes), ...options.flatMap((o) => ['-kdfopt', o]), kind];
  const { stdout } = await exec('openssl', args);
  return Buffer.from(stdout.trim().replaceAll(':', ''), 'hex');
}

describe('KDFa', () => {
  // OpenSSL's KBKDF in counter mode with HMAC hashes [i]32 ‖ label ‖ 0x00 ‖ context ‖ [L]32, which
  // is KDFa with context = contextU ‖ contextV.
  it.each([
    ['sha256', 'STORAGE', 128],
    ['sha256', 'INTEGRITY', 256],
    ['sha384', 'STORAGE', 256],
    ['sha384', 'INTEGRITY', 384],
    ['sha256', 'LONGER THAN ONE BLOCK', 520],
  ] as const)('equals OpenSSL KBKDF for %s, label %s, %i bits', async (hash, label, bits) => {
    const key = randomBytes(48);
    const contextU = randomBytes(34);
    const contextV = randomBytes(5);
    const expected = await opensslKdf('KBKDF', bits / 8, [
      'mac:HMAC',
      `digest:${hash.toUpperCase()}`,
      `hexkey:${key.toString('hex')}`,
      `salt:${label}`,
      `hexinfo:${Buffer.concat([contextU, contextV]).toString('hex')}`,
    ]);
    expect(kdfa(ALG[hash], key, label, contextU, contextV, bits).toString('hex')).toBe(
      expected.toString('hex'),
    );
  });

  it('treats a label with and without its terminating zero alike', () => {
    const key = randomBytes(32);
    expect(kdfa(TPM_ALG.SHA256, key, 'STORAGE', Buffer.of(1), Buffer.alloc(0), 128)).toEqual(
      kdfa(TPM_ALG.SHA256, key, 'STORAGE\0', Buffer.of(1), Buffer.alloc(0), 128),
    );
  });

  it('rejects lengths that are not whole octets', () => {
    expect(() => kdfa(TPM_ALG.SHA256, Buffer.of(1), 'X', Buffer.alloc(0), Buffer.alloc(0), 12)).toThrow(
      RangeError,
    );
  });
});

describe('KDFe', () => {
  // OpenSSL's SSKDF (SP800-56C one-step, hash) computes H([i]32 ‖ Z ‖ FixedInfo), which is KDFe
  // with FixedInfo = label ‖ 0x00 ‖ partyUInfo ‖ partyVInfo.
  it.each([
    ['sha256', 256],
    ['sha384', 384],
    ['sha256', 600],
  ] as const)('equals OpenSSL SSKDF for %s, %i bits', async (hash, bits) => {
    const z = randomBytes(48);
    const partyU = randomBytes(48);
    const partyV = randomBytes(48);
    const fixedInfo = Buffer.concat([Buffer.from('IDENTITY\0'), partyU, partyV]);
    const expected = await opensslKdf('SSKDF', bits / 8, [
      `digest:${hash.toUpperCase()}`,
      `hexkey:${z.toString('hex')}`,
      `hexinfo:${fixedInfo.toString('hex')}`,
    ]);
    expect(kdfe(ALG[hash], z, 'IDENTITY', partyU, partyV, bits).toString('hex')).toBe(
      expected.toString('hex'),
    );
  });
});
