import { verify } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type HsmError, type KeyType, Pkcs11KeyManager, parsePkcs11Uri } from '../../src/hsm/index.js';
import { runServerCli } from '../helpers/cli.js';
import { assertBuilt } from '../helpers/dist.js';
import { startTestServer } from '../helpers/server.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';
import { startTpm2Pkcs11, type Tpm2Pkcs11 } from '../helpers/tpm2-pkcs11.js';

let softhsm: SoftHsm;
let tpm: Tpm2Pkcs11;

beforeAll(async () => {
  assertBuilt();
  softhsm = await createSoftHsm('two-modules');
  tpm = await startTpm2Pkcs11('tpm-ca');
});

afterAll(async () => {
  await tpm?.stop();
  await softhsm?.cleanup();
});

const tokens = [
  { name: 'SoftHSM2', token: () => softhsm },
  { name: 'tpm2-pkcs11 over swtpm', token: () => tpm },
];

const HASH: Record<'ec-p256' | 'ec-p384', 'sha256' | 'sha384'> = { 'ec-p256': 'sha256', 'ec-p384': 'sha384' };

describe.each(tokens)('the same key templates on $name', ({ token }) => {
  it.each(['ec-p256', 'ec-p384'] as const)(
    'generates a %s key that passes read-back, signs, and verifies',
    async (type) => {
      const keys = await Pkcs11KeyManager.open(parsePkcs11Uri(token().uri()));
      try {
        const key = await keys.generateKey(`ca-${type}`, type);
        expect(key.type).toBe(type);
        expect((await keys.inspectKey(`ca-${type}`))?.problems).toEqual([]);
        const data = Buffer.from('to be signed');
        const signature = await keys.sign(key.id, { kind: 'ecdsa', hash: HASH[type] }, data);
        expect(verify(HASH[type], data, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, signature)).toBe(
          true,
        );
      } finally {
        await keys.close();
      }
    },
  );

  it('hsm check --key passes through the CLI', async () => {
    const result = await runServerCli(
      ['hsm', 'check', '--uri', token().uri(), '--key', 'ca-ec-p256', '--key', 'ca-ec-p384'],
      token().env,
    );
    expect(result.stdout).toMatch(/^ok\s+key\s+ca-ec-p256 \(ec-p256\)$/m);
    expect(result.stdout).toMatch(/^ok\s+key\s+ca-ec-p384 \(ec-p384\)$/m);
    expect(result.code).toBe(0);
  });
});

describe('tpm2-pkcs11', () => {
  it('a key type the TPM cannot make (rsa-4096) is ERR_HSM_KEY_TEMPLATE naming the CKR and the attribute, and the token stays ready', async () => {
    const keys = await Pkcs11KeyManager.open(parsePkcs11Uri(tpm.uri()));
    try {
      const refused = (await keys
        .generateKey('too-big', 'rsa-4096' satisfies KeyType)
        .catch((e) => e)) as HsmError;
      expect(refused.code).toBe('ERR_HSM_KEY_TEMPLATE');
      expect(refused.ckr).toBe('CKR_ATTRIBUTE_VALUE_INVALID');
      expect(refused.message).toContain('CKA_MODULUS_BITS=4096');
      expect(keys.state).toBe('ready');
      expect(await keys.getKey('too-big')).toBeUndefined();
      expect((await keys.generateKey('after-refusal', 'ec-p256')).type).toBe('ec-p256');
    } finally {
      await keys.close();
    }
  });

  it('runs a server with its CA keys on the TPM token, both in use', async () => {
    const server = await startTestServer({ key_manager: tpm.uri() });
    try {
      const listed = await runServerCli(
        ['hsm', 'keys', 'list', '--config', server.configFile, '--output', 'json'],
        tpm.env,
      );
      expect(listed.code).toBe(0);
      const inUse = (JSON.parse(listed.stdout) as Array<{ id: string; ok: boolean; usage: string }>).filter(
        (key) => key.usage === 'in use',
      );
      expect(inUse.map((key) => key.id.replace(/-\d+-[0-9a-f]+$/, '')).sort()).toEqual([
        'ironroot-jwt',
        'ironroot-x509',
      ]);
      expect(inUse.every((key) => key.ok)).toBe(true);
    } finally {
      await server.stop();
    }
  });
});
