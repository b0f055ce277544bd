import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runServerCli } from '../helpers/cli.js';
import { assertBuilt } from '../helpers/dist.js';
import { freePort, startTestServer, type TestServer } from '../helpers/server.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';

let softhsm: SoftHsm;
let server: TestServer | undefined;
let dir: string;

beforeAll(async () => {
  assertBuilt();
  softhsm = await createSoftHsm('orphans');
  dir = mkdtempSync(join(tmpdir(), 'ironroot-orphans-'));
});

afterAll(async () => {
  await server?.stop();
  await softhsm?.cleanup();
});

const cli = (...args: string[]) => runServerCli(args, softhsm.env);

/** Every object on the token, one pkcs11-tool line each. */
async function tokenObjects(): Promise<string[]> {
  const { stdout } = await softhsm.tool('--list-objects');
  return stdout.split('\n').filter((line) => /^\S.*object/i.test(line));
}

async function occupiedPort(): Promise<{ port: number; blocker: Server }> {
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  const address = blocker.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return { port: address.port, blocker };
}

function writeConfig(name: string, extra: Record<string, unknown>): string {
  const base = join(dir, name);
  mkdirSync(base);
  const file = join(base, 'server.yaml');
  writeFileSync(
    file,
    stringify({
      trust_domain: 'example.org',
      data_dir: join(base, 'data'),
      admin_socket: join(base, 'run', 'admin.sock'),
      key_manager: softhsm.uri(),
      development: true,
      ...extra,
    }),
  );
  return file;
}

interface ListedKey {
  id: string;
  ok: boolean;
  usage: string;
}

describe('CA keys of failed starts and orphans on the token', () => {
  it('5 failed starts (port taken after the CA was initialised) leave zero objects on the token', async () => {
    const { port, blocker } = await occupiedPort();
    try {
      // health_address binds after the CA has generated and journaled its keys, as does bind_address.
      const healthTaken = writeConfig('health-taken', {
        bind_address: '127.0.0.1:0',
        health_address: `127.0.0.1:${port}`,
      });
      const bindTaken = writeConfig('bind-taken', {
        bind_address: `127.0.0.1:${port}`,
        health_address: `127.0.0.1:${await freePort()}`,
      });
      for (const config of [healthTaken, bindTaken, healthTaken, bindTaken, healthTaken]) {
        const result = await cli('run', '--config', config);
        expect(result.code).not.toBe(0);
        expect(result.stderr).toMatch(/(health|bind)_address 127\.0\.0\.1:\d+ is in use by another process/);
        expect(result.stdout + result.stderr).not.toContain('reacting to a CA change failed');
        expect(await tokenObjects()).toEqual([]);
      }
    } finally {
      blocker.close();
    }
  });

  it('keys list --config marks the server keys in use and a hand-made key with the same prefix orphan', async () => {
    server = await startTestServer({ key_manager: softhsm.uri() });
    const before = await cli('hsm', 'keys', 'list', '--config', server.configFile, '--output', 'json');
    expect(before.code).toBe(0);
    const serverKeys = (JSON.parse(before.stdout) as ListedKey[]).map((key) => key.id);
    expect(serverKeys).toHaveLength(2);
    expect(serverKeys.every((id) => /^ironroot-(x509|jwt)-/.test(id))).toBe(true);

    expect(
      (await cli('hsm', 'keys', 'generate', 'ironroot-x509-1-deadbeef', '--uri', softhsm.uri())).code,
    ).toBe(0);
    const json = await cli('hsm', 'keys', 'list', '--config', server.configFile, '--output', 'json');
    expect(json.code).toBe(0);
    const listed = JSON.parse(json.stdout) as ListedKey[];
    expect(Object.fromEntries(listed.map((key) => [key.id, key.usage]))).toEqual({
      ...Object.fromEntries(serverKeys.map((id) => [id, 'in use'])),
      'ironroot-x509-1-deadbeef': 'orphan',
    });
    const text = await cli('hsm', 'keys', 'list', '--config', server.configFile);
    expect(text.stdout).toMatch(/^ironroot-x509-1-deadbeef\s+ec-p256\s+orphan\s+ok$/m);
    for (const id of serverKeys)
      expect(text.stdout).toMatch(new RegExp(`^${id}\\s+ec-p256\\s+in use\\s+ok$`, 'm'));
  });

  it('keys list says unknown, not orphan, when there is no datastore to ask or it cannot be read', async () => {
    const withUri = await cli('hsm', 'keys', 'list', '--uri', softhsm.uri(), '--output', 'json');
    expect(withUri.code).toBe(0);
    expect(new Set((JSON.parse(withUri.stdout) as ListedKey[]).map((key) => key.usage))).toEqual(
      new Set(['unknown']),
    );
    const broken = writeConfig('broken-datastore', {});
    mkdirSync(join(dir, 'broken-datastore', 'data'));
    writeFileSync(join(dir, 'broken-datastore', 'data', 'datastore.sqlite3'), 'not a database');
    const unreadable = await cli('hsm', 'keys', 'list', '--config', broken, '--output', 'json');
    expect(unreadable.code).toBe(0);
    expect(new Set((JSON.parse(unreadable.stdout) as ListedKey[]).map((key) => key.usage))).toEqual(
      new Set(['unknown']),
    );
    expect(unreadable.stderr).toContain('cannot read SQLite datastore');
  });

  it('hsm check --key passes with an unrelated broken key on the shared token', async () => {
    // Someone else's key: CKA_ID differs from the label, so ironroot would refuse to sign with it.
    await softhsm.tool('--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'other-app', '--id', '01');
    const whole = await cli('hsm', 'check', '--uri', softhsm.uri());
    expect(whole.code).not.toBe(0);
    expect(whole.stdout).toMatch(/^FAIL\s+key\s+other-app: /m);

    const listed = await cli('hsm', 'keys', 'list', '--uri', softhsm.uri(), '--output', 'json');
    const [serverKey] = (JSON.parse(listed.stdout) as ListedKey[])
      .map((key) => key.id)
      .filter((id) => id.startsWith('ironroot-jwt-'));
    expect(serverKey).toBeDefined();
    const result = await cli('hsm', 'check', '--uri', softhsm.uri(), '--key', serverKey ?? '');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(new RegExp(`^ok\\s+key\\s+${serverKey} \\(ec-p256\\)$`, 'm'));
    expect(result.stdout).not.toContain('other-app');
    expect(result.stdout).toContain('hsm check passed');
  });
});
