import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compactVerify, importSPKI } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type JoseAlgorithm,
  type KeyManager,
  type KeyType,
  openKeyManager,
  type SignatureScheme,
} from '../../src/hsm/index.js';
import { verifyWithNode, verifyWithOpenssl } from '../helpers/oracles.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';

const cases: ReadonlyArray<readonly [KeyType, SignatureScheme]> = [
  ['ec-p256', { kind: 'ecdsa', hash: 'sha256' }],
  ['ec-p256', { kind: 'ecdsa', hash: 'sha384' }],
  ['ec-p384', { kind: 'ecdsa', hash: 'sha384' }],
  ['ec-p384', { kind: 'ecdsa', hash: 'sha512' }],
  ['rsa-2048', { kind: 'rsa-pkcs1', hash: 'sha256' }],
  ['rsa-2048', { kind: 'rsa-pkcs1', hash: 'sha512' }],
  ['rsa-2048', { kind: 'rsa-pss', hash: 'sha256' }],
  ['rsa-2048', { kind: 'rsa-pss', hash: 'sha384' }],
];

const jwtCases: ReadonlyArray<readonly [KeyType, JoseAlgorithm]> = [
  ['ec-p256', 'ES256'],
  ['ec-p384', 'ES384'],
  ['rsa-2048', 'RS256'],
  ['rsa-2048', 'PS512'],
];

let softhsm: SoftHsm;
let diskDir: string;
const managers = new Map<string, KeyManager>();

beforeAll(async () => {
  softhsm = await createSoftHsm();
  diskDir = await mkdtemp(join(tmpdir(), 'ironroot-disk-'));
  await chmod(diskDir, 0o700);
  managers.set('pkcs11', await openKeyManager(softhsm.uri()));
  managers.set('disk', await openKeyManager(`disk:${join(diskDir, 'keys')}`));
  managers.set('memory', await openKeyManager('memory:'));
  for (const manager of managers.values()) {
    for (const type of ['ec-p256', 'ec-p384', 'rsa-2048'] as const)
      await manager.generateKey(`key-${type}`, type);
  }
});

afterAll(async () => {
  for (const manager of managers.values()) await manager.close();
  await softhsm?.cleanup();
  if (diskDir !== undefined) await rm(diskDir, { recursive: true, force: true });
});

function manager(kind: string): KeyManager {
  const found = managers.get(kind);
  if (found === undefined) throw new Error(`no ${kind} manager was opened`);
  return found;
}

describe.each(['pkcs11', 'disk', 'memory'])('%s key manager', (kind) => {
  it.each(cases)('signs with %s, %o, and node:crypto and openssl both verify', async (type, scheme) => {
    const keys = manager(kind);
    const key = await keys.getKey(`key-${type}`);
    if (key === undefined) throw new Error(`key-${type} missing`);
    expect(keys.kind).toBe(kind);
    const data = Buffer.from(`to be signed by ${kind} ${type} ${scheme.kind} ${scheme.hash}`);
    const signature = await keys.sign(key.id, scheme, data);
    expect(verifyWithNode(key.publicKey, scheme, data, signature)).toBe(true);
    expect(await verifyWithOpenssl(key.publicKey, scheme, data, signature)).toBe(true);
    // The oracles can say no: the same signature over other data is refused by both.
    const other = Buffer.from('something else');
    expect(verifyWithNode(key.publicKey, scheme, other, signature)).toBe(false);
    expect(await verifyWithOpenssl(key.publicKey, scheme, other, signature)).toBe(false);
  });

  it.each(jwtCases)(
    'a %s key signs JWS %s through signer(), and jose verifies it',
    async (type, algorithm) => {
      const signer = await manager(kind).signer(`key-${type}`, algorithm);
      expect(signer.algorithm).toBe(algorithm);
      const header = Buffer.from(JSON.stringify({ alg: algorithm, typ: 'JWT' })).toString('base64url');
      const payload = Buffer.from(JSON.stringify({ sub: 'spiffe://example.org/w' })).toString('base64url');
      const signature = await signer.sign(Buffer.from(`${header}.${payload}`));
      const jws = `${header}.${payload}.${Buffer.from(signature).toString('base64url')}`;
      const key = await importSPKI(
        signer.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
        algorithm,
      );
      const { protectedHeader } = await compactVerify(jws, key);
      expect(protectedHeader.alg).toBe(algorithm);
    },
  );

  it('refuses a scheme or algorithm the key cannot make', async () => {
    const keys = manager(kind);
    await expect(
      keys.sign('key-ec-p256', { kind: 'rsa-pss', hash: 'sha256' }, Buffer.from('x')),
    ).rejects.toMatchObject({
      code: 'ERR_HSM_KEY_TYPE',
    });
    await expect(keys.signer('key-ec-p256', 'ES384')).rejects.toMatchObject({ code: 'ERR_HSM_KEY_TYPE' });
    await expect(keys.signer('key-rsa-2048', 'ES256')).rejects.toMatchObject({ code: 'ERR_HSM_KEY_TYPE' });
  });

  it('lists, refuses a duplicate id, destroys, and then reports the key as not found', async () => {
    const keys = manager(kind);
    await keys.generateKey('short-lived', 'ec-p256');
    await expect(keys.generateKey('short-lived', 'ec-p256')).rejects.toMatchObject({
      code: 'ERR_HSM_KEY_EXISTS',
    });
    expect((await keys.listKeys()).map((k) => k.id)).toContain('short-lived');
    await keys.destroyKey('short-lived');
    expect(await keys.getKey('short-lived')).toBeUndefined();
    expect((await keys.listKeys()).map((k) => k.id)).not.toContain('short-lived');
    await expect(
      keys.sign('short-lived', { kind: 'ecdsa', hash: 'sha256' }, Buffer.from('x')),
    ).rejects.toMatchObject({
      code: 'ERR_HSM_KEY_NOT_FOUND',
    });
    await expect(keys.destroyKey('short-lived')).rejects.toMatchObject({ code: 'ERR_HSM_KEY_NOT_FOUND' });
  });

  it.each(['rsa-3072', 'rsa-4096'] as const)('generates %s keys of that size', async (type) => {
    const key = await manager(kind).generateKey(`big-${type}`, type);
    expect(key.type).toBe(type);
    expect(key.publicKey.asymmetricKeyDetails?.modulusLength).toBe(Number(type.slice(4)));
    const scheme: SignatureScheme = { kind: 'rsa-pss', hash: 'sha256' };
    const signature = await manager(kind).sign(key.id, scheme, Buffer.from('big'));
    expect(verifyWithNode(key.publicKey, scheme, Buffer.from('big'), signature)).toBe(true);
  });
});
