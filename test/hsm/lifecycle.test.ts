import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ckrName, openKeyManager } from '../../src/hsm/index.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';

let softhsm: SoftHsm;
let dir: string;

beforeAll(async () => {
  softhsm = await createSoftHsm('lifecycle');
  dir = await mkdtemp(join(tmpdir(), 'ironroot-lifecycle-'));
});

afterAll(async () => {
  await softhsm?.cleanup();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

it.each(['pkcs11', 'disk', 'memory'])(
  'a closed %s manager refuses every operation with ERR_HSM_CLOSED',
  async (kind) => {
    const spec =
      kind === 'pkcs11' ? softhsm.uri() : kind === 'disk' ? `disk:${join(dir, 'keys')}` : 'memory:';
    const keys = await openKeyManager(spec);
    await keys.generateKey(`closing-${kind}`, 'ec-p256');
    await keys.close();
    const closed = { code: 'ERR_HSM_CLOSED' };
    await expect(
      keys.sign(`closing-${kind}`, { kind: 'ecdsa', hash: 'sha256' }, Buffer.from('x')),
    ).rejects.toMatchObject(closed);
    await expect(keys.getKey(`closing-${kind}`)).rejects.toMatchObject(closed);
    await expect(keys.listKeys()).rejects.toMatchObject(closed);
    await expect(keys.generateKey('another', 'ec-p256')).rejects.toMatchObject(closed);
    await expect(keys.destroyKey(`closing-${kind}`)).rejects.toMatchObject(closed);
  },
);

it('a key made by one PKCS#11 manager is there for the next one after the first is closed', async () => {
  const first = await openKeyManager(softhsm.uri());
  const made = await first.generateKey('survivor', 'ec-p256');
  await first.close();
  const second = await openKeyManager(softhsm.uri());
  try {
    expect((await second.getKey('survivor'))?.publicKey.equals(made.publicKey)).toBe(true);
  } finally {
    await second.close();
  }
});

it('names PKCS#11 return values, and shows vendor and unknown values in hex', () => {
  expect(ckrName(0xa0)).toBe('CKR_PIN_INCORRECT');
  expect(ckrName(0xb3)).toBe('CKR_SESSION_HANDLE_INVALID');
  expect(ckrName(0x190)).toBe('CKR_CRYPTOKI_NOT_INITIALIZED');
  expect(ckrName(0x80000123)).toBe('CKR_VENDOR_DEFINED(0x80000123)');
  expect(ckrName(0x7777)).toBe('CKR_UNKNOWN(0x00007777)');
});

it('refuses key ids that could not be file names or labels', async () => {
  const keys = await openKeyManager('memory:');
  for (const id of ['', '../etc/passwd', '.hidden', 'a b', 'x'.repeat(65)]) {
    await expect(keys.generateKey(id, 'ec-p256')).rejects.toThrow(TypeError);
  }
});
