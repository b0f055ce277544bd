import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/server/admin/client.js';
import { cli, freePort, SERVER_BIN } from '../helpers/server.js';

function configFile(text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'ironroot-validate-')), 'server.yaml');
  writeFileSync(file, text);
  return file;
}

describe('validate and run refuse bad configuration', () => {
  it('validate accepts a good file and repeats development warnings', async () => {
    const file = configFile('trust_domain: example.org\nkey_manager: "memory:"\ndevelopment: true\n');
    const result = await cli(['validate', '--config', file]);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(
      `warning: DEVELOPMENT MODE: CA and JWT keys are held by memory:, not an HSM; never use this server for real workloads\n${file}: configuration is valid\n`,
    );
  });

  it('validate names every bad key with its value and what is allowed', async () => {
    const file = configFile('trust_domain: Example\nca_ttl: forever\nlisten: 1\n');
    const result = await cli(['validate', '--config', file]);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain(`Error (ERR_CONFIG_INVALID): invalid configuration in ${file}:`);
    expect(result.stderr).toContain(
      '  trust_domain: got "Example"; allowed: lowercase letters, digits, ".", "-" and "_" (e.g. example.org)',
    );
    expect(result.stderr).toContain(
      '  ca_ttl: got "forever"; allowed: a duration such as 90s, 30m, 24h or 7d',
    );
    expect(result.stderr).toContain('  listen: unknown key; allowed keys: trust_domain,');
  });

  it('validate refuses a memory key manager without development mode', async () => {
    const file = configFile('trust_domain: example.org\nkey_manager: "memory:"\n');
    const result = await cli(['validate', '--config', file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      'Error (ERR_CONFIG_UNSAFE): key_manager "memory:" keeps CA keys outside an HSM; use a PKCS#11 URI, or set development: true (or --development) on a development server\n',
    );
  });

  it('run refuses to start on unsafe flags, before creating anything', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-run-'));
    const result = await cli([
      'run',
      '--trust-domain',
      'example.org',
      '--data-dir',
      join(dir, 'data'),
      '--admin-socket',
      join(dir, 'admin.sock'),
      '--key-manager',
      'disk:/tmp/keys',
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('key_manager "disk:/tmp/keys" keeps CA keys outside an HSM');
    expect(existsSync(join(dir, 'data'))).toBe(false);
  });

  it('run starts from flags alone and stops on SIGTERM', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-run-'));
    const socket = join(dir, 'run', 'admin.sock');
    const port = await freePort();
    const child = spawn(process.execPath, [
      SERVER_BIN,
      'run',
      '--trust-domain',
      'flags.example',
      '--health-address',
      `127.0.0.1:${port}`,
      '--bind-address',
      '127.0.0.1:0',
      '--data-dir',
      join(dir, 'data'),
      '--admin-socket',
      socket,
      '--key-manager',
      'memory:',
      '--development',
    ]);
    let log = '';
    child.stdout.on('data', (c: Buffer) => {
      log += c.toString();
    });
    await new Promise<void>((resolve) => {
      const check = setInterval(() => {
        if (log.includes('ironroot-server started')) {
          clearInterval(check);
          resolve();
        }
      }, 25);
    });
    expect(log).toContain('"trust_domain":"flags.example"');
    expect(log).toContain('DEVELOPMENT MODE');
    expect((await cli(['healthcheck', '--admin-socket', socket])).code).toBe(0);
    // A client that stays connected must not hold the server up on SIGTERM.
    const client = new AdminClient(socket);
    await client.call('EntryService', 'CountEntries', {});
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    client.close();
    expect(log).toContain('ironroot-server stopped');
  });
});
