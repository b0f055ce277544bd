import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { cli, freePort, SERVER_BIN, startTestServer, type TestServer } from '../helpers/server.js';

/** A copy of `server`'s config with `changes`, in a file of its own. */
function variant(server: TestServer, changes: Record<string, unknown>): string {
  const config = { ...(parse(readFileSync(server.configFile, 'utf8')) as object), ...changes };
  const file = join(mkdtempSync(join(tmpdir(), 'ironroot-variant-')), 'server.yaml');
  writeFileSync(file, stringify(config));
  return file;
}

/** `run --config file` to its end; resolves with exit code and standard error. */
function runToEnd(file: string): Promise<{ code: number | null; stderr: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [SERVER_BIN, 'run', '--config', file], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stderr, child })));
}

function listenOn(port: number): Promise<Server> {
  return new Promise((resolve) => {
    const holder = createServer();
    holder.listen(port, '127.0.0.1', () => resolve(holder));
  });
}

async function manageable(server: TestServer): Promise<boolean> {
  const result = await cli(['entry', 'count', '--admin-socket', server.socket]);
  return result.code === 0 && result.stdout === '0 registration entries\n';
}

describe('one server per data directory and admin socket', () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer();
  });

  afterAll(async () => {
    await server?.stop();
  });

  it('refuses a second run with the same config by data_dir; the first stays manageable and keeps its socket', async () => {
    const second = await runToEnd(server.configFile);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(
      `Error (ERR_DATA_DIR_LOCKED): data_dir ${server.dataDir} is in use by another ironroot-server (pid `,
    );
    expect(lstatSync(server.socket).isSocket()).toBe(true);
    expect(await manageable(server)).toBe(true);
  });

  it('refuses a second run on another data_dir but the same admin_socket by admin_socket, leaving the socket alone', async () => {
    const file = variant(server, {
      data_dir: join(server.dir, 'other-data'),
      health_address: `127.0.0.1:${await freePort()}`,
    });
    const second = await runToEnd(file);
    expect(second.code).toBe(1);
    expect(second.stderr).toBe(
      `Error (ERR_SOCKET_IN_USE): admin_socket ${server.socket} is served by another running process; stop it, or choose another admin_socket\n`,
    );
    expect(lstatSync(server.socket).isSocket()).toBe(true);
    expect(await manageable(server)).toBe(true);
    expect(existsSync(join(server.dir, 'other-data'))).toBe(false);
  });

  it('validate refuses a config whose data_dir is locked or whose admin_socket is served, with the code in JSON', async () => {
    const locked = await cli(['validate', '--config', server.configFile, '--output', 'json']);
    expect(locked.code).toBe(1);
    expect(JSON.parse(locked.stdout)).toMatchObject({ valid: false, code: 'ERR_DATA_DIR_LOCKED' });
    const served = await cli([
      'validate',
      '--config',
      variant(server, { data_dir: join(server.dir, 'validate-data') }),
      '--output',
      'json',
    ]);
    expect(served.code).toBe(1);
    expect(JSON.parse(served.stdout)).toEqual({
      valid: false,
      code: 'ERR_SOCKET_IN_USE',
      error: `admin_socket ${server.socket} is served by another running process; stop it, or choose another admin_socket`,
    });
    expect(await manageable(server)).toBe(true);
  });

  it('names bind_address or health_address when its port is taken, and leaves the running server alone', async () => {
    const port = await freePort();
    const holder = await listenOn(port);
    try {
      for (const key of ['bind_address', 'health_address']) {
        const file = variant(server, {
          data_dir: join(server.dir, `data-${key}`),
          admin_socket: join(server.dir, `run-${key}`, 'admin.sock'),
          health_address: `127.0.0.1:${await freePort()}`,
          [key]: `127.0.0.1:${port}`,
        });
        const second = await runToEnd(file);
        expect(second.code, key).toBe(1);
        expect(second.stderr, key).toContain(
          `Error (ERR_ADDRESS_IN_USE): ${key} 127.0.0.1:${port} is in use by another process; stop it, or choose another port for ${key}\n`,
        );
        // The refused server removed the admin socket it had bound, and only that one.
        expect(existsSync(join(server.dir, `run-${key}`, 'admin.sock')), key).toBe(false);
      }
    } finally {
      holder.close();
    }
    expect(await manageable(server)).toBe(true);
  });

  it('run and validate name data_dir when it cannot be created', async () => {
    const notDir = join(server.dir, 'a-file');
    writeFileSync(notDir, '');
    const file = variant(server, {
      data_dir: join(notDir, 'data'),
      admin_socket: join(server.dir, 'run-unusable', 'admin.sock'),
    });
    const message = `data_dir ${join(notDir, 'data')} cannot be used: ${notDir} is not a directory; create it writable for this user, or choose another data_dir`;
    const run = await runToEnd(file);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe(`Error (ERR_DIR_UNUSABLE): ${message}\n`);
    const validate = await cli(['validate', '--config', file, '--output', 'json']);
    expect(validate.code).toBe(1);
    expect(JSON.parse(validate.stdout)).toEqual({ valid: false, code: 'ERR_DIR_UNUSABLE', error: message });
  });

  it('starts again after kill -9 over the stale admin socket and retakes the data_dir lock', async () => {
    await server.kill9();
    // What the killed server left: its socket file, with nobody listening, and its lock file.
    expect(lstatSync(server.socket).isSocket()).toBe(true);
    await server.restart();
    expect(await manageable(server)).toBe(true);
    // The lock names a live process (the restarted server), and refuses the next one by it.
    const holder = Number(readFileSync(join(server.dataDir, 'ironroot-server.lock'), 'utf8'));
    expect(() => process.kill(holder, 0)).not.toThrow();
    const again = await runToEnd(server.configFile);
    expect(again.stderr).toContain(`is in use by another ironroot-server (pid ${holder})`);
  });
});
