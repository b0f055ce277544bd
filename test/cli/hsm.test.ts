import { createPublicKey, verify } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openKeyManager } from '../../src/hsm/index.js';
import { runServerCli } from '../helpers/cli.js';
import { assertBuilt } from '../helpers/dist.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';

let softhsm: SoftHsm;

beforeAll(async () => {
  assertBuilt();
  softhsm = await createSoftHsm('cli');
});

afterAll(async () => {
  await softhsm?.cleanup();
});

const cli = (...args: string[]) => runServerCli(args, softhsm.env);

describe('ironroot-server hsm', () => {
  it('keys generate makes a key on the token and prints its public key as JSON', async () => {
    const result = await cli(
      'hsm',
      'keys',
      'generate',
      'ca-1',
      '--type',
      'ec-p384',
      '--uri',
      softhsm.uri(),
      '--output',
      'json',
    );
    expect(result.code).toBe(0);
    const printed = JSON.parse(result.stdout) as { id: string; type: string; publicKeyPem: string };
    expect(printed).toMatchObject({ id: 'ca-1', type: 'ec-p384' });
    // The key really is on the token: this process signs with it, and the printed public key verifies.
    const keys = await openKeyManager(softhsm.uri());
    try {
      const signature = await keys.sign('ca-1', { kind: 'ecdsa', hash: 'sha384' }, Buffer.from('cli'));
      const publicKey = createPublicKey(printed.publicKeyPem);
      expect(
        verify('sha384', Buffer.from('cli'), { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature),
      ).toBe(true);
    } finally {
      await keys.close();
    }
  });

  it('keys list shows the keys, as text and as JSON', async () => {
    await cli('hsm', 'keys', 'generate', 'jwt-1', '--uri', softhsm.uri());
    const json = await cli('hsm', 'keys', 'list', '--uri', softhsm.uri(), '--output', 'json');
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual([
      { id: 'ca-1', type: 'ec-p384', ok: true, problems: [], usage: 'unknown' },
      { id: 'jwt-1', type: 'ec-p256', ok: true, problems: [], usage: 'unknown' },
    ]);
    const text = await cli('hsm', 'keys', 'list', '--uri', softhsm.uri());
    expect(text.stdout).toMatch(/^jwt-1\s+ec-p256\s+unknown\s+ok$/m);
  });

  it('hsm check passes, naming module, token, login and each key', async () => {
    const result = await cli('hsm', 'check', '--uri', softhsm.uri(), '--key', 'ca-1');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^ok\s+module\s+\/usr\/lib\/softhsm\/libsofthsm2\.so/m);
    expect(result.stdout).toMatch(/^ok\s+token\s+token "cli"/m);
    expect(result.stdout).toMatch(/^ok\s+login\s+user PIN accepted/m);
    expect(result.stdout).toMatch(/^ok\s+key\s+ca-1 \(ec-p384\)/m);
    expect(result.stdout).toContain('hsm check passed');
  });

  it('hsm check fails when a required key is missing', async () => {
    const result = await cli('hsm', 'check', '--uri', softhsm.uri(';object=root-ca'), '--output', 'json');
    expect(result.code).not.toBe(0);
    const report = JSON.parse(result.stdout) as {
      ok: boolean;
      checks: Array<{ check: string; ok: boolean; detail: string }>;
    };
    expect(report.ok).toBe(false);
    expect(report.checks).toContainEqual(
      expect.objectContaining({ check: 'key', ok: false, detail: expect.stringContaining('root-ca') }),
    );
  });

  it('hsm check with a wrong PIN exits non-zero, names the problem and never prints the PIN', async () => {
    const wrong = join(softhsm.dir, 'wrong.pin');
    await writeFile(wrong, '99998888\n', { mode: 0o600 });
    const result = await cli('hsm', 'check', '--uri', softhsm.uri().replace(softhsm.pinFile, wrong));
    expect(result.code).not.toBe(0);
    expect(result.stdout).toMatch(/^FAIL\s+login\s+ERR_HSM_PIN_INCORRECT: .*CKR_PIN_INCORRECT/m);
    expect(result.stdout).toContain('hsm check FAILED');
    for (const output of [result.stdout, result.stderr]) {
      expect(output).not.toContain('99998888');
      expect(output).not.toContain(softhsm.pin);
    }
  });

  it('keys commands report a start-up fault by its code on stderr with a non-zero exit', async () => {
    const result = await cli(
      'hsm',
      'keys',
      'list',
      '--uri',
      softhsm.uri().replace('token=cli', 'token=absent'),
    );
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('ERR_HSM_TOKEN_NOT_FOUND');
    expect(result.stderr).toContain('token=absent');
  });

  it('keys destroy wants --yes, then removes the key', async () => {
    const refused = await cli('hsm', 'keys', 'destroy', 'jwt-1', '--uri', softhsm.uri());
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('--yes');
    const done = await cli('hsm', 'keys', 'destroy', 'jwt-1', '--yes', '--uri', softhsm.uri());
    expect(done.code).toBe(0);
    const list = await cli('hsm', 'keys', 'list', '--uri', softhsm.uri(), '--output', 'json');
    expect((JSON.parse(list.stdout) as Array<{ id: string }>).map((key) => key.id)).toEqual(['ca-1']);
    const again = await cli('hsm', 'keys', 'destroy', 'jwt-1', '--yes', '--uri', softhsm.uri());
    expect(again.stderr).toContain('ERR_HSM_KEY_NOT_FOUND');
  });

  it.each([
    ['hsm'],
    ['hsm', 'check'],
    ['hsm', 'keys'],
    ['hsm', 'keys', 'list'],
    ['hsm', 'keys', 'generate'],
    ['hsm', 'keys', 'destroy'],
  ])('%s --help describes the command', async (...words) => {
    const result = await cli(...words, '--help');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`Usage: ironroot-server ${words.join(' ')}`);
  });

  it('refuses a missing --uri and a pin-value URI with ERR_HSM_URI', async () => {
    const missing = await cli('hsm', 'keys', 'list');
    expect(missing.stderr).toContain('ERR_HSM_URI');
    const pinValue = await cli('hsm', 'keys', 'list', '--uri', `${softhsm.uri()}?pin-value=${softhsm.pin}`);
    expect(pinValue.code).not.toBe(0);
    expect(pinValue.stderr).toContain('pin-value is refused');
    expect(pinValue.stderr).not.toContain(softhsm.pin);
  });
});
