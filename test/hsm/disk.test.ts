import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openKeyManager } from '../../src/hsm/index.js';

let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ironroot-diskmodes-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('disk key manager file modes', () => {
  it('creates a missing directory 0700 and key files 0600', async () => {
    const dir = join(root, 'fresh');
    const keys = await openKeyManager(`disk:${dir}`);
    await keys.generateKey('ca', 'ec-p256');
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(join(dir, 'ca.key.pem'))).mode & 0o777).toBe(0o600);
  });

  it.each([0o750, 0o705, 0o755, 0o777])('refuses a directory with mode %o', async (mode) => {
    const dir = join(root, `dir-${mode.toString(8)}`);
    await mkdir(dir);
    await chmod(dir, mode);
    await expect(openKeyManager(`disk:${dir}`)).rejects.toMatchObject({
      code: 'ERR_HSM_FILE_MODE',
      message: expect.stringContaining(`chmod 700 ${dir}`),
    });
  });

  it.each([0o640, 0o604, 0o644])('refuses to use a key file with mode %o', async (mode) => {
    const dir = join(root, `file-${mode.toString(8)}`);
    const keys = await openKeyManager(`disk:${dir}`);
    await keys.generateKey('ca', 'ec-p256');
    const file = join(dir, 'ca.key.pem');
    await chmod(file, mode);
    await expect(keys.sign('ca', { kind: 'ecdsa', hash: 'sha256' }, Buffer.from('x'))).rejects.toMatchObject({
      code: 'ERR_HSM_FILE_MODE',
      message: expect.stringContaining(`chmod 600 ${file}`),
    });
    await expect(keys.listKeys()).rejects.toMatchObject({ code: 'ERR_HSM_FILE_MODE' });
    await chmod(file, 0o600);
    expect((await keys.listKeys()).map((key) => key.id)).toEqual(['ca']);
  });

  it('refuses a relative directory and an unknown key store spec', async () => {
    await expect(openKeyManager('disk:keys')).rejects.toMatchObject({ code: 'ERR_HSM_URI' });
    await expect(openKeyManager('vault:secret/ca')).rejects.toMatchObject({ code: 'ERR_HSM_URI' });
  });

  it('a path that is a file, not a directory, is refused', async () => {
    const file = join(root, 'plain-file');
    await writeFile(file, '', { mode: 0o600 });
    await expect(openKeyManager(`disk:${file}`)).rejects.toMatchObject({ code: 'ERR_HSM_FILE_MODE' });
  });
});
