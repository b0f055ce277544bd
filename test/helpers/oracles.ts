import { execFile } from 'node:child_process';
import { constants, type KeyObject, verify } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { SignatureScheme } from '../../src/hsm/index.js';

const run = promisify(execFile);

function derInteger(bytes: Uint8Array): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start++;
  let value = Buffer.from(bytes.subarray(start));
  // A set top bit would read as negative; DER needs a leading zero then.
  if ((value[0] ?? 0) & 0x80) value = Buffer.concat([Buffer.from([0]), value]);
  return Buffer.concat([Buffer.from([0x02, value.length]), value]);
}

/** r‖s (IEEE P1363) to the DER SEQUENCE { r INTEGER, s INTEGER } that openssl expects. */
export function p1363ToDer(signature: Uint8Array): Buffer {
  const half = signature.length / 2;
  const body = Buffer.concat([derInteger(signature.subarray(0, half)), derInteger(signature.subarray(half))]);
  const length = body.length < 0x80 ? Buffer.from([body.length]) : Buffer.from([0x81, body.length]);
  return Buffer.concat([Buffer.from([0x30]), length, body]);
}

const SALT: Record<SignatureScheme['hash'], number> = { sha256: 32, sha384: 48, sha512: 64 };

/** Verifies with node:crypto. */
export function verifyWithNode(
  publicKey: KeyObject,
  scheme: SignatureScheme,
  data: Uint8Array,
  signature: Uint8Array,
): boolean {
  switch (scheme.kind) {
    case 'ecdsa':
      return verify(scheme.hash, data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature);
    case 'rsa-pkcs1':
      return verify(scheme.hash, data, { key: publicKey, padding: constants.RSA_PKCS1_PADDING }, signature);
    case 'rsa-pss':
      return verify(
        scheme.hash,
        data,
        { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: SALT[scheme.hash] },
        signature,
      );
  }
}

/** Verifies with `openssl dgst -verify` on temporary files; true when openssl says "Verified OK". */
export async function verifyWithOpenssl(
  publicKey: KeyObject,
  scheme: SignatureScheme,
  data: Uint8Array,
  signature: Uint8Array,
): Promise<boolean> {
  const dir = await mkdtemp(join(tmpdir(), 'ironroot-openssl-'));
  try {
    const pub = join(dir, 'pub.pem');
    const msg = join(dir, 'data.bin');
    const sig = join(dir, 'sig.bin');
    await writeFile(pub, publicKey.export({ type: 'spki', format: 'pem' }));
    await writeFile(msg, data);
    await writeFile(sig, scheme.kind === 'ecdsa' ? p1363ToDer(signature) : signature);
    const pss =
      scheme.kind === 'rsa-pss'
        ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', `rsa_pss_saltlen:${SALT[scheme.hash]}`]
        : [];
    try {
      const { stdout } = await run('openssl', [
        'dgst',
        `-${scheme.hash}`,
        ...pss,
        '-verify',
        pub,
        '-signature',
        sig,
        msg,
      ]);
      return stdout.includes('Verified OK');
    } catch {
      return false;
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
